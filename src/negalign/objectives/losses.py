"""Every training loss as a pure function of summed sequence log-probabilities.

Conventions shared by all functions here:
- A log-prob ``log pi(y|x)`` is the SUM of the response's token log-probs given the chat-formatted
  prompt (DPO convention). Functions that need a per-token form take the token counts explicitly.
- "Anchors" are the K self-generated responses of a D2O group, shape ``[B, K]``; "negatives" are
  the human-annotated bad responses, shape ``[B]``. ``anchor_mask`` ([B, K] bool) marks the real
  anchors; masked entries never reach the result (not even as NaN), so padding may hold anything.
- Every function returns the UNREDUCED per-example loss, shape ``[B]``; the caller averages.
- Math runs in at least float32 (bf16/fp16 inputs are upcast; float64 stays float64), because
  the differences of large summed log-probs lose all precision in half precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "d2o_loss", "npo_loss", "dpo_loss", "ipo_loss", "ga_loss", "simnpo_loss", "sft_loss",
    "instance_dpo_loss", "instance_ipo_loss", "kto_undesirable_loss", "kto_kl_estimate",
    "soft_label", "masked_mean", "hold_loss",
]


def _f(x: Tensor) -> Tensor:
    """Upcast to at least float32 (keeps the autograd graph)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mask_for(anchors: Tensor, anchor_mask: Tensor | None) -> Tensor:
    if anchors.dim() != 2:
        raise ValueError(f"anchor log-probs must be [B, K], got shape {tuple(anchors.shape)}")
    if anchor_mask is None:
        return torch.ones(anchors.shape, dtype=torch.bool, device=anchors.device)
    if anchor_mask.shape != anchors.shape:
        raise ValueError(f"anchor_mask shape {tuple(anchor_mask.shape)} != anchors shape {tuple(anchors.shape)}")
    return anchor_mask.to(device=anchors.device, dtype=torch.bool)


def masked_mean(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the last dim of the masked entries, 0 where a row has none; also the counts."""
    count = mask.sum(-1)
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-1)
    return total / count.clamp(min=1).to(values.dtype), count


def _mean_anchor_logratio(policy_anchor_logps: Tensor, ref_anchor_logps: Tensor,
                          anchor_mask: Tensor | None) -> Tensor:
    """Per row, the mean over valid anchors of log pi(y_i) - log ref(y_i) (0 where a row has none)."""
    mask = _mask_for(policy_anchor_logps, anchor_mask)
    return masked_mean(_f(policy_anchor_logps) - _f(ref_anchor_logps), mask)[0]


def d2o_loss(policy_anchor_logps: Tensor, ref_anchor_logps: Tensor, policy_negative_logps: Tensor,
             ref_negative_logps: Tensor, *, beta: float, alpha: float,
             anchor_mask: Tensor | None = None, negative_mask: Tensor | None = None) -> Tensor:
    """D2O (Duan et al. 2024, Eq. 3): one sigmoid per negative against the mean of its anchors.

        z = (beta / K_valid) * sum_i m_i (log pi(y_i) - log ref-(y_i)) - alpha n (log pi(y_l) - log ref+(y_l))
        loss = -log sigmoid(z)

    The anchor mean sits inside the sigmoid (the "distributional" part). A row with no valid anchor
    keeps only the negative term, -log sigmoid(-alpha * logratio_l), which is NPO's per-example
    loss times beta/2 when alpha = beta. A row whose ``negative_mask`` n is False (a "hold" group:
    benign prompt, anchors only) keeps only the anchor term, -log sigmoid(beta * mean anchor ratio).
    """
    anchor_ratio = _mean_anchor_logratio(policy_anchor_logps, ref_anchor_logps, anchor_mask)
    negative_ratio = _f(policy_negative_logps) - _f(ref_negative_logps)
    if negative_mask is not None:
        negative_ratio = torch.where(negative_mask.to(negative_ratio.device), negative_ratio,
                                     torch.zeros((), dtype=negative_ratio.dtype, device=negative_ratio.device))
    return -F.logsigmoid(beta * anchor_ratio - alpha * negative_ratio)


def npo_loss(policy_negative_logps: Tensor, ref_negative_logps: Tensor, *, beta: float) -> Tensor:
    """NPO (Zhang et al. 2024): -(2/beta) log sigmoid(-beta (log pi(y_l) - log ref(y_l)))."""
    ratio = _f(policy_negative_logps) - _f(ref_negative_logps)
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio)


def dpo_loss(policy_chosen_logps: Tensor, ref_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float, label: float | Tensor = 1.0) -> Tensor:
    """Generalised (soft-label) DPO, as rDPO uses it.

        h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))
        loss = -[p log sigmoid(beta h) + (1 - p) log sigmoid(-beta h)]

    ``label`` p is a scalar or a [B] tensor in [0, 1]: p = 1 is plain DPO (TRL's "sigmoid" loss),
    a constant 1 - eps is conservative DPO, p = 0.5 is indifferent between the two responses.
    """
    h = (_f(policy_chosen_logps) - _f(ref_chosen_logps)) - (_f(policy_rejected_logps) - _f(ref_rejected_logps))
    if isinstance(label, Tensor):
        p = label.to(device=h.device, dtype=h.dtype)
    else:
        if not 0.0 <= float(label) <= 1.0:
            raise ValueError(f"DPO label must lie in [0, 1], got {label}")
        p = float(label)
    return -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h))


def hold_loss(policy_anchor_logps: Tensor, ref_anchor_logps: Tensor, *, beta: float,
              anchor_mask: Tensor | None = None) -> Tensor:
    """The loss of a hold group (a benign prompt with the initial model's own answers, no negative):

        loss = -log sigmoid(beta * mean_i m_i (log pi(y_i) - log ref(y_i)))

    log 2 at the start, lower when the policy gives those answers more probability than the reference
    did; D2O's loss on a row without a negative, used beside DPO's pairs as well.
    """
    return -F.logsigmoid(beta * _mean_anchor_logratio(policy_anchor_logps, ref_anchor_logps, anchor_mask))


def ipo_loss(policy_chosen_logps: Tensor, ref_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float, chosen_lengths: Tensor,
             rejected_lengths: Tensor) -> Tensor:
    """IPO (Azar et al. 2023, Eq. 17), length-normalised the way TRL does it.

    Each response's log-ratio is divided by its token count (clamped at 1) before taking the
    difference h; loss = (h - 1/(2 beta))^2, where beta plays the role of the paper's tau.
    """
    chosen = (_f(policy_chosen_logps) - _f(ref_chosen_logps)) / _f(chosen_lengths).clamp(min=1)
    rejected = (_f(policy_rejected_logps) - _f(ref_rejected_logps)) / _f(rejected_lengths).clamp(min=1)
    return (chosen - rejected - 1.0 / (2.0 * beta)) ** 2


def ga_loss(policy_negative_logps: Tensor, negative_lengths: Tensor | None = None, *,
            per_token: bool = True) -> Tensor:
    """Gradient ascent on negatives: L = log pi(y_l|x); minimising it pushes y_l's likelihood down.

    With ``per_token=True`` (the default) the summed log-prob is divided by the token count, so the
    loss is the mean per-token log-prob and long negatives do not dominate the batch; with
    ``per_token=False`` it is the summed sequence log-prob. The loss is unbounded below.
    """
    logps = _f(policy_negative_logps)
    if not per_token:
        return logps
    if negative_lengths is None:
        raise ValueError("ga_loss(per_token=True) needs negative_lengths")
    return logps / _f(negative_lengths).clamp(min=1)


def simnpo_loss(policy_negative_logps: Tensor, negative_lengths: Tensor, *, beta: float,
                delta: float = 0.0) -> Tensor:
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO with margin delta.

        loss = -(2/beta) log sigmoid(-(beta/|y_l|) log pi(y_l) - delta)
    """
    per_token = _f(policy_negative_logps) / _f(negative_lengths).clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * per_token - delta)


def sft_loss(policy_anchor_logps: Tensor, anchor_lengths: Tensor,
             anchor_mask: Tensor | None = None) -> Tensor:
    """Self-align SFT on the anchors: mean over valid anchors of the per-token negative log-likelihood.

    Each anchor counts once whatever its length (per-sequence token mean, then mean over anchors).
    A row with no valid anchor gets loss 0 and no gradient.
    """
    mask = _mask_for(policy_anchor_logps, anchor_mask)
    nll = -_f(policy_anchor_logps) / _f(anchor_lengths).clamp(min=1)
    return masked_mean(nll, mask)[0]


def instance_dpo_loss(policy_anchor_logps: Tensor, ref_anchor_logps: Tensor, policy_negative_logps: Tensor,
                      ref_negative_logps: Tensor, *, beta: float,
                      anchor_mask: Tensor | None = None) -> Tensor:
    """Instance-level DPO: each valid anchor as chosen against the group's negative, averaged.

    The mean sits OUTSIDE the sigmoid (K sigmoids per negative), unlike D2O; by Jensen's inequality
    ``d2o_loss <= instance_dpo_loss`` when alpha = beta. A row with no valid anchor gets loss 0.
    """
    mask = _mask_for(policy_anchor_logps, anchor_mask)
    per_pair = dpo_loss(policy_anchor_logps, ref_anchor_logps,
                        policy_negative_logps.unsqueeze(-1), ref_negative_logps.unsqueeze(-1), beta=beta)
    return masked_mean(per_pair, mask)[0]


def instance_ipo_loss(policy_anchor_logps: Tensor, ref_anchor_logps: Tensor, policy_negative_logps: Tensor,
                      ref_negative_logps: Tensor, *, beta: float, anchor_lengths: Tensor,
                      negative_lengths: Tensor, anchor_mask: Tensor | None = None) -> Tensor:
    """Instance-level IPO: mean over valid anchors of ipo_loss(anchor as chosen, negative as rejected)."""
    mask = _mask_for(policy_anchor_logps, anchor_mask)
    per_pair = ipo_loss(policy_anchor_logps, ref_anchor_logps,
                        policy_negative_logps.unsqueeze(-1), ref_negative_logps.unsqueeze(-1), beta=beta,
                        chosen_lengths=anchor_lengths, rejected_lengths=negative_lengths.unsqueeze(-1))
    return masked_mean(per_pair, mask)[0]


def kto_kl_estimate(policy_mismatched_logps: Tensor, ref_mismatched_logps: Tensor) -> Tensor:
    """KTO's reference point z0: a detached, batch-level estimate of KL(pi || ref), clamped at >= 0.

    As in the KTO paper and TRL, it is estimated from MISMATCHED pairs: each prompt x_j is scored
    with a response from another example of the batch (TRL cycles completions by one), so
    z0 = mean_j [log pi(y_{j+1}|x_j) - log ref(y_{j+1}|x_j)]. It carries no gradient. Under
    data-parallel training, average the unclamped means across processes before clamping
    (TRL gathers, then clamps) so every rank uses the same z0.
    """
    diff = (_f(policy_mismatched_logps) - _f(ref_mismatched_logps)).detach()
    return diff.mean().clamp(min=0)


def kto_undesirable_loss(policy_negative_logps: Tensor, ref_negative_logps: Tensor, kl: float | Tensor, *,
                         beta: float, undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024) with only undesirable examples, in TRL's form.

        loss = undesirable_weight * (1 - sigmoid(beta (z0 - (log pi(y_l) - log ref(y_l)))))

    ``kl`` is the reference point z0 (see :func:`kto_kl_estimate`); it is detached and clamped at 0
    here too. kl = 0 matches TRL with ``calculate_KL=False``.
    """
    ratio = _f(policy_negative_logps) - _f(ref_negative_logps)
    z0 = torch.as_tensor(kl, dtype=ratio.dtype, device=ratio.device).detach().clamp(min=0)
    return undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - ratio)))


def soft_label(revision_scores: Tensor | float, original_scores: Tensor | float, *, tau: float) -> Tensor:
    """rDPO's pair label p = sigmoid((s_revision - s_original) / tau) from a judge's two scores.

    Small tau pushes p to 0/1 (hard DPO labels); large tau pulls it to 0.5 (ignore the pair).
    """
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    s_r = _f(torch.as_tensor(revision_scores))
    s_o = _f(torch.as_tensor(original_scores))
    return torch.sigmoid((s_r - s_o) / tau)
