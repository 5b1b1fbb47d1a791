"""One entry point the training loop calls for every method: compute_objective(name, logps, hp).

The loop fills a :class:`GroupLogps` from its forward passes (and the reference cache), picks a
method by name from :data:`OBJECTIVES`, and gets back the per-example loss [B] plus metrics as
python floats. Pairwise methods ("dpo_pairs", "ipo_pairs": DPO on human pairs, rDPO) reuse the
same container: the chosen response sits in the anchor slot with K = 1 and the rejected one in
the negative slot; ``label`` holds rDPO's soft label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from negalign.base.errors import UserError
from negalign.objectives import losses
from negalign.objectives.names import unknown_method_message

__all__ = ["GroupLogps", "Objective", "OBJECTIVES", "DEFAULT_HP", "compute_objective"]


@dataclass
class GroupLogps:
    """Summed sequence log-probs of a batch of B groups (one negative and up to K anchors each).

    policy_anchor    [B, K] float   policy log pi(y_i|x) of the anchors (K may be 0)
    ref_anchor       [B, K] | None  reference log pi_r-(y_i|x); None for reference-free methods
    anchor_mask      [B, K] bool    True where an anchor exists (groups may have fewer than K)
    anchor_lengths   [B, K]         token counts of the anchors
    policy_negative  [B]            policy log pi(y_l|x) of the negative
    ref_negative     [B] | None     reference log pi_r+(y_l|x)
    negative_lengths [B]            token counts of the negatives
    label            [B] | None     soft preference label for pairwise methods (rDPO); None = 1
    """

    policy_anchor: Tensor
    ref_anchor: Tensor | None
    anchor_mask: Tensor
    anchor_lengths: Tensor
    policy_negative: Tensor
    ref_negative: Tensor | None
    negative_lengths: Tensor
    label: Tensor | None = None

    def __post_init__(self) -> None:
        # Shape checks only: cheap, and no device sync.
        b = self.policy_negative.shape
        if self.policy_negative.dim() != 1:
            raise ValueError(f"policy_negative must be [B], got {tuple(b)}")
        if self.policy_anchor.dim() != 2 or self.policy_anchor.shape[0] != b[0]:
            raise ValueError(f"policy_anchor must be [B={b[0]}, K], got {tuple(self.policy_anchor.shape)}")
        bk = self.policy_anchor.shape
        for name in ("ref_anchor", "anchor_mask", "anchor_lengths"):
            t = getattr(self, name)
            if t is not None and t.shape != bk:
                raise ValueError(f"{name} must have shape {tuple(bk)}, got {tuple(t.shape)}")
        for name in ("ref_negative", "negative_lengths", "label"):
            t = getattr(self, name)
            if t is not None and t.shape != b:
                raise ValueError(f"{name} must have shape {tuple(b)}, got {tuple(t.shape)}")
        if self.anchor_mask.dtype != torch.bool:
            raise ValueError(f"anchor_mask must be a bool tensor, got {self.anchor_mask.dtype}")

    @property
    def has_reference(self) -> bool:
        return self.ref_anchor is not None and self.ref_negative is not None


@dataclass(frozen=True)
class Objective:
    """A training method: whether it needs reference log-probs and anchors, and its loss."""

    needs_reference: bool
    needs_anchors: bool
    fn: Callable[[GroupLogps, dict], Tensor]  # (logps, full hp) -> per-example loss [B]
    reward_coef: str = "beta"  # hp key that scales the negative's log-ratio into "rewards/rejected"
    doc: str = ""


# Paper settings (D2O: alpha = beta = 0.1). tau is consumed when building rDPO labels
# (losses.soft_label), not here; it is accepted so one dict can carry a run's loss settings.
DEFAULT_HP: dict[str, Any] = {
    "beta": 0.1,
    "alpha": 0.1,
    "delta": 0.0,               # SimNPO margin
    "kl": 0.0,                  # KTO reference point z0 (see losses.kto_kl_estimate)
    "undesirable_weight": 1.0,  # KTO
    "tau": 1.0,                 # rDPO soft-label temperature
    "ga_per_token": True,       # GA: per-token mean (True) or summed log-prob (False)
}


def _pair_column(logps: GroupLogps, method: str, *, hold_rows: bool = False) -> None:
    wrong = logps.policy_anchor.shape[1] != 1
    if wrong and hold_rows:  # K > 1 is the hold groups' (anchors, no negative); a pair keeps one chosen, in slot 0
        wrong = bool(logps.anchor_mask[logps.negative_lengths > 0, 1:].any())
    if wrong:
        raise ValueError(f"method {method!r} takes one chosen response per pair (K = 1), "
                         f"got K = {logps.policy_anchor.shape[1]}")


def _d2o(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.d2o_loss(lp.policy_anchor, lp.ref_anchor, lp.policy_negative, lp.ref_negative,
                           beta=hp["beta"], alpha=hp["alpha"], anchor_mask=lp.anchor_mask,
                           negative_mask=lp.negative_lengths > 0)


def _d2o_no_anchors(lp: GroupLogps, hp: dict) -> Tensor:
    empty = lp.policy_negative.new_zeros((lp.policy_negative.shape[0], 0))
    return losses.d2o_loss(empty, empty, lp.policy_negative, lp.ref_negative,
                           beta=hp["beta"], alpha=hp["alpha"])


def _npo(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.npo_loss(lp.policy_negative, lp.ref_negative, beta=hp["beta"])


def _simnpo(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.simnpo_loss(lp.policy_negative, lp.negative_lengths, beta=hp["beta"], delta=hp["delta"])


def _ga(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.ga_loss(lp.policy_negative, lp.negative_lengths, per_token=bool(hp["ga_per_token"]))


def _dpo_instance(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.instance_dpo_loss(lp.policy_anchor, lp.ref_anchor, lp.policy_negative, lp.ref_negative,
                                    beta=hp["beta"], anchor_mask=lp.anchor_mask)


def _ipo_instance(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.instance_ipo_loss(lp.policy_anchor, lp.ref_anchor, lp.policy_negative, lp.ref_negative,
                                    beta=hp["beta"], anchor_lengths=lp.anchor_lengths,
                                    negative_lengths=lp.negative_lengths, anchor_mask=lp.anchor_mask)


def _sft_anchors(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.sft_loss(lp.policy_anchor, lp.anchor_lengths, lp.anchor_mask)


def _kto_negatives(lp: GroupLogps, hp: dict) -> Tensor:
    return losses.kto_undesirable_loss(lp.policy_negative, lp.ref_negative, hp["kl"], beta=hp["beta"],
                                       undesirable_weight=hp["undesirable_weight"])


def _dpo_pairs(lp: GroupLogps, hp: dict) -> Tensor:
    _pair_column(lp, "dpo_pairs", hold_rows=True)
    label = 1.0 if lp.label is None else lp.label
    loss = losses.dpo_loss(lp.policy_anchor[:, 0], lp.ref_anchor[:, 0], lp.policy_negative, lp.ref_negative,
                           beta=hp["beta"], label=label)
    pairs = lp.negative_lengths > 0
    if bool(pairs.all()):
        return loss
    # hold groups (data.hold): no rejected response, so the pair loss is replaced by the hold term
    held = losses.hold_loss(lp.policy_anchor, lp.ref_anchor, beta=hp["beta"], anchor_mask=lp.anchor_mask)
    return torch.where(pairs.to(loss.device), loss, held)


def _ipo_pairs(lp: GroupLogps, hp: dict) -> Tensor:
    _pair_column(lp, "ipo_pairs")
    return losses.ipo_loss(lp.policy_anchor[:, 0], lp.ref_anchor[:, 0], lp.policy_negative, lp.ref_negative,
                           beta=hp["beta"], chosen_lengths=lp.anchor_lengths[:, 0],
                           rejected_lengths=lp.negative_lengths)


OBJECTIVES: dict[str, Objective] = {
    "d2o": Objective(True, True, _d2o, "alpha", "D2O: mean of K anchors inside one sigmoid per negative"),
    "d2o_no_anchors": Objective(
        True, False, _d2o_no_anchors, "alpha",
        "D2O with the anchor term dropped: -log sigmoid(-alpha * logratio_l); with alpha = beta this "
        "is NPO's per-example loss times beta/2 (same gradient direction, smaller scale)"),
    "npo": Objective(True, False, _npo, "beta", "NPO on the negatives"),
    "simnpo": Objective(False, False, _simnpo, "beta", "SimNPO: reference-free, length-normalised NPO"),
    "ga": Objective(False, False, _ga, "beta", "gradient ascent on the negatives (per-token mean by default)"),
    "dpo_instance": Objective(True, True, _dpo_instance, "beta", "DPO over the K (anchor, negative) pairs"),
    "ipo_instance": Objective(True, True, _ipo_instance, "beta", "IPO over the K (anchor, negative) pairs"),
    "sft_anchors": Objective(False, True, _sft_anchors, "beta", "self-align SFT on the anchors"),
    "kto_negatives": Objective(True, False, _kto_negatives, "beta", "KTO with only undesirable examples"),
    "dpo_pairs": Objective(True, True, _dpo_pairs, "beta",
                           "DPO on (chosen, rejected) pairs; soft label if given (rDPO), else 1; "
                           "hold groups (no rejected) keep their anchors' likelihood"),
    "ipo_pairs": Objective(True, True, _ipo_pairs, "beta", "IPO on (chosen, rejected) pairs"),
}


def resolve_hp(hp: dict | None) -> dict:
    """DEFAULT_HP overlaid with ``hp``; unknown keys and non-positive beta/tau are user errors."""
    hp = dict(hp or {})
    unknown = sorted(set(hp) - set(DEFAULT_HP))
    if unknown:
        raise UserError(f"unknown loss setting; choose from {', '.join(sorted(DEFAULT_HP))}", field=unknown[0])
    full = {**DEFAULT_HP, **hp}
    for key in ("beta", "tau"):
        if not isinstance(full[key], (int, float)) or not full[key] > 0:
            raise UserError(f"must be a positive number, got {full[key]!r}", field=key)
    return full


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise UserError(unknown_method_message(name), field="method") from None


def compute_objective(name: str, logps: GroupLogps, hp: dict | None = None) -> tuple[Tensor, dict[str, float]]:
    """Per-example loss [B] of method ``name`` and its metrics (python floats, TRL names where they match)."""
    objective = get_objective(name)
    full = resolve_hp(hp)
    if objective.needs_reference and not logps.has_reference:
        raise UserError(f"method {name!r} needs reference log-probs (ref_anchor and ref_negative)",
                        field="method")
    if objective.needs_anchors and logps.policy_anchor.shape[1] == 0:
        # Shape check only: single groups without anchors are allowed, a batch without any is a setup error.
        raise UserError(f"method {name!r} needs anchors (sample them first), got K = 0", field="method")
    loss = objective.fn(logps, full)
    return loss, _metrics(logps, full, full[objective.reward_coef], name)


@torch.no_grad()
def _metrics(lp: GroupLogps, hp: dict, negative_coef: float, name: str) -> dict[str, float]:
    """Batch means; a metric with no data behind it (no anchors, no reference) is left out."""
    mask = lp.anchor_mask
    n_anchors = mask.sum()
    pa = lp.policy_anchor.detach().float()
    pn = lp.policy_negative.detach().float()
    zero = pa.new_zeros(())
    # Hold groups (no negative, length 0) stay out of the negatives' means.
    has_neg = lp.negative_lengths > 0
    n_neg = has_neg.sum().clamp(min=1)
    neg_mean = lambda x: torch.where(has_neg, x, zero).sum() / n_neg  # noqa: E731
    values: dict[str, Tensor] = {"logps/rejected": neg_mean(pn)}
    has_anchors = mask.numel() > 0  # K = 0 batches have no anchor metrics at all
    if has_anchors:
        values["logps/chosen"] = torch.where(mask, pa, zero).sum() / n_anchors.clamp(min=1)
    if lp.has_reference:
        neg_ratio = torch.where(has_neg, pn - lp.ref_negative.detach().float(), zero)
        values["logratio/negative"] = neg_mean(neg_ratio)
        rejected = negative_coef * neg_ratio
        values["rewards/rejected"] = neg_mean(rejected)
        if has_anchors:
            ratio = pa - lp.ref_anchor.detach().float()
            values["logratio/anchors"] = torch.where(mask, ratio, zero).sum() / n_anchors.clamp(min=1)
            values["rewards/chosen"] = hp["beta"] * values["logratio/anchors"]
            # Per group: mean anchor reward vs the negative's reward, over groups that have anchors.
            group_ratio, count = losses.masked_mean(ratio, mask)
            has = (count > 0) & has_neg
            margin = hp["beta"] * group_ratio - rejected
            n_groups = has.sum().clamp(min=1)
            values["rewards/margins"] = torch.where(has, margin, zero).sum() / n_groups
            values["rewards/accuracies"] = (has & (margin > 0)).sum() / n_groups
        if name == "kto_negatives":
            values["kl"] = torch.as_tensor(hp["kl"], dtype=torch.float32).clamp(min=0)
    values["_n_anchors"] = n_anchors
    keys = list(values)
    # One transfer for all metrics instead of one device sync per .item().
    out = dict(zip(keys, torch.stack([values[k].to(pn.device).float() for k in keys]).tolist()))
    if out.pop("_n_anchors") == 0:
        for key in ("logps/chosen", "logratio/anchors", "rewards/chosen", "rewards/margins", "rewards/accuracies"):
            out.pop(key, None)
    return out
