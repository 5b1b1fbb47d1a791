"""The llama.cpp backend on the bundled SmolLM2 GGUF (98 MB, loads in under a second in llama.cpp).

Skipped where llama-cpp-python is not installed (`make setup-llamacpp`; CI installs it).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from negalign.base.errors import UserError
from negalign.data.chat import encode_prompt
from negalign.generation.base import GenerationConfig
from negalign.generation.factory import make_generator
from negalign.modeling.loading import default_gguf_path, gguf_file

needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python not installed (make setup-llamacpp)")

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours of the sea."}],
    [{"role": "user", "content": "Write a short poem about a cat."}],
]


@pytest.fixture(scope="module")
def gen():
    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    return LlamaCppGenerator("default", batch_size=8, threads=2)


@needs_llamacpp
def test_the_bundled_model_runs_from_a_q8_copy_written_once(tmp_path, monkeypatch):
    from negalign.generation.llamacpp_backend import runnable_gguf

    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path))
    q8 = runnable_gguf(default_gguf_path())
    assert q8.parent == tmp_path / "models" and q8.name.endswith(".Q8_0.gguf")
    assert q8.stat().st_size > 1.3 * default_gguf_path().stat().st_size  # 8.5 bits a weight, not ~5
    stamp = q8.stat().st_mtime_ns
    assert runnable_gguf(default_gguf_path()) == q8 and q8.stat().st_mtime_ns == stamp  # not rewritten
    assert list((tmp_path / "models").iterdir()) == [q8]  # no temporary file left behind
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    assert runnable_gguf(other) == other  # any other file runs as it is


def test_gguf_file_names_what_it_runs(tmp_path):
    assert gguf_file("default") == default_gguf_path()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert gguf_file(str(gguf)) == gguf
    with pytest.raises(UserError, match="GGUF files only"):
        gguf_file(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        gguf_file(str(tmp_path / "missing.gguf"))


def test_missing_package_is_a_clear_error(monkeypatch):
    from negalign.generation import llamacpp_backend

    monkeypatch.setattr(llamacpp_backend, "llamacpp_available", lambda: False)
    with pytest.raises(UserError, match=r"negalign\[llamacpp\]"):
        llamacpp_backend.LlamaCppGenerator("default")


def test_spec_shorthand():
    from negalign.generation.factory import parse_spec
    from negalign.recipes.critique import CritiqueConfig, teacher_spec

    assert parse_spec("llamacpp:qwen2.5-coder-1.5b") == {"backend": "llamacpp", "model": "qwen2.5-coder-1.5b"}
    assert parse_spec("llamacpp") == {"backend": "llamacpp"}
    assert teacher_spec(CritiqueConfig(teacher="llamacpp"), "default") == {"backend": "llamacpp", "model": "default"}


def test_factory_rejects_keys_it_does_not_use():
    with pytest.raises(UserError, match="unknown key"):
        make_generator({"backend": "llamacpp", "model": "default", "dtype": "bf16"})


@needs_llamacpp
def test_first_token_distribution_matches_the_transformers_model(gen):
    """llama.cpp on the Q8_0 copy of the Q4_1 file and transformers on its dequantised weights are nearly the
    same model (llama.cpp rounds activations to 8 bits inside its matmuls)."""
    from negalign.modeling.loading import load_model

    model, tok = load_model("default")
    for conv, ours in zip(CONVS, gen.next_token_logits(CONVS)):
        ids = encode_prompt(tok, conv)
        assert ids == encode_prompt(gen.tokenizer, conv)  # same prompt tokens from the GGUF's tokenizer
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1]
        kl = torch.sum(ref.softmax(-1) * (ref.log_softmax(-1) - ours.log_softmax(-1)))
        assert float(kl) < 0.03, float(kl)  # measured 0.004-0.012 nats; near-ties may swap the argmax
        assert set(ours.topk(5).indices.tolist()) & set(ref.topk(3).indices.tolist()) == set(ref.topk(3).indices.tolist())


@needs_llamacpp
def test_greedy_replies_end_at_the_end_of_turn(gen):
    replies = gen.generate(CONVS, GenerationConfig(n=2, temperature=0, max_new_tokens=48))
    assert [len(r) for r in replies] == [2, 2, 2]
    assert all(r[0] == r[1] for r in replies)  # greedy: decoded once, copied
    assert "blue" in replies[1][0].lower(), replies[1][0]  # "1. Blue\n2. Red\n3. Gold"
    assert all("<|im_end|>" not in r[0] and r[0].strip() for r in replies)
    assert 48 < gen.last_stats.tokens < 3 * 48 and gen.last_stats.sequences == 3  # the brief reply stopped


@needs_llamacpp
def test_samples_are_seeded_per_sample(gen):
    config = GenerationConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=5)
    first = gen.generate(CONVS, config)
    assert gen.generate(CONVS, config) == first
    assert len({*first[2]}) > 1  # three draws of a poem differ
    # a sample depends on its own prompt, not on which prompts share its call
    assert gen.generate(CONVS[2:], config)[0] == first[2]
    # nor on when it was admitted: with 3 slots each prompt's rows wait for the previous prompt's to finish
    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    assert LlamaCppGenerator("default", batch_size=3, threads=2).generate(CONVS, config) == first
    other = gen.generate(CONVS, GenerationConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=6))
    assert other != first


@needs_llamacpp
def test_copied_prompt_cache_continues_like_a_prefilled_one(gen):
    """Samples 2..n start from a copy of sample 1's prompt cache; near-greedy draws show it is intact."""
    greedy = gen.generate(CONVS, GenerationConfig(n=1, temperature=0, max_new_tokens=24))
    cold = gen.generate(CONVS, GenerationConfig(n=4, temperature=1e-4, top_p=1.0, max_new_tokens=24, seed=1))
    for g, samples in zip(greedy, cold):
        assert samples == g * 4


@needs_llamacpp
def test_context_grows_for_a_longer_call(gen):
    short = GenerationConfig(n=1, temperature=0, max_new_tokens=8)
    alone = gen.generate(CONVS[:1], short)
    long_conv = [{"role": "user", "content": "Repeat after me: " + "the quick brown fox " * 150}]
    replies = gen.generate([long_conv, CONVS[0]], short)
    assert gen._ctx_per_row >= len(encode_prompt(gen.tokenizer, long_conv)) + 8
    assert replies[1] == alone[0]  # the short prompt decodes as it does alone


@needs_llamacpp
def test_a_next_turn_that_grows_the_context_keeps_its_cached_prefix():
    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    greedy = GenerationConfig(n=1, temperature=0, max_new_tokens=16)
    gen = LlamaCppGenerator("default", batch_size=4, threads=2, context_per_row=256)
    first = gen.generate(CONVS, greedy)
    width = gen._ctx_per_row
    long_question = "Now list, for each word of this text, its length: " + "the quick brown fox " * 60
    turn2 = [c + [{"role": "assistant", "content": r[0]}, {"role": "user", "content": long_question}]
             for c, r in zip(CONVS, first)]
    again = gen.generate(turn2, greedy)
    assert gen._ctx_per_row > width  # grown, and the turn-1 caches moved into the larger context
    assert gen.last_reused_tokens >= sum(len(encode_prompt(gen.tokenizer, c)) for c in CONVS)
    # the same two turns in a context that had room from the start (a fresh prefill of turn 2 may
    # differ by float rounding, enough to flip a near tie): moving the caches changed nothing
    roomy = LlamaCppGenerator("default", batch_size=4, threads=2, context_per_row=1024)
    assert roomy.generate(CONVS, greedy) == first
    assert roomy.generate(turn2, greedy) == again and roomy.last_reused_tokens == gen.last_reused_tokens


@needs_llamacpp
def test_next_turn_prefills_only_its_new_tokens(gen):
    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    greedy = GenerationConfig(n=1, temperature=0, max_new_tokens=24)
    first = gen.generate(CONVS, greedy)
    turn2 = [c + [{"role": "assistant", "content": r[0]}, {"role": "user", "content": "Say it in one sentence."}]
             for c, r in zip(CONVS, first)]
    cached = gen.next_token_logits(turn2)
    # each turn-2 prompt starts with its turn-1 prompt and (re-tokenised) reply: all of that came from the cache
    assert gen.last_reused_tokens >= sum(len(encode_prompt(gen.tokenizer, c)) for c in CONVS)
    fresh = LlamaCppGenerator("default", batch_size=8, threads=2)
    prefilled = fresh.next_token_logits(turn2)
    assert fresh.last_reused_tokens == 0
    # the same next-token distributions up to float rounding (a cached prefix was computed in other batches
    # than a fresh prefill, so greedy replies can still part at a near tie)
    kl = torch.sum(prefilled.softmax(-1) * (prefilled.log_softmax(-1) - cached.log_softmax(-1)), -1)
    assert float(kl.max()) < 1e-3, kl.tolist()


@needs_llamacpp
@pytest.mark.slow
def test_sample_stage_draws_anchors_with_llamacpp(tmp_path):
    """`negalign sample` with sample.backend: llamacpp on the bundled model and prompts, resumable as ever."""
    from negalign.config import config_from_dict
    from negalign.recipes import d2o

    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"source": "bundled", "limit": 3, "max_negatives_per_prompt": 1},
        "sample": {"backend": "llamacpp", "k": 2, "max_new_tokens": 16, "batch_size": 8},
    })
    anchors = d2o.stage_sample(cfg, log=lambda *_: None)
    assert len(anchors) == 3 and all(len(a) == 2 and all(isinstance(x, str) for x in a) for a in anchors.values())
    assert sum(bool(x.strip()) for a in anchors.values() for x in a) >= 5
    lines = []
    assert d2o.stage_sample(cfg, log=lines.append) == anchors  # the second run resumes: nothing drawn
    assert any("already have anchors" in line for line in lines)


@needs_llamacpp
def test_factory_builds_it_with_every_key_it_names():
    from negalign.generation.llamacpp_backend import LlamaCppGenerator

    g = make_generator({"backend": "llamacpp", "model": "default", "batch_size": 4, "threads": 1,
                        "prefill_tokens": 64, "context_per_row": 512})
    assert isinstance(g, LlamaCppGenerator) and (g.batch_size, g.threads, g.context_per_row) == (4, 1, 512)


def test_extra_buffers_are_off_on_a_cpu_with_amx():
    # llama.cpp's AMX kernels segfaulted in the first decode on a Sapphire Rapids VM; a pure function, no library
    from negalign.generation.llamacpp_backend import uses_extra_buffers

    assert uses_extra_buffers({"avx2", "fma", "f16c"})
    assert uses_extra_buffers({"avx512f", "avx512_bf16", "avx512_vnni"})
    assert not uses_extra_buffers({"avx512f", "amx_tile", "amx_int8", "amx_bf16"})
    assert not uses_extra_buffers({"avx2", "amx_int8"})
