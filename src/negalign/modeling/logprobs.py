"""Sequence log-probabilities log pi(y|x) for groups of responses that share one prompt.

A D2O group is one prompt with K anchors and one negative. The fast path ("grouped") packs each
group into one row  [prompt, resp_1, ..., resp_R]  with a block attention mask: every response
sees the prompt and its own earlier tokens, never another response, and its position ids restart
right after the prompt. The prompt is thus computed once per group instead of R times, and the
result equals scoring each (prompt + response) on its own. With sdpa attention the block mask is
not even applied as a mask: attention runs per segment (negalign.modeling.segment_attention), so its work
grows with the responses' lengths, not with the square of the packed row's; "grouped_mask" keeps
the masked whole-row attention (eager models use it too).

The LM head never produces [batch, length, vocab] logits: only the positions that predict response
tokens are projected (negalign.modeling.lm_head, in chunks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from negalign.base.errors import UserError
from negalign.modeling import segment_attention
from negalign.modeling.lm_head import chunked_label_logprobs, logits_transform

METHODS = ("grouped", "grouped_mask", "naive")
_MASKABLE_ATTENTION = ("sdpa", "eager")  # implementations that honour a custom 4D mask as given


@dataclass
class Group:
    """One prompt and its responses, as token ids (data/chat.py: encode_prompt / encode_response)."""

    prompt_ids: list[int]
    response_ids: list[list[int]] = field(default_factory=list)


def group_logprobs(model, groups: list[Group], *, method: str = "grouped",
                   chunk_tokens: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of every group, in one forward pass over all `groups`.

    Returns (logps, lengths), both [G, Rmax] on the model's device: logps float32, the sum of the
    response's token log-probs given its prompt; lengths int64, its token count. Slots past a
    group's last response have length 0 and logp 0. Differentiable unless called under no_grad or
    inference_mode. Batch the groups beforehand (negalign.modeling.batching.pack_by_token_budget).
    """
    if method not in METHODS:
        raise UserError(f"unknown log-prob method '{method}'; expected one of {', '.join(METHODS)}",
                        field="method")
    if chunk_tokens <= 0:
        raise UserError(f"chunk_tokens must be positive, got {chunk_tokens}", field="chunk_tokens")
    _check_groups(groups)
    device = _model_device(model)
    n_groups = len(groups)
    r_max = max((len(g.response_ids) for g in groups), default=0)
    lengths = torch.tensor([[len(r) for r in g.response_ids] + [0] * (r_max - len(g.response_ids))
                            for g in groups], dtype=torch.int64, device=device).reshape(n_groups, r_max)
    if n_groups == 0 or r_max == 0 or int(lengths.sum()) == 0:
        return torch.zeros(n_groups, r_max, dtype=torch.float32, device=device), lengths
    if method == "naive":
        token_logps, slots = _naive_token_logps(model, groups, device, r_max)
    else:
        token_logps, slots = _grouped_token_logps(model, groups, device, r_max, chunk_tokens,
                                                  per_segment=method == "grouped")
    logps = torch.zeros(n_groups * r_max, dtype=torch.float32, device=device)
    logps = logps.index_add(0, slots, token_logps)
    return logps.view(n_groups, r_max), lengths


def _check_groups(groups: list[Group]) -> None:
    for i, g in enumerate(groups):
        if len(g.prompt_ids) == 0:
            # Without a prompt token nothing predicts the first response token.
            raise UserError(f"group {i} has an empty prompt; log pi(y|x) needs at least one prompt token",
                            field="prompt_ids")


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise UserError("the model has no parameters") from None


# ---------------------------------------------------------------- naive: one row per response

def _naive_token_logps(model, groups, device, r_max):
    """Reference path: each (prompt + response) is its own padded row, full logits from model()."""
    rows, targets, slots = [], [], []
    for gi, g in enumerate(groups):
        for ri, resp in enumerate(g.response_ids):
            if resp:
                rows.append(list(g.prompt_ids) + list(resp))
                targets.append((len(g.prompt_ids), len(resp)))
                slots.append(gi * r_max + ri)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
    ids, attn = ids.to(device), attn.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits
    logprobs = logits.float().log_softmax(-1)
    token_logps, token_slots = [], []
    for i, (start, n) in enumerate(targets):
        # Position t predicts token t + 1.
        pred = logprobs[i, start - 1:start - 1 + n]
        token_logps.append(pred.gather(-1, ids[i, start:start + n, None]).squeeze(-1))
        token_slots.append(torch.full((n,), slots[i], dtype=torch.long))
    return torch.cat(token_logps), torch.cat(token_slots).to(device)


# ---------------------------------------------------------------- grouped: prompt once per group

@dataclass
class _Packed:
    input_ids: torch.Tensor     # [B, L]
    position_ids: torch.Tensor  # [B, L]
    segment: torch.Tensor       # [B, L]; 0 prompt, j + 1 response j, -1 padding
    pred_row: torch.Tensor      # [N] row of the hidden state that predicts each response token
    pred_col: torch.Tensor      # [N] its column
    labels: torch.Tensor        # [N] the token it predicts
    slots: torch.Tensor         # [N] flat output slot g * r_max + j
    prompts: list[tuple[int, int]]           # per group: (flat start, length) of its prompt
    responses: list[tuple[int, int, int]]    # per non-empty response: (flat start, length, group)


def _pack(groups, r_max, *, one_row: bool = False) -> _Packed:
    """One row per group (width = the longest group), or, with `one_row`, all groups end to end in
    a single row with no padding at all (only per-segment attention can keep groups apart there)."""
    sizes = [len(g.prompt_ids) + sum(len(r) for r in g.response_ids) for g in groups]
    rows, width = (1, sum(sizes)) if one_row else (len(groups), max(sizes))
    ids = torch.zeros(rows, width, dtype=torch.long)
    pos = torch.zeros(rows, width, dtype=torch.long)
    seg = torch.full((rows, width), -1, dtype=torch.long)
    pred_row, pred_col, labels, slots = [], [], [], []
    prompts, responses = [], []
    offset = 0
    for gi, g in enumerate(groups):
        row, col = (0, offset) if one_row else (gi, 0)
        offset += sizes[gi]
        p = len(g.prompt_ids)
        ids[row, col:col + p] = torch.tensor(g.prompt_ids)
        pos[row, col:col + p] = torch.arange(p)
        seg[row, col:col + p] = 0
        prompts.append((row * width + col, p))
        start = col + p
        for ri, resp in enumerate(g.response_ids):
            n = len(resp)
            if n == 0:
                continue
            ids[row, start:start + n] = torch.tensor(resp)
            pos[row, start:start + n] = torch.arange(p, p + n)  # as if the response followed the prompt
            seg[row, start:start + n] = ri + 1
            # The first token is predicted by the last prompt token, the others by their predecessor.
            pred_col.append(torch.cat([torch.tensor([col + p - 1]), torch.arange(start, start + n - 1)]))
            pred_row.append(torch.full((n,), row))
            labels.append(torch.tensor(resp))
            slots.append(torch.full((n,), gi * r_max + ri))
            responses.append((row * width + start, n, gi))
            start += n
        if not one_row:
            pos[row, start:] = torch.arange(width - start)  # padding: any valid positions
    return _Packed(ids, pos, seg, torch.cat(pred_row), torch.cat(pred_col), torch.cat(labels),
                   torch.cat(slots), prompts, responses)


def block_attention_mask(segment: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] boolean mask, True where query q may attend to key k.

    Causal within the row, and a response token sees only the prompt (segment 0) and its own
    response. Padding (segment -1) is seen by nobody; a padding query sees only itself, so no row of
    the softmax is empty (which would give NaN).
    """
    length = segment.shape[1]
    idx = torch.arange(length, device=segment.device)
    causal = idx[None, :] <= idx[:, None]                     # [L, L] (q, k)
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]   # [B, L, 1], [B, 1, L]
    allowed = causal & (seg_q >= 0) & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
    allowed = allowed | (torch.eye(length, dtype=torch.bool, device=segment.device) & (seg_q < 0))
    return allowed[:, None]


def _attention_implementation(model) -> str:
    config = model.config
    return getattr(config, "_attn_implementation", None) or "eager"


def _grouped_token_logps(model, groups, device, r_max, chunk_tokens, per_segment: bool):
    inner = unwrap_model(model)
    impl = _attention_implementation(inner)
    if impl not in _MASKABLE_ATTENTION:
        raise UserError(f"grouped log-probs need an attention implementation that takes a custom mask "
                        f"({' or '.join(_MASKABLE_ATTENTION)}), the model uses '{impl}'; load it with "
                        f"attn_implementation='sdpa' or use method='naive'", field="attn_implementation")
    decoder, head, transform = _split_model(inner)
    _check_sliding_window(inner.config, groups)
    # Transformers' own gradient checkpointing would recompute layers outside this call, with
    # the model's usual attention: keep the masked path there so recompute matches the forward.
    per_segment = per_segment and segment_attention.supports(inner.config) and not _checkpointing_layers(inner)
    packed = _pack(groups, r_max, one_row=per_segment)
    inputs = dict(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device))
    if per_segment:
        layout = segment_attention.build_layout(packed.prompts, packed.responses,
                                                packed.input_ids.numel(), device)
        with segment_attention.segment_attention(inner.config):
            hidden = _final_hidden_states(model, decoder, **inputs, attention_mask=None, negalign_layout=layout)
        if layout.calls == 0:
            # The groups share one row: attention that ignored the layout mixed them.
            raise UserError(f"{type(inner).__name__} does not pass attention keywords to its attention "
                            f"layers; use method='grouped_mask'", field="method")
    else:
        mask = block_attention_mask(packed.segment.to(device))
        if impl == "eager":
            # Eager attention adds the mask to the scores: it must be additive, in the compute dtype.
            dtype = head.weight.dtype if hasattr(head, "weight") else torch.float32
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        hidden = _final_hidden_states(model, decoder, **inputs, attention_mask=mask)
    selected = hidden[packed.pred_row.to(device), packed.pred_col.to(device)]  # [N, hidden]
    token_logps = chunked_label_logprobs(selected, packed.labels.to(device), head, transform,
                                         chunk_tokens=chunk_tokens)
    return token_logps, packed.slots.to(device)


def _checkpointing_layers(model) -> bool:
    """Whether layers are recomputed in backward by someone else's checkpointing (transformers',
    or torch's CheckpointWrapper as accelerate's fsdp_activation_checkpointing applies it): their
    recompute runs outside this forward, so it must not depend on per-segment attention.
    negalign.modeling.activation_checkpointing's own wrapper is not counted: it re-selects the attention itself."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(model, name, False):
        return True
    return any(type(m).__name__ == "CheckpointWrapper" for m in model.modules())


def _sliding_window(config) -> int | None:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _check_sliding_window(config, groups) -> None:
    """Our one mask serves every layer, so a sliding window is honoured only where it never bites."""
    window = _sliding_window(config)
    if window is None:
        return
    longest = max(len(g.prompt_ids) + max((len(r) for r in g.response_ids), default=0) for g in groups)
    if longest > window:
        raise UserError(f"a prompt + response of {longest} tokens exceeds the model's sliding window "
                        f"({window}); grouped log-probs cannot apply it, use method='naive'",
                        field="method")


def unwrap_model(model):
    """The model inside DDP / FSDP / torch.compile wrappers (a peft wrapper is kept)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _final_hidden_states(model, decoder, **inputs) -> torch.Tensor:
    """The decoder's last hidden states, obtained by calling the OUTERMOST model.

    Going through the full forward keeps every wrapper working: DDP only synchronises gradients of
    a backward that followed its own forward, FSDP gathers its shards there, peft activates its
    adapters there. The decoder's output is captured by a hook and the head runs on the last
    position only (logits_to_keep=1), which costs one [batch, vocab] row, not [batch, length, vocab].
    """
    captured = []

    def hook(_module, _args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder.register_forward_hook(hook)
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    except TypeError as e:
        if "logits_to_keep" not in str(e):
            raise
        # A causal LM without logits_to_keep would build full logits. Its decoder alone is the same
        # computation for a plain or peft-LoRA model (the adapters sit inside the decoder's layers),
        # but calling it would bypass a DDP/FSDP wrapper: refuse that instead of unsynchronised grads.
        _check_decoder_bypass(model)
        captured.clear()
        decoder(**inputs, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise UserError(f"expected one decoder call per forward, saw {len(captured)}; use method='naive'",
                        field="model")
    return captured[0]


def _check_decoder_bypass(model) -> None:
    """Calling the decoder directly is safe only when no wrapper's forward would be skipped."""
    wrapper = None
    if unwrap_model(model) is not model:
        wrapper = type(model).__name__
    else:
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # a torch without distributed support: nothing can be sharded
            FSDPModule = ()
        if any(isinstance(m, FSDPModule) for m in model.modules()):
            wrapper = "FSDP (fully_shard)"
    if wrapper is not None:
        raise UserError(f"{type(unwrap_model(model)).__name__}.forward does not take logits_to_keep, and calling "
                        f"its decoder directly would bypass the {wrapper} wrapper (gradients not synchronised); "
                        f"use method='naive' or a model class that takes logits_to_keep", field="method")


# ---------------------------------------------------------------- decoder and head of a causal LM

def _split_model(model):
    """(decoder, output head, logits transform) of a causal LM, also through a peft wrapper."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict):
        adapters = getattr(model, "active_adapters", None) or list(peft_config)
        for name in adapters:
            cfg = peft_config.get(name)
            if cfg is not None and getattr(cfg, "is_prompt_learning", False):
                # Prompt-learning adapters add virtual tokens in PeftModel.forward, which the
                # decoder alone would skip: the log-probs would silently ignore the adapter.
                raise UserError(f"prompt-learning adapters ({type(cfg).__name__}) are not supported by "
                                f"grouped log-probs; use a LoRA-type adapter or method='naive'",
                                field="peft")
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is model:
        raise UserError(f"cannot find the decoder and output head of {type(model).__name__}; "
                        f"use method='naive'", field="model")
    return decoder, head, logits_transform(model.config)
