"""Attention over packed group rows, computed per segment instead of over the whole row.

A packed row is [prompt, resp_1, ..., resp_R] (negalign.modeling.logprobs). With a block mask, sdpa still
scores every (query, key) pair of the row, so its work grows with the square of the row length:
about (P + R n)^2 for R responses of n tokens. Here the prompt attends to itself (causal) and every
response to [its prompt, itself] (causal), all responses of the batch in one sdpa call: R n (P + n)
pairs. At K = 8 anchors (R = 9) that is several times less attention work, with the same numbers
as the block mask up to float rounding (tests/test_logprobs.py checks both against the naive forward).

Because groups are kept apart by the gather indices, not by a mask, a whole micro-batch of groups
can be packed end to end into ONE row with no padding (negalign.modeling.logprobs does so).

It plugs into transformers as a registered attention function. `segment_attention(config)` selects
it for the duration of one forward, and the layout travels to every layer as the `negalign_layout`
keyword, which transformers passes through to attention functions; each use is counted in
`layout.calls`, so a model that drops the keyword is caught. Without a layout (any other call) it
is plain sdpa with the mask it is given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "negalign_segments"


@dataclass
class SegmentLayout:
    """Gather indices into the flattened [rows * width] positions of a packed batch."""

    n_positions: int            # rows * width
    prompt_q: torch.Tensor      # [G, Pm] position of each prompt query (padding repeats the last)
    prompt_mask: torch.Tensor | None  # [G, 1, Pm, Pm] bool, or None when plain causal suffices
    response_q: torch.Tensor    # [S, Nm] position of each response query
    response_kv: torch.Tensor   # [S, Pm + Nm] its prompt's keys, then its own
    response_mask: torch.Tensor  # [S, 1, Nm, Pm + Nm] bool
    prompt_keep: torch.Tensor   # indices into the flat [G * Pm] prompt outputs that are real
    response_keep: torch.Tensor  # indices into the flat [S * Nm] response outputs that are real
    out_index: torch.Tensor     # positions the kept outputs go to (prompt ones, then responses)
    calls: int = 0              # attention calls that used this layout (a model that drops the
                                # keyword would leave it at 0: logprobs checks)


def build_layout(prompts: list[tuple[int, int]], responses: list[tuple[int, int, int]], n_positions: int,
                 device) -> SegmentLayout:
    """Layout of a packed batch, in flat positions (row * width + column).

    prompts[g] = (start, length) of group g's prompt; responses = (start, length, g) of every
    non-empty response. Positions in neither are padding: they get a zero attention output.
    """
    p_start = torch.tensor([start for start, _ in prompts])
    p_len = torch.tensor([n for _, n in prompts])
    pm = int(p_len.max())
    t = torch.arange(pm)
    prompt_q = p_start[:, None] + torch.minimum(t[None, :], p_len[:, None] - 1)   # [G, Pm]
    prompt_valid = t[None, :] < p_len[:, None]                                     # [G, Pm]
    prompt_mask = None
    if int(p_len.min()) != pm:
        # Causal, keys inside the prompt; a padding query still sees key 0, so no softmax row is empty.
        prompt_mask = ((t[None, :] <= t[:, None])[None] & prompt_valid[:, None, :])[:, None]

    r_start = torch.tensor([start for start, _, _ in responses])
    r_len = torch.tensor([n for _, n, _ in responses])
    r_group = torch.tensor([g for _, _, g in responses])
    nm = int(r_len.max())
    i = torch.arange(nm)
    own = r_start[:, None] + torch.minimum(i[None, :], r_len[:, None] - 1)          # [S, Nm]
    response_kv = torch.cat([prompt_q[r_group], own], dim=1)                       # [S, Pm + Nm]
    sees_prompt = prompt_valid[r_group][:, None, :].expand(-1, nm, -1)             # [S, Nm, Pm]
    sees_own = (i[None, :] <= i[:, None])[None] & (i[None, None, :] < r_len[:, None, None])  # [S, Nm, Nm]
    response_mask = torch.cat([sees_prompt, sees_own], dim=2)[:, None]
    response_valid = i[None, :] < r_len[:, None]

    out_index = torch.cat([prompt_q[prompt_valid], own[response_valid]])
    return SegmentLayout(
        n_positions=n_positions,
        prompt_q=prompt_q.to(device),
        prompt_mask=None if prompt_mask is None else prompt_mask.to(device),
        response_q=own.to(device),
        response_kv=response_kv.to(device),
        response_mask=response_mask.to(device),
        prompt_keep=prompt_valid.flatten().nonzero().squeeze(1).to(device),
        response_keep=response_valid.flatten().nonzero().squeeze(1).to(device),
        out_index=out_index.to(device),
    )


def _attend(q, k, v, q_idx, kv_idx, mask, *, dropout: float, scale, causal: bool):
    """sdpa over gathered rows: q [P, H, D] flat -> [N, Q, H, Dv] for N gathered sequences."""
    qs = q[q_idx].transpose(1, 2)    # [N, H, Q, D]
    ks = k[kv_idx].transpose(1, 2)   # [N, Hkv, KV, D]
    vs = v[kv_idx].transpose(1, 2)
    heads, kv_heads = qs.shape[1], ks.shape[1]
    extra = {}
    if heads != kv_heads:
        if qs.device.type == "cpu":
            extra["enable_gqa"] = True
        else:
            # GPU kernels that take a mask do not all take enable_gqa; repeat the kv heads instead.
            ks = ks.repeat_interleave(heads // kv_heads, dim=1)
            vs = vs.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, dropout_p=dropout, scale=scale,
                                         is_causal=causal and mask is None, **extra)
    return out.transpose(1, 2)       # [N, Q, H, Dv]


def segment_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling=None, **kwargs):
    """A transformers attention function: query [B, H, L, D], key/value [B, Hkv, L, D] -> [B, L, H, Dv]."""
    layout: SegmentLayout | None = kwargs.pop("negalign_layout", None)
    if layout is None or kwargs.get("softcap") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, h, length, _ = query.shape
    if b * length != layout.n_positions:
        raise ValueError(f"negalign_layout was built for {layout.n_positions} positions, got {b * length}")
    layout.calls += 1
    dropout = dropout if module.training else 0.0
    q = query.transpose(1, 2).reshape(b * length, h, query.shape[-1])
    k = key.transpose(1, 2).reshape(b * length, key.shape[1], key.shape[-1])
    v = value.transpose(1, 2).reshape(b * length, value.shape[1], value.shape[-1])
    dv = value.shape[-1]
    prompt_out = _attend(q, k, v, layout.prompt_q, layout.prompt_q, layout.prompt_mask,
                         dropout=dropout, scale=scaling, causal=True)
    response_out = _attend(q, k, v, layout.response_q, layout.response_kv, layout.response_mask,
                           dropout=dropout, scale=scaling, causal=False)
    kept = torch.cat([prompt_out.reshape(-1, h, dv)[layout.prompt_keep],
                      response_out.reshape(-1, h, dv)[layout.response_keep]])
    out = kept.new_zeros(b * length, h, dv).index_copy(0, layout.out_index, kept)
    return out.view(b, length, h, dv), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, segment_attention_forward)
    AttentionMaskInterface.register(NAME, _no_mask)


def _no_mask(*_args, **_kwargs):
    # The layout keeps segments apart; a [L, L] mask over a long packed row would only cost memory.
    return None


def supports(config) -> bool:
    """Whether a model with this config can use per-segment attention in place of its sdpa."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (getattr(config, "_attn_implementation", None) == "sdpa"
            and getattr(config, "attn_logit_softcapping", None) is None)


@contextlib.contextmanager
def segment_attention(config):
    """Route the model's attention through `segment_attention_forward` for the enclosed forward."""
    _register()
    old = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = old
