"""The LM head in chunks: log softmax(head(hidden))[label] without [batch, length, vocab] logits.

Only the positions that predict response tokens are projected, `chunk_tokens` rows at a time, and
when gradients are needed with several chunks each one is recomputed in backward, so a single
chunk's logits are alive at once. A plain Linear head gets a hand-written backward (softmax minus
one-hot) instead of autograd replaying the fp32 upcast, gather and logsumexp
(benchmarks/throughput/bench_head.py measures the gain).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def logits_transform(config):
    """The model's own post-head logit transform (scaling, soft-capping), or None if it has none."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(config, "final_logit_softcapping", None)   # Gemma 2/3
    scale = getattr(config, "logit_scale", None)                  # Cohere: logits * scale
    divide = getattr(config, "logits_scaling", None)              # Granite: logits / scaling
    steps = []
    if scale is not None and scale != 1:
        steps.append(lambda x: x * scale)
    if divide is not None and divide != 1:
        steps.append(lambda x: x / divide)
    if softcap is not None:
        steps.append(lambda x: torch.tanh(x / softcap) * softcap)
    if not steps:
        return None

    def transform(x):
        for step in steps:
            x = step(x)
        return x
    return transform


def label_logprobs(hidden: torch.Tensor, labels: torch.Tensor, head, transform=None) -> torch.Tensor:
    """log softmax(head(hidden))[label] through autograd, all rows at once (the unfused path)."""
    # A gathered FSDP2 head is applied as a function, not called (see _fsdp2_gathered).
    logits = (torch.nn.functional.linear(hidden, head.weight, head.bias) if _fsdp2_gathered(head)
              else head(hidden))
    logits = logits.float()  # log-softmax over 49k+ entries in fp32, also under bf16 autocast
    if transform is not None:
        logits = transform(logits)
    picked = logits.gather(-1, labels[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _fused_head_applies(head, transform) -> bool:
    """The fused head covers a plain bias-free Linear with no logit transform (Llama, Qwen, SmolLM...).

    It reads `head.weight` directly, so a head with hooks (ZeRO-3 / FSDP gather their shards in
    them) or a sharded weight goes through head(hidden) instead.
    """
    plain = type(head) is torch.nn.Linear and not head._forward_pre_hooks and not head._forward_hooks
    return (transform is None and (plain or _fsdp2_gathered(head)) and head.bias is None
            and tuple(head.weight.shape) == (head.out_features, head.in_features))


def _fsdp2_gathered(head) -> bool:
    """An FSDP2 (fully_shard) Linear whose weight is gathered (after the forward, when its unit keeps it).

    Calling it as a module after the model's forward would open a new forward for its FSDP unit,
    whose post-backward reshards the unit right after the head's backward and frees the final
    norm's weight before the norm's backward reads it (a crash). Its gathered weight is used directly.
    """
    module_type = getattr(getattr(torch.distributed, "fsdp", None), "FSDPModule", None)
    if module_type is None or not isinstance(head, module_type) or not isinstance(head, torch.nn.Linear):
        return False
    from torch.distributed.tensor import DTensor

    return not isinstance(head.weight, DTensor)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _label_logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor):
    """(log-prob of each label, logsumexp) from one chunk's logits, both float32."""
    full = logits.float()  # the softmax over 49k+ entries is taken in fp32, also under bf16
    lse = torch.logsumexp(full, dim=-1)
    return full.gather(-1, labels[:, None]).squeeze(-1) - lse, lse


class _FusedHead(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[label] with a hand-written backward.

    The gradient of log p(label) w.r.t. the logits is onehot(label) - softmax, so backward needs
    one exp pass over the chunk's logits and two matmuls, instead of autograd replaying the fp32
    upcast, gather and logsumexp. `keep_logits` saves the chunk's logits (compute dtype) for
    backward; without it they are recomputed there (one extra matmul), so that with several chunks
    only one chunk's logits are alive at a time.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, keep_logits):
        logits = hidden @ weight.t()
        out, lse = _label_logprobs_from_logits(logits, labels)
        ctx.save_for_backward(hidden, weight, labels, lse, logits if keep_logits else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse, logits = ctx.saved_tensors
        if logits is None:
            logits = hidden @ weight.t()
        grad = torch.exp(logits.float() - lse[:, None])      # softmax, fp32
        grad.mul_(-grad_out[:, None])
        rows = torch.arange(labels.shape[0], device=labels.device)
        grad[rows, labels] += grad_out
        grad = grad.to(hidden.dtype)
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def _fused_chunk(hidden, labels, weight, keep_logits: bool) -> torch.Tensor:
    dtype = _compute_dtype(weight)
    # Cast outside the Function (differentiable casts, as autocast would do), compute inside without it.
    h, w = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(weight.device.type, enabled=False):
        return _FusedHead.apply(h, w, labels, keep_logits)


def chunked_label_logprobs(hidden: torch.Tensor, labels: torch.Tensor, head, transform=None, *,
                           chunk_tokens: int = 2048) -> torch.Tensor:
    """log softmax(head(hidden))[label] for each row of hidden [N, H]; float32 [N].

    Rows are projected `chunk_tokens` at a time, so that with gradients on at most one chunk's
    [chunk, vocab] logits are alive: when all rows fit in one chunk its logits are kept for backward
    (recomputing them would save no memory); with several chunks each one is recomputed in backward.
    """
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(
        p.requires_grad for p in head.parameters()))
    fused = _fused_head_applies(head, transform)
    one_chunk = hidden.shape[0] <= chunk_tokens
    out = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start:start + chunk_tokens], labels[start:start + chunk_tokens]
        if fused:
            out.append(_fused_chunk(h, y, head.weight, keep_logits=one_chunk))
        elif needs_grad and not one_chunk:
            out.append(checkpoint(label_logprobs, h, y, head, transform, use_reentrant=False))
        else:
            out.append(label_logprobs(h, y, head, transform))
    return torch.cat(out)
