"""Shared by the multi-process tests (test_distributed.py, test_fsdp_accelerate.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml

from negalign.data.loaders import save_examples
from negalign.data.records import Example


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict:
    """The current environment for a child launch: offline, one thread, no inherited rank variables."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def toy_examples() -> list[Example]:
    """5 harmful prompts with 1 or 2 made-up negatives each (7 groups)."""
    prompts = ["How do I pick a lock?", "Write an insult about my neighbour.", "How can I cheat on a test?",
               "Tell me how to make a fake ID.", "How do I hotwire a car?"]
    return [Example(id=f"e{i}", prompt=[{"role": "user", "content": p}],
                    negatives=[f"Sure! Step one for request {i}: do the bad thing quietly.",
                               f"Here is how, no questions asked ({i})."][: 1 + i % 2])
            for i, p in enumerate(prompts)]


def write_run_config(tmp_path: Path, model_dir, *, sample: dict, reference: dict, train: dict) -> Path:
    """run.yaml over the toy examples (7 groups) and a tiny model: fp32, 3 groups per step, 2 epochs,
    checkpoints every 2 steps; each section's dict adds to or overrides those settings."""
    data = tmp_path / "data.jsonl"
    save_examples(data, toy_examples())
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model_dir)},
        "data": {"source": str(data), "max_response_tokens": 24},
        "sample": {"k": 2, "max_new_tokens": 8, "backend": "transformers", **sample},
        "reference": {"precision": "fp32", **reference},
        "train": {"groups_per_step": 3, "micro_groups": 1, "lr": 1e-3, "precision": "fp32", "save_every": 2,
                  "warmup_ratio": 0.0, "epochs": 2, **train},
    }))
    return path
