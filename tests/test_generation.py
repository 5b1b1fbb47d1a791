"""Generation backends on the tiny model: transformers, the chat server, the factory, vLLM's gate."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch

from negalign.base.errors import UserError, located
from negalign.data.chat import encode_prompt
from negalign.generation.base import GenerationConfig
from negalign.generation.factory import checked_spec, make_generator, parse_spec
from negalign.generation.openai_backend import OpenAIChatGenerator
from negalign.generation.server import serve
from negalign.generation.transformers_backend import GumbelSampler, TransformersGenerator, top_p_mask

CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours of the sea."}],
    [{"role": "user", "content": "Write a long story about a cat who learns to fly over the mountains."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "What is a rainbow?"}],
]
SAMPLE = GenerationConfig(n=3, temperature=1.0, max_new_tokens=6, seed=7)


def manual_greedy(model, tokenizer, conv, max_new_tokens):
    """Reference greedy decode: full forward each step, no cache, no padding."""
    ids = encode_prompt(tokenizer, conv)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + out])).logits[0, -1]
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_shapes_order_and_stats(tiny_model, tokenizer):
    gen = TransformersGenerator(tiny_model, tokenizer, batch_size=4)
    out = gen.generate(CONVS, SAMPLE)
    assert len(out) == len(CONVS) and all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in out)
    # results come back in input order: each conversation alone gives the same samples
    for conv, replies in zip(CONVS, out):
        assert gen.generate([conv], SAMPLE)[0] == replies
    gen.generate(CONVS, SAMPLE)
    stats = gen.last_stats
    assert stats.sequences == 15 and 0 < stats.tokens <= 15 * 6 and stats.seconds > 0
    assert gen.generate([], SAMPLE) == [] and gen.last_stats.tokens == 0


def test_greedy_matches_manual_decode(tiny_model, tokenizer):
    gen = TransformersGenerator(tiny_model, tokenizer, batch_size=8)
    out = gen.generate(CONVS, GenerationConfig(n=2, temperature=0, max_new_tokens=8))
    for k in (0, 2):  # the shortest prompt (most left padding) and the longest
        want = manual_greedy(tiny_model, tokenizer, CONVS[k], 8)
        assert out[k] == [want, want]


def test_seed_determinism_independent_of_batching(tiny_model, tokenizer):
    a = TransformersGenerator(tiny_model, tokenizer, batch_size=32).generate(CONVS, SAMPLE)
    b = TransformersGenerator(tiny_model, tokenizer, batch_size=2).generate(CONVS[::-1], SAMPLE)[::-1]
    assert a == b
    c = TransformersGenerator(tiny_model, tokenizer).generate(CONVS, GenerationConfig(**{**vars(SAMPLE), "seed": 8}))
    assert c != a
    assert len({t for r in a for t in r}) > 5  # samples of one prompt differ from each other


def test_batches_cut_at_rows_or_padded_prompt_tokens(tiny_model, tokenizer):
    gen = TransformersGenerator(tiny_model, tokenizer, batch_size=4, max_batch_tokens=100)
    rows = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1)]
    lengths = [10, 20, 40, 200]
    # 4 rows; then prompt 2 (40 tokens, 1 prompt), but adding prompt 3 would pad 2 x 200 > 100: alone
    assert list(gen._batches(rows, lengths)) == [rows[:4], [(2, 0)], [(3, 0), (3, 1)]]
    long = [[{"role": "user", "content": "word " * 300}]]
    a = TransformersGenerator(tiny_model, tokenizer, batch_size=32).generate(CONVS + long, SAMPLE)
    b = TransformersGenerator(tiny_model, tokenizer, batch_size=32, max_batch_tokens=64).generate(CONVS + long, SAMPLE)
    assert a == b


def test_model_state_restored(tiny_model, tokenizer):
    tiny_model.train()
    assert tiny_model.config.use_cache is False
    TransformersGenerator(tiny_model, tokenizer).generate(CONVS[:1], SAMPLE)
    assert tiny_model.training and tiny_model.config.use_cache is False


def test_bad_config_is_user_error(tiny_model, tokenizer):
    gen = TransformersGenerator(tiny_model, tokenizer)
    for field, cfg in [("n", GenerationConfig(n=0)), ("temperature", GenerationConfig(temperature=-1)),
                       ("top_p", GenerationConfig(top_p=0)), ("max_new_tokens", GenerationConfig(max_new_tokens=0))]:
        with pytest.raises(UserError, match=f"field '{field}'"):
            gen.generate(CONVS[:1], cfg)


def test_top_p_mask_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    assert top_p_mask(logits, 0.8).tolist() == [[True, False, True, False]]
    assert top_p_mask(logits, 0.81).tolist() == [[False, False, True, False]]
    assert top_p_mask(logits, 0.1).tolist() == [[True, False, True, True]]


def test_top_p_candidate_shortcut_equals_full_sort():
    torch.manual_seed(1)
    peaked = torch.randn(6, 5000) * 6  # nucleus well inside the top 64
    flat = torch.randn(6, 5000) * 0.1  # nucleus far larger: falls back to the full sort
    mixed = torch.cat([peaked[:3], flat[:3]])[[0, 3, 1, 4, 2, 5]]  # only some rows fall back
    for logits in (peaked, flat, mixed):
        assert torch.equal(top_p_mask(logits, 0.9, candidates=64), top_p_mask(logits, 0.9, candidates=5000))


def test_top_p_sampling_runs_through_generate(tiny_model, tokenizer):
    cfg = GenerationConfig(n=2, temperature=0.7, top_p=0.5, max_new_tokens=3, seed=1)
    gen = TransformersGenerator(tiny_model, tokenizer)
    out = gen.generate(CONVS[:2], cfg)
    assert out == gen.generate(CONVS[:2], cfg) and all(len(r) == 2 for r in out)


def test_gumbel_sampler_draws_from_tempered_top_p_distribution():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = torch.log(probs).expand(4000, 4)
    draws = GumbelSampler(list(range(4000)), temperature=0.5, top_p=0.95)(None, logits).argmax(-1)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    tempered = probs[:3] ** 2 / (probs[:3] ** 2).sum()  # T = 0.5; top-p 0.95 drops the 0.1 token
    assert freq[3] == 0
    assert torch.allclose(freq[:3], tempered, atol=0.03)


def test_server_round_trip_with_openai_client(tiny_model, tokenizer):
    local = TransformersGenerator(tiny_model, tokenizer, batch_size=8)
    want = local.generate(CONVS[:3], SAMPLE)
    with serve(local, model_name="tiny") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        models = json.loads(urllib.request.urlopen(server.url + "/models", timeout=10).read())
        assert [m["id"] for m in models["data"]] == ["tiny"]
        remote = OpenAIChatGenerator(server.url, "tiny", concurrency=2)
        assert remote.generate(CONVS[:3], SAMPLE) == want  # same seeds, same samples over HTTP
        with pytest.raises(UserError, match="HTTP 400.*'n'"):
            remote.generate(CONVS[:1], GenerationConfig(n=10_000))


def test_server_rejects_bad_requests(tiny_model, tokenizer):
    with serve(TransformersGenerator(tiny_model, tokenizer)) as server:
        for body, param in [({"messages": []}, "messages"),
                            ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
                            ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
                            ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
                            ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, "model")]:
            req = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == (404 if param == "model" else 400)
            assert json.loads(e.value.read())["error"]["param"] == param


def test_server_with_the_official_openai_client(tiny_model, tokenizer):
    """What people run against an OpenAI-compatible server: list models, a plain call, streaming."""
    openai = pytest.importorskip("openai")
    local = TransformersGenerator(tiny_model, tokenizer, batch_size=8)
    cfg = GenerationConfig(n=1, temperature=0.7, max_new_tokens=8, seed=3)
    want = local.generate(CONVS[1:2], cfg)[0][0]
    prompt_tokens = len(encode_prompt(tokenizer, CONVS[1]))
    with serve(local, model_name="smol") as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list()] == ["smol"]
        out = client.chat.completions.create(model="smol", messages=CONVS[1], temperature=0.7, max_tokens=8, seed=3)
        assert out.model == "smol" and out.choices[0].message.content == want
        assert out.usage.prompt_tokens == prompt_tokens
        assert 0 < out.usage.completion_tokens <= 8
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        chunks = list(client.chat.completions.create(model="smol", messages=CONVS[1], temperature=0.7, max_tokens=8,
                                                     seed=3, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == want and len(chunks) >= 3
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == prompt_tokens
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=CONVS[0])


def test_server_bearer_token(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setenv("NEGALIGN_SERVE_KEY", "s3cret-token")
    gen = TransformersGenerator(tiny_model, tokenizer)
    with serve(gen, api_key_env="NEGALIGN_SERVE_KEY") as server:
        assert "s3cret" not in repr(server)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        with pytest.raises(UserError, match="HTTP 401"):
            OpenAIChatGenerator(server.url, "negalign").generate(CONVS[:1], SAMPLE)
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        with pytest.raises(UserError, match="HTTP 401"):
            OpenAIChatGenerator(server.url, "negalign").generate(CONVS[:1], SAMPLE)
        ok = OpenAIChatGenerator(server.url, "negalign", api_key_env="NEGALIGN_SERVE_KEY")
        assert len(ok.generate(CONVS[:1], SAMPLE)[0]) == 3
    monkeypatch.delenv("NEGALIGN_SERVE_KEY")
    with pytest.raises(UserError, match="api_key_env"):
        serve(gen, api_key_env="NEGALIGN_SERVE_KEY")


def test_factory_reuses_loaded_model(tiny_model, tokenizer):
    gen = make_generator({"backend": "transformers", "batch_size": 4}, model=tiny_model, tokenizer=tokenizer)
    assert isinstance(gen, TransformersGenerator) and gen.model is tiny_model and gen.batch_size == 4
    auto = make_generator("auto", model=tiny_model, tokenizer=tokenizer)  # in-memory model: never vLLM
    assert isinstance(auto, TransformersGenerator) and auto.model is tiny_model


def test_factory_openai_and_errors(tiny_model, tokenizer):
    gen = make_generator({"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "judge",
                          "api_key_env": "JUDGE_KEY", "max_retries": 0})
    assert isinstance(gen, OpenAIChatGenerator) and gen.model == "judge" and gen.api_key_env == "JUDGE_KEY"
    assert parse_spec("openai:qwen@http://h:8000/v1") == {"backend": "openai", "model": "qwen",
                                                          "base_url": "http://h:8000/v1"}
    with pytest.raises(UserError, match="cfg.yaml: field 'backend'"):
        make_generator({"backend": "tgi"}, where="cfg.yaml")
    with pytest.raises(UserError, match="field 'base_url'"):
        make_generator({"backend": "transformers", "base_url": "http://x"}, model=tiny_model, tokenizer=tokenizer)
    with pytest.raises(UserError, match="field 'base_url'"):
        make_generator({"backend": "openai", "model": "m"})


def test_factory_errors_name_the_config_key():
    # the spec's own config key prefixes its keys, for checks before and inside the backend alike
    with pytest.raises(UserError, match=r"^run.yaml: field 'critique.teacher.threds': unknown key"):
        checked_spec({"backend": "llamacpp", "threds": 2}, where="run.yaml", field="critique.teacher")
    with pytest.raises(UserError, match=r"^run.yaml: field 'critique.teacher.backend': expected 'openai:"):
        checked_spec("openai:nourl", where="run.yaml", field="critique.teacher")
    with pytest.raises(UserError, match=r"^run.yaml: field 'sample.model': required for backend 'openai'"):
        make_generator({"backend": "openai", "base_url": "http://h/v1"}, where="run.yaml", field="sample")
    assert checked_spec("llamacpp:default", field="x") == {"backend": "llamacpp", "model": "default"}


def test_located_keeps_errors_that_name_their_own_file():
    with pytest.raises(UserError, match=r"^data.jsonl:3: field 'prompt': bad$"):
        with located("run.yaml", "data"):
            raise UserError("bad", path="data.jsonl", line=3, field="prompt")
    with pytest.raises(UserError, match=r"^run.yaml: field 'rdpo.scorer': bad$"):
        with located("run.yaml", "rdpo"):
            raise UserError("bad", field="scorer")
    with pytest.raises(UserError, match=r"^bad$"):
        with located(None):
            raise UserError("bad")


def test_vllm_gate_without_gpu(monkeypatch):
    import negalign.generation.vllm_backend as vb

    monkeypatch.setattr(vb.importlib.util, "find_spec", lambda name: None)
    assert vb.vllm_available() is False
    with pytest.raises(UserError, match="field 'backend'.*vllm"):
        vb.VLLMGenerator("default")
    with pytest.raises(UserError, match="field 'backend'"):
        make_generator("vllm")
