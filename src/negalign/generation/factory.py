"""Build a ChatGenerator from a config entry: the one factory for samplers, teachers and judges.

Spec, any of:
- a dict such as {"backend": "transformers", "model": "default", "batch_size": 32}; without a
  "backend" it is "openai" when a "base_url" is given ({"base_url": ..., "model": ...}), else "auto";
- a string: a backend name "transformers" | "vllm" | "llamacpp" | "auto" | "openai", "openai:MODEL@BASE_URL",
  "llamacpp:MODEL" (a GGUF model: "default", "qwen2.5-coder-1.5b" or a .gguf path),
  a bare http(s) URL (that server, model name "default"), or else a model spec ("default", a
  folder, a .gguf, a hub id) generated with locally by transformers;
- an object that already has `generate` (a ChatGenerator), returned as it is.
"""

from __future__ import annotations

from typing import Any

from negalign.base.errors import UserError, located
from negalign.generation.base import ChatGenerator

BACKENDS = ("transformers", "vllm", "llamacpp", "openai", "auto")

# Keys each backend accepts besides "backend" (the others are named in the error).
_KEYS = {
    "transformers": {"model", "batch_size", "progress"},
    "vllm": {"model", "dtype", "gpu_memory_utilization", "seed", "max_model_len"},
    "llamacpp": {"model", "batch_size", "threads", "prefill_tokens", "context_per_row"},
    "openai": {"model", "base_url", "api_key_env", "timeout", "max_retries", "requests_per_minute",
               "concurrency", "extra_body", "backoff", "backoff_max"},
}
_KEYS["auto"] = _KEYS["transformers"] | _KEYS["vllm"]


def parse_spec(spec: str | dict) -> dict:
    """The dict form of a spec (a copy); string shorthands expanded, a server's backend inferred."""
    if isinstance(spec, dict):
        spec = dict(spec)
        if "backend" not in spec and "base_url" in spec:
            spec["backend"] = "openai"
        return spec
    if not isinstance(spec, str) or not spec:
        raise UserError(f"must be a backend name, a model spec or a mapping, got {spec!r}", field="backend")
    if spec.startswith(("http://", "https://")):
        return {"backend": "openai", "base_url": spec, "model": "default"}
    if spec.startswith("openai:"):
        model, sep, url = spec[len("openai:"):].partition("@")
        if not sep or not model or not url:
            raise UserError(f"expected 'openai:MODEL@BASE_URL', got {spec!r}", field="backend")
        return {"backend": "openai", "model": model, "base_url": url}
    if spec.startswith("llamacpp:") and spec != "llamacpp:":
        return {"backend": "llamacpp", "model": spec[len("llamacpp:"):]}
    if spec in BACKENDS:
        return {"backend": spec}
    return {"backend": "transformers", "model": spec}


def checked_spec(spec: Any, *, where: str | None = None, field: str | None = None) -> dict:
    """The dict form of `spec` once its backend and key names are known good; for config-time checks.

    Errors name `where` (a config file) and the key under `field` (the spec's own config key, e.g.
    "critique.teacher"), so a typo fails when the config is read, not after hours of other stages.
    """
    with located(where, field):
        spec = parse_spec(spec)
        backend = spec.get("backend", "auto")
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}", field="backend")
        for key in spec:
            if key != "backend" and key not in _KEYS[backend]:
                raise UserError(f"unknown key for backend {backend!r}; known: {sorted(_KEYS[backend])}", field=key)
    return spec


def make_generator(spec: Any, *, model=None, tokenizer=None, where: str | None = None,
                   field: str | None = None) -> ChatGenerator:
    """A ChatGenerator for `spec` (see the module docstring); errors name `where` and `field` (see checked_spec).

    A loaded `model` (and `tokenizer`) is reused by the transformers backend, never copied;
    with one given, "auto" stays on transformers, since vLLM would load the weights from disk
    and miss any in-memory changes. The vllm, llamacpp and openai backends ignore `model`
    ("auto" never picks llamacpp: its samples come from the GGUF file, not the model in memory).
    """
    if hasattr(spec, "generate"):
        return spec
    spec = checked_spec(spec, where=where, field=field)
    with located(where, field):
        return _build(spec, model, tokenizer)


def _build(spec: dict, model, tokenizer) -> ChatGenerator:
    backend = spec.pop("backend", "auto")
    if backend == "auto":
        from negalign.generation.vllm_backend import vllm_available

        backend = "vllm" if model is None and vllm_available() else "transformers"
        spec = {k: v for k, v in spec.items() if k in _KEYS[backend]}
    if backend == "transformers":
        return _transformers(spec, model, tokenizer)
    if backend == "vllm":
        from negalign.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(spec.pop("model", "default"), tokenizer=tokenizer, **spec)
    if backend == "llamacpp":
        from negalign.generation.llamacpp_backend import LlamaCppGenerator

        return LlamaCppGenerator(spec.pop("model", "default"), **spec)
    from negalign.generation.openai_backend import OpenAIChatGenerator

    for key in ("base_url", "model"):
        if not spec.get(key):
            raise UserError("required for backend 'openai'", field=key)
    return OpenAIChatGenerator(spec.pop("base_url"), spec.pop("model"), **spec)


def _transformers(spec: dict, model, tokenizer):
    from negalign.generation.transformers_backend import TransformersGenerator
    from negalign.modeling.loading import load_model, load_tokenizer

    name = spec.pop("model", "default")
    if model is None:
        model, loaded_tok = load_model(name)
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    elif tokenizer is None:
        tokenizer = load_tokenizer(name)
    return TransformersGenerator(model, tokenizer, **spec)
