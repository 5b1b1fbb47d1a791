"""Shared fixtures: the real default tokenizer (cached once per machine) and tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process: the tests' models are tiny, several tests start subprocesses in
# parallel, and on a busy 2-core machine OpenMP threads that spin-wait for each other make torch
# several times slower than a single thread (measured: 2.4 vs 10.1 tokens/s generating at load 9).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer():
    from negalign.modeling.loading import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer Llama with the default tokenizer's vocabulary (random weights, about 3 M params)."""
    from tiny_models import tiny_llama

    return tiny_llama(tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny model folder (safetensors + tokenizer) that `load_model` accepts."""
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("tiny_model")
    model = tiny_llama(tokenizer, seed=0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
