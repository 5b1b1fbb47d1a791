"""Integration on the real bundled model (SmolLM2-135M-Instruct) and the bundled pyrit negatives.

Small on purpose (a few prompts, a few steps) so CI stays fast, but every piece is the real one:
GGUF materialisation, chat template, sampling, reference cache, grouped training in bf16 autocast.
"""

from __future__ import annotations

import json

import pytest
import torch

from negalign.config import config_from_dict
from negalign.evaluation.metrics import response_logprobs
from negalign.modeling.loading import load_model
from negalign.recipes import d2o
from negalign.training.examples import run_examples

pytestmark = pytest.mark.slow


def test_d2o_on_the_default_model_lowers_training_negatives(tmp_path):
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

    examples = run_examples(cfg)
    prompts = [ex.prompt for ex in examples]
    negatives = [ex.negatives[0] for ex in examples]
    ref, tok = load_model("default")
    trained, _ = load_model(str(out))
    before, _ = response_logprobs(ref, tok, prompts, negatives, max_response_tokens=48, precision="fp32")
    after, _ = response_logprobs(trained, tok, prompts, negatives, max_response_tokens=48, precision="fp32")
    # The trained negatives became less likely on average, by a clear margin (nats per sequence).
    assert float((after - before).mean()) < -0.5
