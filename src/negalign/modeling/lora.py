"""LoRA: the adapter settings (also the config's `model.lora` section) and applying them with peft.

Importing this module is cheap (peft and torch load only when an adapter is applied), so the
config can use LoraSpec as its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from negalign.base.errors import UserError


@dataclass
class LoraSpec:
    enabled: bool = False  # read by callers that decide whether to apply it; apply_lora ignores it
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def apply_lora(model, spec: LoraSpec):
    from peft import LoraConfig, get_peft_model

    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    targets = [t for t in spec.target_modules if t in present]
    if not targets:
        raise UserError(f"none of the LoRA target modules {list(spec.target_modules)} exist in the model",
                        field="lora.target_modules")
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
