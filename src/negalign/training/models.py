"""The models a run's config names, on this process's device: the frozen reference and the policy."""

from __future__ import annotations

from negalign.base import distributed
from negalign.config import Config
from negalign.modeling.loading import load_model


def device() -> str:
    return str(distributed.device())  # cuda:LOCAL_RANK under a launcher, so ranks do not share GPU 0


def load_plain(cfg: Config, spec: str | None = None, precision: str = "fp32"):
    """(model, tokenizer) of `spec` (default: the run's model) without an adapter: a reference, a sampler or
    a teacher. precision 'bf16' (or 'auto' where bf16 is fast) loads bf16 weights (inference needs no fp32
    master copy), else fp32."""
    from negalign.modeling.precision import torch_dtype

    dtype = torch_dtype(precision, device())
    return load_model(spec or cfg.model.name, device=device(), trust_remote_code=cfg.model.trust_remote_code,
                      allow_pickle=cfg.model.allow_pickle, dtype=dtype)


def load_policy(cfg: Config):
    """(model, tokenizer) to train: the run's model, with a LoRA adapter when model.lora.enabled."""
    lora = cfg.model.lora if cfg.model.lora.enabled else None
    return load_model(cfg.model.name, device=device(), lora=lora, trust_remote_code=cfg.model.trust_remote_code,
                      allow_pickle=cfg.model.allow_pickle)
