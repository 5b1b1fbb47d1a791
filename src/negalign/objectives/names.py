"""The training methods by name, without importing torch: config checks run before any heavy import.

The registry (negalign.objectives.registry) defines one objective per name here, in this order.
"""

from __future__ import annotations

METHODS = ("d2o", "d2o_no_anchors", "npo", "simnpo", "ga", "dpo_instance", "ipo_instance", "sft_anchors",
           "kto_negatives", "dpo_pairs", "ipo_pairs")

# Methods whose loss uses a group's anchors when it has no negative, so hold groups (data.hold: benign
# prompts, the initial model's answers as anchors) mean something to them: D2O's anchor term, SFT, and
# DPO on pairs (rDPO), where a hold row's loss is D2O's anchor term (losses.hold_loss).
HOLD_METHODS = ("d2o", "sft_anchors", "dpo_pairs")


def unknown_method_message(name: str) -> str:
    """The one wording for a method name that is not in METHODS."""
    return f"unknown method {name!r}; choose from {', '.join(METHODS)}"
