"""Tiny random models for fast tests (shared by conftest.py and the tests that build their own)."""

from __future__ import annotations

import torch


def tiny_llama(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A randomly initialised Llama with the given tokenizer's vocabulary, for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model


def tiny_reward_model_dir(path, tokenizer, *, seed: int = 1):
    """A saved random 1-logit Llama sequence classifier: a reward model that `reward_model:PATH` loads."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, num_labels=1,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def npo_train_setup(run_dir, tokenizer, **train):
    """(config, TrainData) for NPO on 4 short made-up examples, with a constant reference (no
    sampling, no reference pass): the cheapest real training run. `train`: train.* settings."""
    from negalign.config import load_config
    from negalign.data.records import Example, normalize_prompt
    from negalign.training.groups import training_groups
    from negalign.training.reference import ReferenceScores
    from negalign.training.step import TrainData

    examples = [Example(id=f"p{i}", prompt=normalize_prompt(f"Question number {i}: how do I do thing {i}?"),
                        negatives=[f"A bad answer {i}, which goes on for a while."]) for i in range(4)]
    settings = {"run_dir": str(run_dir), "train.method": "npo", "train.groups_per_step": "2",
                "train.micro_groups": "2", "train.lr": "1e-3", "train.precision": "fp32", "train.epochs": "10",
                **{f"train.{k}": str(v) for k, v in train.items()}}
    cfg = load_config(None, settings)
    groups, _, _, _ = training_groups(cfg, tokenizer, examples, {}, log=lambda *_: None)
    n = len(groups)
    reference = ReferenceScores(torch.zeros(n, 0), torch.zeros(n, 0, dtype=torch.int64),
                                torch.full((n,), -50.0), torch.ones(n, dtype=torch.int64))
    return cfg, TrainData(groups=groups, n_anchors=0, reference=reference)
