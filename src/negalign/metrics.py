"""Model-level measurements shared by the demo and the evaluation suite.

Each function takes loaded models and plain data and returns numbers; no files, no printing.
"""

from __future__ import annotations

import math

import torch

from negalign.data.chat import encode_prompt, encode_response
from negalign.data.records import Messages
from negalign.generation.base import GenerationConfig
from negalign.modeling.logprobs import Group
from negalign.modeling.inference import score_groups


def response_logprobs(model, tokenizer, prompts: list[Messages], responses: list[str], *,
                      max_response_tokens: int = 192, batch_tokens: int = 4096,
                      precision: str = "bf16") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log pi(response | prompt) and token counts, one per (prompt, response) pair."""
    groups = [Group(encode_prompt(tokenizer, p), [encode_response(tokenizer, r, max_response_tokens)[0]])
              for p, r in zip(prompts, responses)]
    lp, ln = score_groups(model, groups, batch_tokens=batch_tokens, precision=precision, log=lambda *_: None)
    return lp[:, 0], ln[:, 0]


def logprob_shift(policy_logps: torch.Tensor, ref_logps: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """Mean change of log pi(y|x) from reference to policy, per sequence and per token."""
    diff = (policy_logps - ref_logps).double()
    return {"per_sequence": float(diff.mean()), "per_token": float(diff.sum() / lengths.sum().clamp(min=1))}


def perplexity(logps: torch.Tensor, lengths: torch.Tensor) -> float:
    """Token-level perplexity over all responses: exp(-sum log p / sum tokens)."""
    return math.exp(-float(logps.double().sum()) / max(int(lengths.sum()), 1))


def greedy_replies(model, tokenizer, prompts: list[Messages], *, max_new_tokens: int = 64,
                   batch_size: int = 32) -> list[str]:
    from negalign.generation.transformers_backend import TransformersGenerator

    generator = TransformersGenerator(model, tokenizer, batch_size=batch_size)
    out = generator.generate(prompts, GenerationConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    return [r[0] for r in out]


def rate(flags: list[float]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
