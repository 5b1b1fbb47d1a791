"""Replies an evaluation generates, cached in generations.jsonl so a rerun reuses them (and the
judge's scores of them, in judge_scores.jsonl).

A reply is stored under (settings fingerprint, role, prompt set, prompt id); the fingerprint covers
the model's identity on disk, so replies cached for a folder are not reused after another training
run overwrites it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from negalign.base.fingerprint import fingerprint
from negalign.base.io import JsonlAppender, read_jsonl_tolerant
from negalign.base.progress import Progress
from negalign.data.records import normalize_prompt

GENERATIONS_FILE = "generations.jsonl"
FORMAT_VERSION = 1  # of eval.json and of these fingerprints


class GenerationStore:
    """generations.jsonl: one row per (role, set, prompt id) and settings fingerprint."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[str, str, str, str], str] = {}
        for row in read_jsonl_tolerant(path):
            self.rows[(row["fp"], row["role"], row["set"], row["id"])] = row["response"]

    def get(self, fp: str, role: str, set_name: str, pid: str) -> str | None:
        return self.rows.get((fp, role, set_name, pid))

    def generate(self, generator, role: str, fp: str, set_name: str, items: list[dict], config,
                 *, chunk: int | None = None, log=print) -> list[str]:
        """Replies for `items`, reusing stored ones; new ones are appended chunk by chunk
        (default: one generator batch per chunk, so a crash loses at most one batch)."""
        chunk = chunk or getattr(generator, "batch_size", 16)
        todo = [it for it in items if self.get(fp, role, set_name, it["id"]) is None]
        # Similar lengths share a batch: one 2,500-token IFBench prompt would otherwise pad 31
        # short ones to its length (seen: 40 benign replies, 32 rows padded to 2,591 tokens, 20+ min on 2 cores).
        todo.sort(key=lambda it: len(str(it["prompt"])))
        if todo:
            log(f"evaluate: {role}: generating {len(todo)} replies for {set_name} "
                f"({len(items) - len(todo)} reused)")
        progress = Progress(f"evaluate: {role}: {set_name}", len(items) if todo else 0,
                            done=len(items) - len(todo), unit="replies", log=log)
        with JsonlAppender(self.path) as out, progress:
            for lo in range(0, len(todo), chunk):
                part = todo[lo:lo + chunk]
                replies = generator.generate([normalize_prompt(it["prompt"]) for it in part], config)
                for it, reply in zip(part, replies):
                    row = {"fp": fp, "role": role, "set": set_name, "id": it["id"], "response": reply[0]}
                    out.write(row)
                    self.rows[(fp, role, set_name, it["id"])] = reply[0]
                stats = getattr(generator, "last_stats", None)  # backends that count new tokens give tokens/s
                progress.update(len(part), tokens=getattr(stats, "tokens", 0))
        return [self.get(fp, role, set_name, it["id"]) for it in items]


def model_identity(spec: str) -> list:
    """The spec plus name, size and mtime of its weight files, so replies cached for a model
    are not reused after its folder is overwritten by another training run."""
    from negalign.modeling.loading import resolve_model_path

    path = Path(resolve_model_path(spec)).expanduser()
    files = [path] if path.is_file() else sorted(
        f for f in path.glob("*") if f.suffix in (".safetensors", ".bin", ".gguf", ".pt")) if path.is_dir() else []
    return [spec] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def generation_fingerprint(spec: str, role: str, max_new_tokens: int, temperature: float, seed: int,
                           precision: str = "fp32") -> str:
    """The cache key of one model's replies under one set of generation settings (fp32 replies keep
    the key they had before precision was a setting)."""
    key = {"v": FORMAT_VERSION, "model": model_identity(spec), "role": role,
           "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    if precision != "fp32":
        key["precision"] = precision
    return fingerprint(key)


JUDGE_FILE = "judge_scores.jsonl"


class ScoreStore:
    """judge_scores.jsonl: judge scores appended chunk by chunk as they are computed, so a killed
    evaluation resumes without judging anything twice. A row's key is a hash of the judge's
    identity, the question kind, the prompt and the reply(ies): a different judge or reply misses."""

    def __init__(self, path: Path):
        self.path = path
        self.scores: dict[str, float] = {row["key"]: row["score"] for row in read_jsonl_tolerant(path)}

    @staticmethod
    def key(judge_id: str, kind: str, prompt, *replies: str) -> str:
        blob = json.dumps([judge_id, kind, prompt, *replies], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def scored(self, keys: list[str], compute, *, chunk: int = 16, label: str = "", log=print) -> list[float]:
        """Scores for `keys`; compute(indices) -> scores is called on missing ones, a chunk at a time."""
        todo = [i for i, k in enumerate(keys) if k not in self.scores]
        if todo:
            log(f"evaluate: judge: scoring {len(todo)} {label} ({len(keys) - len(todo)} reused)")
        progress = Progress(f"evaluate: judge: {label}", len(keys) if todo else 0,
                            done=len(keys) - len(todo), unit="items", log=log)
        with JsonlAppender(self.path) as out, progress:
            for lo in range(0, len(todo), chunk):
                idx = todo[lo:lo + chunk]
                for i, s in zip(idx, compute(idx)):
                    out.write({"key": keys[i], "score": s})
                    self.scores[keys[i]] = s
                progress.update(len(idx))
        return [self.scores[k] for k in keys]
