"""Grouped log-probs (prompt once, block mask, chunked head) against the naive per-sequence baseline."""

from __future__ import annotations

import pytest
import torch

from negalign.base.errors import UserError
from negalign.modeling.lm_head import chunked_label_logprobs, logits_transform
from negalign.modeling.logprobs import Group, block_attention_mask, group_logprobs


def _ids(gen, n, vocab=49152):
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


def _groups(eos: int, vocab: int = 49152) -> list[Group]:
    """Unequal prompt lengths, response counts and lengths; some end in eos, some are truncated."""
    gen = torch.Generator().manual_seed(1)
    return [
        Group(_ids(gen, 9, vocab), [_ids(gen, 5, vocab) + [eos], _ids(gen, 2, vocab) + [eos],
                                    _ids(gen, 11, vocab), [eos]]),
        Group(_ids(gen, 3, vocab), [_ids(gen, 7, vocab) + [eos]]),
        Group(_ids(gen, 14, vocab), [_ids(gen, 4, vocab), _ids(gen, 8, vocab) + [eos], _ids(gen, 1, vocab)]),
    ]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _weighted_backward(model, groups, method, weights, **kw):
    model.zero_grad(set_to_none=True)
    logps, lengths = group_logprobs(model, groups, method=method, **kw)
    (logps * weights).sum().backward()
    return logps.detach(), lengths, _grads(model)


def _assert_grads_close(a: dict, b: dict, rel: float):
    assert a.keys() == b.keys() and a
    for name in a:
        err = (a[name] - b[name]).norm() / b[name].norm().clamp_min(1e-30)
        assert err < rel, f"{name}: relative gradient error {err:.2e}"


@pytest.mark.parametrize("method", ["grouped", "grouped_mask"])
def test_grouped_equals_naive_values_and_gradients(tiny_model, tokenizer, method):
    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(3, 4)
    naive, len_n, g_naive = _weighted_backward(tiny_model, groups, "naive", weights)
    grouped, len_g, g_grouped = _weighted_backward(tiny_model, groups, method, weights, chunk_tokens=7)
    assert grouped.shape == (3, 4) and grouped.dtype == torch.float32
    assert len_g.dtype == torch.int64 and torch.equal(len_g, len_n)
    assert len_g.tolist() == [[6, 3, 11, 1], [8, 0, 0, 0], [4, 9, 1, 0]]
    # Missing responses are exactly zero; real ones are far from it (random model: ~ -10.8 per token).
    assert grouped[1, 1:].eq(0).all() and grouped[2, 3] == 0
    assert (grouped[len_g > 0] < -5).all()
    torch.testing.assert_close(grouped, naive, atol=1e-5, rtol=1e-6)
    _assert_grads_close(g_grouped, g_naive, rel=1e-5)


def test_sdpa_models_take_the_per_segment_attention(tiny_model, tokenizer, monkeypatch):
    """"grouped" runs attention per segment (every layer gets the layout), then restores the model's own."""
    from negalign.modeling import segment_attention

    calls = []
    real = segment_attention.segment_attention_forward

    def spy(module, *args, **kwargs):
        calls.append("negalign_layout" in kwargs)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(segment_attention, "segment_attention_forward", spy)
    assert tiny_model.config._attn_implementation == "sdpa"
    with torch.inference_mode():
        group_logprobs(tiny_model, _groups(tokenizer.eos_token_id))
        assert calls == [True] * tiny_model.config.num_hidden_layers
        assert tiny_model.config._attn_implementation == "sdpa"
        calls.clear()
        group_logprobs(tiny_model, _groups(tokenizer.eos_token_id), method="grouped_mask")
        tiny_model(torch.tensor([[1, 2, 3]]))
    assert calls == []


def test_a_model_that_drops_the_layout_is_caught(tiny_model, tokenizer, monkeypatch):
    from negalign.modeling import segment_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def ignores_layout(module, query, key, value, mask, negalign_layout=None, **kwargs):
        return sdpa_attention_forward(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(segment_attention, "segment_attention_forward", ignores_layout)
    with torch.inference_mode(), pytest.raises(UserError, match="grouped_mask"):
        group_logprobs(tiny_model, _groups(tokenizer.eos_token_id))
    assert tiny_model.config._attn_implementation == "sdpa"


def test_segment_layout_covers_every_real_position_once():
    from negalign.modeling.segment_attention import build_layout

    # Two rows of width 9. Row 0: prompt 3, responses at columns (3, 2) and (5, 4); row 1: prompt 5,
    # one response at (5, 1). Positions are flat: row * 9 + column.
    layout = build_layout([(0, 3), (9, 5)], [(3, 2, 0), (5, 4, 0), (14, 1, 1)], 18, "cpu")
    real = [0, 1, 2, 3, 4, 5, 6, 7, 8] + [9 + c for c in range(6)]
    assert sorted(layout.out_index.tolist()) == real
    assert layout.prompt_mask is not None and layout.prompt_mask.shape == (2, 1, 5, 5)
    # Response 2 (row 1) sees its 5 prompt keys, then only its own first token.
    assert layout.response_kv[2].tolist() == [9, 10, 11, 12, 13, 14, 14, 14, 14]
    assert layout.response_mask[2, 0, 0].tolist() == [True] * 5 + [True, False, False, False]
    # Response 0 (row 0): prompt keys 0-2 valid, padded prompt slots 3-4 not; causal over its own.
    assert layout.response_mask[0, 0, 1].tolist() == [True, True, True, False, False, True, True, False, False]
    # Every softmax row has at least one key (padding queries included).
    assert layout.response_mask.any(-1).all() and layout.prompt_mask.any(-1).all()


def test_each_group_alone_equals_the_batch(tiny_model, tokenizer):
    """Padding and neighbouring groups in the batch must not leak into a group's result."""
    groups = _groups(tokenizer.eos_token_id)
    with torch.inference_mode():
        batch, _ = group_logprobs(tiny_model, groups)
        for i, g in enumerate(groups):
            alone, _ = group_logprobs(tiny_model, [g])
            r = len(g.response_ids)
            torch.testing.assert_close(batch[i, :r], alone[0], atol=1e-5, rtol=1e-6)


def test_eager_attention_matches_naive(tiny_model, tokenizer):
    tiny_model.set_attn_implementation("eager")
    assert tiny_model.config._attn_implementation == "eager"
    groups = _groups(tokenizer.eos_token_id)
    with torch.no_grad():
        naive, _ = group_logprobs(tiny_model, groups, method="naive")
        grouped, _ = group_logprobs(tiny_model, groups)
    torch.testing.assert_close(grouped, naive, atol=1e-5, rtol=1e-6)


def test_inference_mode_gives_same_values_without_graph(tiny_model, tokenizer):
    groups = _groups(tokenizer.eos_token_id)
    with_grad, _ = group_logprobs(tiny_model, groups)
    assert with_grad.requires_grad
    with torch.inference_mode():
        frozen, _ = group_logprobs(tiny_model, groups)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, with_grad.detach(), atol=1e-6, rtol=0)


def test_lora_grouped_equals_naive_and_reference_is_base(tiny_model, tokenizer):
    from negalign.modeling.lora import LoraSpec, apply_lora
    from tiny_models import tiny_llama

    model = apply_lora(tiny_model, LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # a fresh adapter is the identity (B = 0); make it change the model
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(3, 4)
    naive, _, g_naive = _weighted_backward(model, groups, "naive", weights)
    grouped, _, g_grouped = _weighted_backward(model, groups, "grouped", weights, chunk_tokens=5)
    assert g_grouped and all("lora_" in n for n in g_grouped)  # only the adapter trains
    torch.testing.assert_close(grouped, naive, atol=1e-5, rtol=1e-6)
    _assert_grads_close(g_grouped, g_naive, rel=1e-5)

    base = tiny_llama(tokenizer, seed=0)  # same weights as the wrapped model before the adapter
    with torch.inference_mode():
        with model.disable_adapter():
            reference, _ = group_logprobs(model, groups)
        expected, _ = group_logprobs(base, groups, method="naive")
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-6)
    assert (reference - grouped).abs().max() > 1e-2  # the adapter did matter


def test_through_ddp_wrapper(tiny_model, tokenizer, tmp_path):
    """The forward goes through the wrapper (DDP syncs only after its own forward): same numbers."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(3, 4)
    plain, _, g_plain = _weighted_backward(tiny_model, groups, "grouped", weights)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(tiny_model)
        wrapped, _, g_wrapped = _weighted_backward(ddp, groups, "grouped", weights)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(wrapped, plain, atol=1e-6, rtol=0)
    _assert_grads_close({k.removeprefix("module."): v for k, v in g_wrapped.items()}, g_plain, rel=1e-6)


def _without_logits_to_keep(model):
    """The same weights in a causal LM class whose forward rejects logits_to_keep (older models)."""
    from transformers import LlamaForCausalLM

    class NoLogitsToKeep(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            if "logits_to_keep" in kwargs:
                raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
            return super().forward(*args, **kwargs)

    out = NoLogitsToKeep(model.config)
    out.load_state_dict(model.state_dict())
    return out


def test_model_without_logits_to_keep_alone_or_wrapped(tiny_model, tokenizer, tmp_path):
    """Unwrapped, its decoder gives the same numbers; under DDP the bypass would skip the gradient
    sync, so it is an error, not a silent fallback."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    groups = _groups(tokenizer.eos_token_id)
    weights = torch.randn(3, 4)
    old = _without_logits_to_keep(tiny_model)
    expected, _, g_expected = _weighted_backward(tiny_model, groups, "grouped", weights)
    got, _, g_got = _weighted_backward(old, groups, "grouped", weights)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    _assert_grads_close(g_got, g_expected, rel=1e-6)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(UserError, match="does not take logits_to_keep.*bypass the DistributedDataParallel"):
            group_logprobs(DistributedDataParallel(old), groups)
        group_logprobs(DistributedDataParallel(tiny_model), groups)  # a model that takes it is fine
    finally:
        dist.destroy_process_group()


def test_chunked_head_equals_full_logits(tiny_model):
    torch.manual_seed(3)
    head = tiny_model.get_output_embeddings()
    hidden = torch.randn(23, head.in_features, requires_grad=True)
    labels = torch.randint(0, head.out_features, (23,))
    full = head(hidden).log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    (g_full,) = torch.autograd.grad(full.sum(), hidden)
    for chunk in (4, 23, 4096):
        chunked = chunked_label_logprobs(hidden, labels, head, chunk_tokens=chunk)
        (g_chunked,) = torch.autograd.grad(chunked.sum(), hidden)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(g_chunked, g_full, atol=1e-6, rtol=1e-5)


def _saved_sizes(model, fn):
    """numel of every tensor autograd saves for backward while `fn()` runs (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    sizes = []

    def pack(t):
        if t.data_ptr() not in params:
            sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sizes, out


def test_training_keeps_no_vocab_sized_activation(tiny_model, tokenizer):
    """With gradients on, autograd holds no logits beyond one chunk: with several chunks each is recomputed."""
    groups = _groups(tokenizer.eos_token_id)
    vocab = tiny_model.config.vocab_size
    largest, (logps, lengths) = _saved_sizes(tiny_model, lambda: group_logprobs(tiny_model, groups, chunk_tokens=8))
    n_tokens = int(lengths.sum())
    assert n_tokens > 16 and max(largest) < 8 * vocab
    logps.sum().backward()  # and backward still works through the recomputed chunks


def test_single_chunk_keeps_at_most_one_chunk_of_logits(tiny_model, tokenizer):
    """When every position fits in one chunk, its logits are kept (no recompute), and nothing larger."""
    groups = _groups(tokenizer.eos_token_id)
    vocab = tiny_model.config.vocab_size
    largest, (logps, lengths) = _saved_sizes(tiny_model, lambda: group_logprobs(tiny_model, groups, chunk_tokens=4096))
    n_tokens = int(lengths.sum())
    assert max(largest) <= n_tokens * vocab
    logps.sum().backward()


def test_chunk_size_does_not_change_results(tiny_model, tokenizer):
    groups = _groups(tokenizer.eos_token_id)
    with torch.no_grad():
        one, _ = group_logprobs(tiny_model, groups, chunk_tokens=1)
        big, _ = group_logprobs(tiny_model, groups, chunk_tokens=100_000)
    torch.testing.assert_close(one, big, atol=1e-5, rtol=1e-6)


def test_bf16_autocast_runs_and_is_close(tiny_model, tokenizer):
    groups = _groups(tokenizer.eos_token_id)
    with torch.no_grad():
        fp32, lengths = group_logprobs(tiny_model, groups)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grouped, _ = group_logprobs(tiny_model, groups)
        naive, _ = group_logprobs(tiny_model, groups, method="naive")
        grouped.sum().backward()
    assert grouped.dtype == torch.float32 and torch.isfinite(grouped).all()
    per_token = lengths.clamp_min(1)
    # bf16 has ~3 significant digits: compare per-token averages with a loose tolerance.
    assert ((grouped.detach() - fp32) / per_token).abs().max() < 0.05
    assert ((grouped.detach() - naive.detach()) / per_token).abs().max() < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in tiny_model.parameters() if p.requires_grad)


def test_softcapped_model_matches_naive():
    """Gemma 2 soft-caps its logits after the head: the chunked head must apply the same cap."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64,
                       final_logit_softcapping=2.0)
    model = Gemma2ForCausalLM(cfg)
    groups = _groups(eos=1, vocab=500)
    with torch.no_grad():
        naive, _ = group_logprobs(model, groups, method="naive")
        grouped, _ = group_logprobs(model, groups)
    torch.testing.assert_close(grouped, naive, atol=1e-5, rtol=1e-6)
    long = [Group([1] * 60, [[2] * 10])]
    with pytest.raises(UserError, match="sliding window"):
        group_logprobs(model, long)


def test_logits_transform_from_config():
    from types import SimpleNamespace

    assert logits_transform(SimpleNamespace()) is None
    x = torch.tensor([-100.0, 0.5, 100.0])
    capped = logits_transform(SimpleNamespace(final_logit_softcapping=10.0))(x)
    torch.testing.assert_close(capped, torch.tanh(x / 10) * 10)
    scaled = logits_transform(SimpleNamespace(logit_scale=0.5, logits_scaling=4.0))(x)
    torch.testing.assert_close(scaled, x * 0.5 / 4.0)


def test_block_mask_structure():
    # Row: prompt of 2, response 1 of 2, response 2 of 1, one padding slot.
    mask = block_attention_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # response 2 sees the prompt, not response 1
        [0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]


def test_edge_cases_and_errors(tiny_model):
    logps, lengths = group_logprobs(tiny_model, [])
    assert logps.shape == (0, 0) and lengths.shape == (0, 0)
    logps, lengths = group_logprobs(tiny_model, [Group([1, 2], []), Group([3], [[]])])
    assert logps.shape == (2, 1) and logps.eq(0).all() and lengths.eq(0).all()
    with pytest.raises(UserError, match="empty prompt"):
        group_logprobs(tiny_model, [Group([], [[1, 2]])])
    with pytest.raises(UserError, match="method"):
        group_logprobs(tiny_model, [Group([1], [[2]])], method="fast")
    with pytest.raises(UserError, match="chunk_tokens"):
        group_logprobs(tiny_model, [Group([1], [[2]])], chunk_tokens=0)


def test_cuda_matches_cpu(tiny_model, tokenizer):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    groups = _groups(tokenizer.eos_token_id)
    with torch.no_grad():
        cpu, _ = group_logprobs(tiny_model, groups)
    tiny_model.cuda()
    weights = torch.randn(3, 4, device="cuda")
    naive, _, g_naive = _weighted_backward(tiny_model, groups, "naive", weights)
    grouped, lengths, g_grouped = _weighted_backward(tiny_model, groups, "grouped", weights)
    assert grouped.device.type == "cuda" and lengths.device.type == "cuda"
    torch.testing.assert_close(grouped.cpu(), cpu, atol=1e-3, rtol=1e-5)  # other kernels, maybe TF32
    torch.testing.assert_close(grouped, naive, atol=1e-3, rtol=1e-5)
    _assert_grads_close(g_grouped, g_naive, rel=1e-3)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf16, _ = group_logprobs(tiny_model, groups)
    assert ((bf16 - grouped) / lengths.clamp_min(1)).abs().max() < 0.05
