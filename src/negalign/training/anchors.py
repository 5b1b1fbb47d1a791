"""Stage `sample`: K anchors per prompt from the reference policy (or the human positives), written incrementally.

anchors.jsonl gets one line per prompt, fsynced as it goes; a rerun skips prompts already done,
so an interrupted run resumes with nothing lost or duplicated. anchors.meta.json pins the
settings that made the file: changing them requires a new run directory.
"""

from __future__ import annotations

from pathlib import Path

from negalign.base import distributed
from negalign.base.io import JsonlAppender, read_jsonl_tolerant
from negalign.base.progress import Progress
from negalign.base.rundir import Pin, RunDir
from negalign.config import Config
from negalign.data.records import Example
from negalign.generation.base import GenerationConfig

ANCHORS_PIN = Pin("anchors here were sampled", "use a new run directory or delete anchors.jsonl")


def sample_settings(cfg: Config) -> dict:
    s = cfg.sample
    out = {"model": cfg.model.name, "k": s.k, "system_prompt": s.system_prompt, "temperature": s.temperature,
           "top_p": s.top_p, "max_new_tokens": s.max_new_tokens, "seed": s.seed, "backend": s.backend,
           "base_url": s.base_url}
    # Pinned only when set, so runs sampled before these settings existed still resume.
    for key, default in (("sampler", None), ("precision", "fp32"), ("best_of", 0), ("select_by", "refusal")):
        value = getattr(s, "model" if key == "sampler" else key)
        if value != default and not (key == "select_by" and not s.best_of):
            out[key] = value
    return out


def sampler_model(cfg: Config) -> str:
    """The model that draws the anchors: the teacher when sample.model is set, else the policy's start."""
    return cfg.sample.model or cfg.model.name


def guided(ex: Example, system_prompt: str | None) -> list[dict]:
    """The conversation used while sampling: the guidance system prompt replaces any system turn."""
    if not system_prompt:
        return ex.prompt
    return [{"role": "system", "content": system_prompt}] + [m for m in ex.prompt if m["role"] != "system"]


def read_anchors(run_dir: str | Path) -> dict[str, list[str]]:
    return {row["id"]: row["anchors"] for row in read_jsonl_tolerant(RunDir(run_dir).anchors)}


def positive_anchors(cfg: Config, examples: list[Example]) -> dict[str, list[str]]:
    """Up to K human positives per prompt, in their data order, as the anchors (data.anchors: positives)."""
    return {ex.id: ex.positives[:cfg.sample.k] for ex in examples if ex.positives}


def make_sampler(cfg: Config, model=None, tokenizer=None):
    """The anchor sampler the config asks for; reuses a loaded model when given."""
    from negalign.generation.factory import make_generator

    s = cfg.sample
    spec = {"backend": s.backend, "model": sampler_model(cfg)}
    if s.backend == "openai":
        spec.update(base_url=s.base_url, api_key_env=s.api_key_env)
    elif s.backend in ("transformers", "auto", "llamacpp"):  # the other backends refuse keys they do not use
        spec["batch_size"] = s.batch_size
    return make_generator(spec, model=model, tokenizer=tokenizer)


def run_sample(cfg: Config, examples: list[Example], generator, *, select=None, log=print) -> dict[str, list[str]]:
    """Sample anchors for every example not yet in anchors.jsonl; return all anchors by example id.

    With sample.best_of = N, N replies are drawn per prompt and `select(conversation, replies)` gives
    the indices of the k to keep (the safest by the configured scorer); every draw is kept in the
    row's "drawn" list, so the choice can be audited."""
    log = distributed.main_only(log)  # under a multi-process launch, rank 0 alone prints progress
    run = RunDir(cfg.run_dir)
    if cfg.sample.k == 0:
        return {ex.id: [] for ex in examples}
    run.pin(run.anchors_meta, sample_settings(cfg), ANCHORS_PIN)
    done = _read_anchors_and_shards(run)
    todo = [ex for ex in examples if ex.id not in done]
    if not todo:
        log(f"sample: all {len(examples)} prompts already have anchors")
        return _merge_shards(run, examples)
    log(f"sample: {len(todo)} prompts to do ({len(done)} already done), K={cfg.sample.k}")
    draws = max(cfg.sample.k, cfg.sample.best_of)
    if draws > cfg.sample.k and select is None:
        raise ValueError("sample.best_of needs a select function")
    gen_cfg = GenerationConfig(n=draws, temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                               max_new_tokens=cfg.sample.max_new_tokens)
    step = max(1, cfg.sample.prompts_per_write)
    # Chunks have fixed boundaries over the whole list and a seed of their own, so a resumed run
    # redraws an interrupted chunk exactly as the first run would have, and keeps only what is missing.
    chunks = [examples[i:i + step] for i in range(0, len(examples), step)]
    # Under a multi-process launch each process takes every world-th chunk into a shard of its own.
    with JsonlAppender(distributed.output_path(run.anchors)) as out, \
            _sample_progress(chunks, done, log) as progress:
        for c, chunk in enumerate(chunks):
            missing = [ex for ex in chunk if ex.id not in done]
            if not missing or not distributed.owns(c):
                continue
            gen_cfg.seed = cfg.sample.seed * 1_000_003 + c
            replies = generator.generate([guided(ex, cfg.sample.system_prompt) for ex in chunk], gen_cfg)
            for ex, drawn in zip(chunk, replies):
                if ex.id not in done:
                    row = {"id": ex.id, "anchors": drawn}
                    if draws > cfg.sample.k:
                        keep = select(guided(ex, cfg.sample.system_prompt), drawn)
                        row = {"id": ex.id, "anchors": [drawn[i] for i in keep], "drawn": drawn}
                    out.write(row)
                    done[ex.id] = row["anchors"]
            stats = getattr(generator, "last_stats", None)  # backends that count tokens report tokens/s
            progress.update(len(missing), tokens=getattr(stats, "tokens", 0))
    done = _merge_shards(run, examples)
    empty = sum(1 for ex in examples for a in done[ex.id] if not a.strip())
    if empty:
        log(f"sample: {empty} empty anchors (kept: an empty reply is still a sample of the policy)")
    return done


# ---------------------------------------------------------------- multi-process hooks (negalign.base.distributed)

def _sample_progress(chunks: list[list[Example]], done: dict, log) -> Progress:
    """Prompts done out of all of them; under a multi-process launch, out of this process's share
    (rank 0 shows it; the shares differ by at most a chunk, so its ETA is the stage's)."""
    if distributed.current().world > 1:
        mine = sum(ex.id not in done for c, chunk in enumerate(chunks) if distributed.owns(c) for ex in chunk)
        return Progress("sample", mine, unit="prompts", log=log)
    already = sum(ex.id in done for chunk in chunks for ex in chunk)
    return Progress("sample", sum(map(len, chunks)), done=already, unit="prompts", log=log)


def _read_anchors_and_shards(run: RunDir) -> dict[str, list[str]]:
    """Anchors already drawn, in anchors.jsonl or in any rank's shard left by an interrupted run."""
    return {k: row["anchors"] for k, row in distributed.read_with_shards(run.anchors, "id").items()}


def _merge_shards(run: RunDir, examples: list[Example]) -> dict[str, list[str]]:
    """Wait for every process, let rank 0 fold the shards into anchors.jsonl, and read it back."""
    distributed.barrier()
    if distributed.current().main and distributed.shard_files(run.anchors):
        distributed.merge_jsonl_shards(run.anchors, "id", [ex.id for ex in examples])
    distributed.barrier()
    return read_anchors(run.root)
