"""Activation checkpointing of decoder layers that keeps negalign's per-segment attention.

Each decoder layer keeps only its input during the forward and recomputes its activations in the
backward: activation memory drops from every layer's intermediates to one layer's, for about one
extra forward of compute. Transformers' own `gradient_checkpointing_enable` recomputes outside
negalign's forward, where the per-segment attention is no longer selected (negalign.modeling.logprobs then
falls back to the slower block mask); this wrapper re-selects it inside the recompute, because
the layout travels in the layer's keyword arguments, which the checkpoint stores and replays.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from negalign.base.errors import UserError
from negalign.modeling import segment_attention


def _run_layer(forward, config, *args, **kwargs):
    if kwargs.get("negalign_layout") is not None:
        with segment_attention.segment_attention(config):
            return forward(*args, **kwargs)
    return forward(*args, **kwargs)


def enable_activation_checkpointing(model) -> int:
    """Checkpoint every decoder layer of `model` (a causal LM, or a peft wrapper of one) in place.

    Returns the number of layers wrapped. Only grad-enabled calls are checkpointed; inference runs
    the layers as they are.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UserError(f"cannot find the decoder layers of {type(inner).__name__} to checkpoint",
                        field="train.activation_checkpointing")
    config = inner.config
    for layer in layers:
        if getattr(layer, "_negalign_checkpointed", False):
            continue
        original = layer.forward

        def forward(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_run_layer, _original, config, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        layer._negalign_checkpointed = True
    return len(layers)
