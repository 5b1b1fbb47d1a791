"""Activation checkpointing of decoder layers: same log-probs and gradients, per-segment attention kept."""

from __future__ import annotations

import copy

import pytest
import torch

from negalign.base.errors import UserError
from negalign.modeling import segment_attention
from negalign.modeling.activation_checkpointing import enable_activation_checkpointing
from negalign.modeling.logprobs import Group, group_logprobs


def _groups(eos: int) -> list[Group]:
    gen = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(0, 49152, (n,), generator=gen).tolist()
    return [Group(ids(7), [ids(5) + [eos], ids(9), [eos]]), Group(ids(4), [ids(6) + [eos], ids(3)])]


def _backward(model, groups, weights):
    model.zero_grad(set_to_none=True)
    logps, _ = group_logprobs(model, groups)
    (logps * weights).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _spy(monkeypatch) -> list[bool]:
    calls = []
    real = segment_attention.segment_attention_forward

    def spy(module, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real(module, *args, **kwargs)

    monkeypatch.setattr(segment_attention, "segment_attention_forward", spy)
    return calls


def test_checkpointed_layers_give_the_same_logprobs_and_gradients(tiny_model, tokenizer, monkeypatch):
    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(2, 3)
    plain = copy.deepcopy(tiny_model)
    expected, expected_grads = _backward(plain, groups, weights)
    assert enable_activation_checkpointing(tiny_model) == tiny_model.config.num_hidden_layers
    calls = _spy(monkeypatch)
    got, grads = _backward(tiny_model, groups, weights)
    # Forward once per layer, then each layer recomputed in backward: with per-segment attention both times.
    assert len(calls) == 2 * tiny_model.config.num_hidden_layers
    assert tiny_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4)


def test_inference_is_not_checkpointed_and_wrapping_twice_is_harmless(tiny_model, tokenizer, monkeypatch):
    enable_activation_checkpointing(tiny_model)
    enable_activation_checkpointing(tiny_model)
    calls = _spy(monkeypatch)
    with torch.inference_mode():
        group_logprobs(tiny_model, _groups(tokenizer.eos_token_id))
    assert len(calls) == tiny_model.config.num_hidden_layers


def test_lora_model_layers_are_found(tiny_model, tokenizer):
    from negalign.modeling.lora import LoraSpec, apply_lora

    model = apply_lora(tiny_model, LoraSpec(r=4, alpha=8))
    assert enable_activation_checkpointing(model) == tiny_model.config.num_hidden_layers
    logps, _ = group_logprobs(model, _groups(tokenizer.eos_token_id))
    logps.sum().backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_a_model_without_decoder_layers_is_a_user_error():
    with pytest.raises(UserError, match="decoder layers"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))


def test_torch_checkpoint_wrapper_falls_back_to_the_block_mask(tiny_model, tokenizer, monkeypatch):
    """accelerate's fsdp_activation_checkpointing wraps layers in torch's CheckpointWrapper, whose
    recompute runs outside negalign's forward: the grouped forward must then use the block mask."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(2, 3)
    expected, expected_grads = _backward(copy.deepcopy(tiny_model), groups, weights)
    layer_type = type(tiny_model.model.layers[0])
    apply_activation_checkpointing(tiny_model, check_fn=lambda m: isinstance(m, layer_type))
    calls = _spy(monkeypatch)
    got, grads = _backward(tiny_model, groups, weights)
    assert calls == []
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)
    for name in expected_grads:
        key = next(k for k in grads if k.replace("_checkpoint_wrapped_module.", "") == name)
        torch.testing.assert_close(grads[key], expected_grads[name], atol=1e-5, rtol=1e-4)
