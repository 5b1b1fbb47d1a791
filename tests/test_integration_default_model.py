"""Integration on the real bundled model (SmolLM2-135M-Instruct) and the bundled pyrit negatives.

Small on purpose (a few prompts, a few steps) so CI stays fast, but every piece is the real one:
GGUF materialisation, chat template, sampling, reference cache, grouped training in bf16 autocast.
"""

from __future__ import annotations

import json

import pytest
import torch

from negalign.config import config_from_dict
from negalign.data.chat import encode_prompt, encode_response
from negalign.data.pyrit import bundled_negatives
from negalign.modeling.inference import score_groups
from negalign.modeling.loading import load_model
from negalign.modeling.logprobs import Group
from negalign.recipes import d2o
from negalign.training.examples import run_examples

pytestmark = pytest.mark.slow

N_HELDOUT = 16  # held-out prompts scored before and after (their first negative, 48 tokens)


def _logprobs(model, tok, prompts, responses) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log pi(response | prompt) in fp32 and the token counts, one per pair."""
    groups = [Group(encode_prompt(tok, p), [encode_response(tok, r, 48)[0]]) for p, r in zip(prompts, responses)]
    lp, ln = score_groups(model, groups, batch_tokens=4096, precision="fp32", log=lambda *_: None)
    return lp[:, 0], ln[:, 0]


def test_d2o_on_the_default_model_lowers_training_and_heldout_negatives(tmp_path):
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"source": "bundled", "limit": 4, "max_negatives_per_prompt": 1, "max_response_tokens": 48},
        "sample": {"k": 2, "max_new_tokens": 24},
        "train": {"groups_per_step": 2, "micro_groups": 2, "epochs": 2, "lr": 2e-5, "warmup_ratio": 0.0,
                  "save_every": 0},
    })
    quiet = lambda *_: None  # noqa: E731
    anchors = d2o.stage_sample(cfg, log=quiet)
    assert len(anchors) == 4 and all(len(a) == 2 for a in anchors.values())
    out = d2o.stage_train(cfg, log=quiet)
    rows = [json.loads(line) for line in (out.parent / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)

    ref, tok = load_model("default")
    trained, _ = load_model(str(out))
    examples = run_examples(cfg)
    heldout = bundled_negatives("heldout")[:N_HELDOUT]
    assert not {ex.prompt_text for ex in heldout} & {ex.prompt_text for ex in examples}
    shifts = {}
    for name, exs in (("train", examples), ("heldout", heldout)):
        prompts, negatives = [ex.prompt for ex in exs], [ex.negatives[0] for ex in exs]
        before, _ = _logprobs(ref, tok, prompts, negatives)
        after, _ = _logprobs(trained, tok, prompts, negatives)
        shifts[name] = (after - before).double()
    # Measured (2026-11-29): training negatives -34.3 nats each (4 of 4 lower), held-out negatives
    # -1.5 (15 of 16 lower). Held-out human SAFE responses fell too (-1.2 nats, 13 of 16) at this
    # scale, so this shows that the shift reaches unseen negatives, not that it is selective.
    assert float(shifts["train"].mean()) < -5.0
    assert float(shifts["heldout"].mean()) < -0.5, shifts["heldout"]
    assert int((shifts["heldout"] < 0).sum()) >= 12, shifts["heldout"]
