"""Response log-probs an evaluation computes, cached in logprobs.jsonl.

A model that is scored twice on the same pairs scores them once: a rerun of a killed evaluation,
and the reference of a trained model whose initial model was evaluated first (the demo evaluates
the initial model, then the trained one against it; the held-out pyrit pairs were ~70 s of each).
A row's key hashes the model's identity on disk (evaluation.generations.model_identity: name, size
and mtime of its weight files), the response budget, the prompt and the response, so a retrained
folder or another setting misses.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from negalign.base.fingerprint import fingerprint
from negalign.base.io import JsonlAppender, read_jsonl_tolerant
from negalign.evaluation.generations import FORMAT_VERSION, model_identity
from negalign.evaluation.metrics import response_logprobs

LOGPROBS_FILE = "logprobs.jsonl"
SCORING = "fp32 weights, bf16 autocast"  # what response_logprobs does; part of the key


def scoring_identity(spec: str) -> str:
    """The cache key of one model's log-probs."""
    return fingerprint({"v": FORMAT_VERSION, "model": model_identity(spec), "scoring": SCORING})


class LogprobStore:
    """logprobs.jsonl: one row per (model, budget, prompt, response) with its summed log-prob and
    token count; appended after each call's new pairs are scored."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, tuple[float, int]] = {r["key"]: (r["lp"], r["n"]) for r in read_jsonl_tolerant(path)}

    @staticmethod
    def key(model_id: str, max_response_tokens: int, prompt, response: str) -> str:
        blob = json.dumps([model_id, max_response_tokens, prompt, response], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def logprobs(self, model_id: str, model, tokenizer, prompts: list, responses: list[str], *,
                 max_response_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What response_logprobs returns (float32 sums, int64 counts), scoring only the pairs not stored."""
        keys = [self.key(model_id, max_response_tokens, p, r) for p, r in zip(prompts, responses)]
        todo = [i for i, k in enumerate(keys) if k not in self.rows]
        if todo:
            lp, n = response_logprobs(model, tokenizer, [prompts[i] for i in todo], [responses[i] for i in todo],
                                      max_response_tokens=max_response_tokens)
            with JsonlAppender(self.path) as out:
                for i, a, b in zip(todo, lp.tolist(), n.tolist()):
                    self.rows[keys[i]] = (a, int(b))
                    out.write({"key": keys[i], "lp": a, "n": int(b)})
        return (torch.tensor([self.rows[k][0] for k in keys], dtype=torch.float32),
                torch.tensor([self.rows[k][1] for k in keys], dtype=torch.int64))
