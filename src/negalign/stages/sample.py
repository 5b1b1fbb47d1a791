"""Stage `sample`: K anchors per prompt from the reference policy, written incrementally.

anchors.jsonl gets one line per prompt, fsynced as it goes; a rerun skips prompts already done,
so an interrupted run resumes with nothing lost or duplicated. anchors.meta.json pins the
settings that made the file: changing them requires a new run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from negalign.base import distributed
from negalign.config import Config
from negalign.data.records import Example
from negalign.base.fingerprint import fingerprint
from negalign.base.errors import UserError
from negalign.generation.base import GenerationConfig
from negalign.base.io import JsonlAppender, read_jsonl_tolerant, write_json

ANCHORS_FILE = "anchors.jsonl"
META_FILE = "anchors.meta.json"


def sample_settings(cfg: Config) -> dict:
    s = cfg.sample
    return {"model": cfg.model.name, "k": s.k, "system_prompt": s.system_prompt, "temperature": s.temperature,
            "top_p": s.top_p, "max_new_tokens": s.max_new_tokens, "seed": s.seed, "backend": s.backend,
            "base_url": s.base_url}


def guided(ex: Example, system_prompt: str | None) -> list[dict]:
    """The conversation used while sampling: the guidance system prompt replaces any system turn."""
    if not system_prompt:
        return ex.prompt
    return [{"role": "system", "content": system_prompt}] + [m for m in ex.prompt if m["role"] != "system"]


def read_anchors(run_dir: str | Path) -> dict[str, list[str]]:
    path = Path(run_dir) / ANCHORS_FILE
    return {row["id"]: row["anchors"] for row in read_jsonl_tolerant(path)}


def check_meta(run_dir: Path, settings: dict) -> None:
    meta_path = run_dir / META_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("fingerprint") != fingerprint(settings):
            changed = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            raise UserError(f"anchors here were sampled with other settings ({', '.join(changed)}); "
                            "use a new run directory or delete anchors.jsonl", path=str(meta_path))
    else:
        write_json(meta_path, {"fingerprint": fingerprint(settings), "settings": settings})


def run_sample(cfg: Config, examples: list[Example], generator, *, log=print) -> dict[str, list[str]]:
    """Sample anchors for every example not yet in anchors.jsonl; return all anchors by example id."""
    log = distributed.main_only(log)  # under a multi-process launch, rank 0 alone prints progress
    run_dir = Path(cfg.run_dir)
    if cfg.sample.k == 0:
        return {ex.id: [] for ex in examples}
    check_meta(run_dir, sample_settings(cfg))
    done = _read_anchors_and_shards(run_dir)
    todo = [ex for ex in examples if ex.id not in done]
    if not todo:
        log(f"sample: all {len(examples)} prompts already have anchors")
        return _merge_shards(run_dir, examples)
    log(f"sample: {len(todo)} prompts to do ({len(done)} already done), K={cfg.sample.k}")
    gen_cfg = GenerationConfig(n=cfg.sample.k, temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                               max_new_tokens=cfg.sample.max_new_tokens)
    step = max(1, cfg.sample.prompts_per_write)
    # Chunks have fixed boundaries over the whole list and a seed of their own, so a resumed run
    # redraws an interrupted chunk exactly as the first run would have, and keeps only what is missing.
    chunks = [examples[i:i + step] for i in range(0, len(examples), step)]
    t0, n_new, tokens = time.perf_counter(), 0, 0
    # Under a multi-process launch each process takes every world-th chunk into a shard of its own.
    with JsonlAppender(distributed.output_path(run_dir / ANCHORS_FILE)) as out:
        for c, chunk in enumerate(chunks):
            missing = [ex for ex in chunk if ex.id not in done]
            if not missing or not distributed.owns(c):
                continue
            gen_cfg.seed = cfg.sample.seed * 1_000_003 + c
            replies = generator.generate([guided(ex, cfg.sample.system_prompt) for ex in chunk], gen_cfg)
            for ex, anchors in zip(chunk, replies):
                if ex.id not in done:
                    out.write({"id": ex.id, "anchors": anchors})
                    done[ex.id] = anchors
            n_new += len(missing)
            stats = getattr(generator, "last_stats", None)  # backends that count tokens report tokens/s
            tokens += getattr(stats, "tokens", 0)
            elapsed = time.perf_counter() - t0
            speed = f"{tokens / elapsed:.1f} tokens/s, " if tokens else ""
            log(f"sample: {sum(ex.id in done for ex in examples)}/{len(examples)} prompts  "
                f"({speed}{n_new / elapsed:.2f} prompts/s)")
    done = _merge_shards(run_dir, examples)
    empty = sum(1 for ex in examples for a in done[ex.id] if not a.strip())
    if empty:
        log(f"sample: {empty} empty anchors (kept: an empty reply is still a sample of the policy)")
    return done


# ---------------------------------------------------------------- multi-process hooks (negalign.base.distributed)

def _read_anchors_and_shards(run_dir: Path) -> dict[str, list[str]]:
    """Anchors already drawn, in anchors.jsonl or in any rank's shard left by an interrupted run."""
    return {k: row["anchors"] for k, row in distributed.read_with_shards(run_dir / ANCHORS_FILE, "id").items()}


def _merge_shards(run_dir: Path, examples: list[Example]) -> dict[str, list[str]]:
    """Wait for every process, let rank 0 fold the shards into anchors.jsonl, and read it back."""
    distributed.barrier()
    if distributed.current().main and distributed.shard_files(run_dir / ANCHORS_FILE):
        distributed.merge_jsonl_shards(run_dir / ANCHORS_FILE, "id", [ex.id for ex in examples])
    distributed.barrier()
    return read_anchors(run_dir)
