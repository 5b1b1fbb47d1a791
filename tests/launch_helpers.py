"""Shared by the multi-process tests (test_distributed.py, test_fsdp_accelerate.py)."""

from __future__ import annotations

import os
import socket

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
