"""Do the teacher's two backends model the same revision? Next-token distributions on revision turns.

For the first N rows of a critique file, the conversation up to the revision request (message, answer,
critique request, critique, revision request; the file's own texts) is rendered once and the 1.5B
teacher's next-token distribution computed three ways: transformers (fp32, weights dequantised from the
GGUF), llama.cpp on a fresh context, and llama.cpp after the same chats' first turns were cached (the
critique stage's path: each turn prefills only its new tokens). Reports KL divergences (nats) and whether
the most likely token agrees.

Why: the same seed does not give the same sample on the two backends (the seeded sampler draws noise for
the top-p nucleus only, so one token more or less at the nucleus edge reassigns every draw), so their
critique files differ from the first token on, and a difference between runs made with different
backends could be the backend or the draw. This separates the two.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rdpo/teacher_agreement.py runs/crit_hf8/critique.jsonl --n 8 --out benchmarks/rdpo/results_teacher_agreement.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

TEACHER = "qwen2.5-coder-1.5b"


def revision_turns(rows: list[dict], preset_name: str) -> tuple[list, list]:
    """(conversations ending at the revision request, as the critique stage builds them with the bench's
    settings, which keep the default revision turn and no system turn; their first turns alone)."""
    from negalign.recipes.critique import CritiqueConfig, load_preset, revision_conversation

    preset, c = load_preset(preset_name), CritiqueConfig()
    return [revision_conversation(r, preset, c) for r in rows], [r["prompt"] for r in rows]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> list[float]:
    """KL(p || q) per row, over the vocabulary both share."""
    v = min(p_logits.shape[-1], q_logits.shape[-1])
    lp, lq = p_logits[:, :v].float().log_softmax(-1), q_logits[:, :v].float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("critique", help="a critique.jsonl (rows with status ok are used)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--preset", default="safety")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from negalign.base.io import write_json
    from negalign.data.chat import encode_prompt
    from negalign.generation.llamacpp_backend import LlamaCppGenerator
    from negalign.modeling.loading import load_model

    rows = [json.loads(line) for line in open(a.critique)]
    rows = [r for r in rows if r.get("status", "ok") == "ok"][: a.n]
    full, first = revision_turns(rows, a.preset)

    t = time.perf_counter()
    model, tokenizer = load_model(TEACHER)
    with torch.no_grad():
        hf = torch.stack([model(torch.tensor([encode_prompt(tokenizer, c)])).logits[0, -1] for c in full])
    del model
    hf_s = time.perf_counter() - t
    print(f"transformers: {len(full)} conversations in {hf_s:.0f} s", flush=True)

    fresh = LlamaCppGenerator(TEACHER, batch_size=len(full)).next_token_logits(full)
    cached_gen = LlamaCppGenerator(TEACHER, batch_size=len(full))
    cached_gen.next_token_logits(first)
    cached = cached_gen.next_token_logits(full)
    print("llama.cpp: done", flush=True)

    def top1_agree(x, y):
        return sum(int(i == j) for i, j in zip(x.argmax(-1).tolist(), y.argmax(-1).tolist()))

    pairs = {"transformers_vs_llamacpp_fresh": (hf, fresh), "transformers_vs_llamacpp_cached": (hf, cached),
             "llamacpp_fresh_vs_cached": (fresh, cached)}
    report = {"critique": a.critique, "rows": len(full), "prompt_tokens": [len(encode_prompt(tokenizer, c)) for c in full],
              "cached_prefix_tokens": cached_gen.last_reused_tokens, "transformers_seconds": round(hf_s, 1),
              "kl": {}, "top1_agree": {}}
    for name, (x, y) in pairs.items():
        d = kl(x, y)
        report["kl"][name] = {"mean": sum(d) / len(d), "max": max(d), "per_row": d}
        report["top1_agree"][name] = top1_agree(x, y)
        print(f"KL({name}): mean {sum(d) / len(d):.4f}, max {max(d):.4f} nats; top-1 agrees in "
              f"{report['top1_agree'][name]}/{len(full)}")
    for name, logits in (("transformers", hf), ("llamacpp fresh", fresh)):
        top = logits.float().softmax(-1).topk(3)
        print(name, [[(tokenizer.decode([i]), round(q, 2)) for q, i in zip(ps.tolist(), ix.tolist())]
                     for ps, ix in zip(top.values, top.indices)])
    if a.out:
        write_json(a.out, report)


if __name__ == "__main__":
    main()
