"""Which generation settings to keep on CPU: fp32 vs a bf16 weight copy, dynamic vs static KV cache.

For each setting: tokens/s of batched greedy decoding (runs interleaved, best of `--repeats`,
since the machine is shared), and agreement with the fp32 dynamic-cache reference: the share
of prompts whose greedy reply is identical, and the mean per-token KL(fp32 || setting) of the
next-token distributions along the fp32 replies (teacher forcing, so the comparison does not
drift once a reply diverges).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sampling/bench_settings.py
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from negalign.data.chat import encode_prompt
from negalign.modeling.loading import load_model

from bench_sampling import strongreject as harmful_prompts


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


def greedy(model, ids, mask, max_new_tokens, eos, cache) -> tuple[torch.Tensor, float]:
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
                             use_cache=True, **kw)
    return out[:, ids.shape[1]:], time.perf_counter() - start


def mean_kl(ref_model, model, ids, mask, new) -> float:
    """Mean KL(ref || model) of next-token distributions over the reference continuation."""
    full = torch.cat([ids, new], 1)
    att = torch.cat([mask, torch.ones_like(new)], 1)
    with torch.inference_mode():
        p = torch.log_softmax(ref_model(full, attention_mask=att).logits[:, ids.shape[1] - 1:-1].float(), -1)
        q = torch.log_softmax(model(full, attention_mask=att).logits[:, ids.shape[1] - 1:-1].float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    fp32, tok = load_model("default")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    for m in (fp32, bf16):
        m.config.use_cache = True
    eos = tok.eos_token_id
    ids, mask = left_pad([encode_prompt(tok, c) for c in harmful_prompts(args.prompts)], eos)
    settings = {"fp32, dynamic cache": (fp32, "dynamic"), "bf16 weights, dynamic cache": (bf16, "dynamic"),
                "fp32, static cache": (fp32, "static")}
    for model, cache in settings.values():  # warm-up
        greedy(model, ids[:2], mask[:2], 2, eos, cache)
    best = {name: float("inf") for name in settings}
    outs = {}
    for _ in range(args.repeats):
        for name, (model, cache) in settings.items():
            out, seconds = greedy(model, ids, mask, args.max_new_tokens, eos, cache)
            best[name] = min(best[name], seconds)
            outs[name] = out
    ref = outs["fp32, dynamic cache"]
    tokens = ref.numel()
    print(f"{args.prompts} prompts x {args.max_new_tokens} new tokens, greedy, one batch; "
          f"{torch.get_num_threads()} threads; best of {args.repeats}\n")
    print("| setting | tokens/s | same greedy reply as fp32 | mean token KL vs fp32 (nats) |\n|---|---|---|---|")
    for name, (model, _) in settings.items():
        same = sum(bool(torch.equal(a, b)) for a, b in zip(outs[name], ref))
        kl = mean_kl(fp32, model, ids, mask, ref)
        print(f"| {name} | {tokens / best[name]:.1f} | {same}/{len(ref)} | {kl:.4f} |")


if __name__ == "__main__":
    main()
