"""Replies an evaluation generates, cached in generations.jsonl so a rerun reuses them.

A reply is stored under (settings fingerprint, role, prompt set, prompt id); the fingerprint covers
the model's identity on disk, so replies cached for a folder are not reused after another training
run overwrites it.
"""

from __future__ import annotations

from pathlib import Path

from negalign.base.fingerprint import fingerprint
from negalign.base.io import JsonlAppender, read_jsonl_tolerant
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
        if todo:
            log(f"evaluate: {role}: generating {len(todo)} replies for {set_name} "
                f"({len(items) - len(todo)} reused)")
        with JsonlAppender(self.path) as out:
            for lo in range(0, len(todo), chunk):
                part = todo[lo:lo + chunk]
                replies = generator.generate([normalize_prompt(it["prompt"]) for it in part], config)
                for it, reply in zip(part, replies):
                    row = {"fp": fp, "role": role, "set": set_name, "id": it["id"], "response": reply[0]}
                    out.write(row)
                    self.rows[(fp, role, set_name, it["id"])] = reply[0]
        return [self.get(fp, role, set_name, it["id"]) for it in items]


def model_identity(spec: str) -> list:
    """The spec plus name, size and mtime of its weight files, so replies cached for a model
    are not reused after its folder is overwritten by another training run."""
    from negalign.modeling.loading import resolve_model_path

    path = Path(resolve_model_path(spec)).expanduser()
    files = [path] if path.is_file() else sorted(
        f for f in path.glob("*") if f.suffix in (".safetensors", ".bin", ".gguf", ".pt")) if path.is_dir() else []
    return [spec] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def generation_fingerprint(spec: str, role: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    """The cache key of one model's replies under one set of generation settings."""
    return fingerprint({"v": FORMAT_VERSION, "model": model_identity(spec), "role": role,
                        "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed})
