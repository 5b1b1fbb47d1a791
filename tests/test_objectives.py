"""The method registry: every name runs, errors name their field, metrics match hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from negalign.base.errors import UserError
from negalign.objectives import losses
from negalign.objectives.registry import DEFAULT_HP, OBJECTIVES, GroupLogps, compute_objective

PA = [[-10.0, -12.5, -9.0], [-20.0, -18.0, -25.0], [-5.0, -6.0, -7.0]]
RA = [[-11.0, -12.0, -10.5], [-19.0, -18.5, -24.0], [-5.0, -6.0, -7.0]]
MASK = [[True, False, True], [True, True, True], [False, False, False]]
AL = [[5, 5, 3], [10, 9, 25], [1, 1, 1]]
PN = [-30.0, -15.0, -8.0]
RN = [-28.0, -16.0, -9.0]
NL = [12, 4, 2]


def group(k_slice=slice(None), with_ref=True, label=None) -> GroupLogps:
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    pa, ra = f(PA)[:, k_slice], f(RA)[:, k_slice]
    return GroupLogps(policy_anchor=pa, ref_anchor=ra if with_ref else None,
                      anchor_mask=torch.tensor(MASK)[:, k_slice], anchor_lengths=torch.tensor(AL)[:, k_slice],
                      policy_negative=f(PN), ref_negative=f(RN) if with_ref else None,
                      negative_lengths=torch.tensor(NL), label=label)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_registry_names_and_flags():
    assert set(OBJECTIVES) == {"d2o", "d2o_no_anchors", "npo", "simnpo", "ga", "dpo_instance", "ipo_instance",
                               "sft_anchors", "kto_negatives", "dpo_pairs", "ipo_pairs"}
    assert {n for n, o in OBJECTIVES.items() if not o.needs_reference} == {"simnpo", "ga", "sft_anchors"}
    assert {n for n, o in OBJECTIVES.items() if not o.needs_anchors} == {
        "d2o_no_anchors", "npo", "simnpo", "ga", "kto_negatives"}


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if not n.endswith("_pairs")])
def test_every_group_method_runs_and_backpropagates(name):
    lp = group()
    lp.policy_anchor.requires_grad_(True)
    lp.policy_negative.requires_grad_(True)
    loss, metrics = compute_objective(name, lp, {})
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [g for g in (lp.policy_anchor.grad, lp.policy_negative.grad) if g is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["logps/rejected"] == pytest.approx(sum(PN) / 3)


def test_d2o_through_registry_matches_loss_and_defaults():
    loss, _ = compute_objective("d2o", group(), {})
    direct = losses.d2o_loss(group().policy_anchor, group().ref_anchor, group().policy_negative,
                             group().ref_negative, beta=0.1, alpha=0.1, anchor_mask=torch.tensor(MASK))
    assert DEFAULT_HP["beta"] == DEFAULT_HP["alpha"] == 0.1
    assert torch.equal(loss, direct)


def test_d2o_no_anchors_is_npo_times_half_beta():
    hp = {"beta": 0.25, "alpha": 0.25}
    no_anchor, _ = compute_objective("d2o_no_anchors", group(), hp)
    npo, _ = compute_objective("npo", group(), hp)
    assert torch.allclose(no_anchor, npo * 0.25 / 2)


def test_metrics_hand_computed_for_d2o():
    beta, alpha = 0.1, 0.3
    _, m = compute_objective("d2o", group(), {"beta": beta, "alpha": alpha})
    valid = [(b, i) for b in range(3) for i in range(3) if MASK[b][i]]
    anchor_ratios = [PA[b][i] - RA[b][i] for b, i in valid]
    neg_ratios = [p - r for p, r in zip(PN, RN)]
    assert m["logps/chosen"] == pytest.approx(sum(PA[b][i] for b, i in valid) / len(valid))
    assert m["logratio/anchors"] == pytest.approx(sum(anchor_ratios) / len(valid))
    assert m["rewards/chosen"] == pytest.approx(beta * sum(anchor_ratios) / len(valid))
    assert m["logratio/negative"] == pytest.approx(sum(neg_ratios) / 3)
    assert m["rewards/rejected"] == pytest.approx(alpha * sum(neg_ratios) / 3)  # alpha scales D2O's negative
    # Margins and accuracies over the two groups that have anchors.
    margins = []
    for b in range(2):
        r = [PA[b][i] - RA[b][i] for i in range(3) if MASK[b][i]]
        margins.append(beta * sum(r) / len(r) - alpha * neg_ratios[b])
    assert m["rewards/margins"] == pytest.approx(sum(margins) / 2)
    assert m["rewards/accuracies"] == pytest.approx(sum(x > 0 for x in margins) / 2)


def test_metrics_without_anchors_or_reference_are_left_out():
    _, m = compute_objective("npo", group(k_slice=slice(0, 0)), {})
    assert set(m) == {"logps/rejected", "logratio/negative", "rewards/rejected"}
    _, m = compute_objective("simnpo", group(with_ref=False), {})
    assert set(m) == {"logps/rejected", "logps/chosen"}
    _, m = compute_objective("kto_negatives", group(), {"kl": 0.4})
    assert m["kl"] == pytest.approx(0.4)


def test_dpo_pairs_uses_label_or_one():
    lp = group(k_slice=slice(1, 2))  # K = 1: column 1 as the chosen response, every pair complete
    lp.anchor_mask = torch.ones(3, 1, dtype=torch.bool)
    plain, m = compute_objective("dpo_pairs", lp, {"beta": 0.2})
    expected = [-logsig(0.2 * ((PA[b][1] - RA[b][1]) - (PN[b] - RN[b]))) for b in range(3)]
    assert plain.tolist() == pytest.approx(expected)
    assert m["rewards/accuracies"] == pytest.approx(
        sum((PA[b][1] - RA[b][1]) > (PN[b] - RN[b]) for b in range(3)) / 3)
    labels = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    lp.label = labels
    soft, _ = compute_objective("dpo_pairs", lp, {"beta": 0.2})
    assert torch.allclose(soft, losses.dpo_loss(lp.policy_anchor[:, 0], lp.ref_anchor[:, 0], lp.policy_negative,
                                                lp.ref_negative, beta=0.2, label=labels))
    ipo, _ = compute_objective("ipo_pairs", lp, {"beta": 0.2})
    assert ipo.shape == (3,)
    with pytest.raises(ValueError, match="K = 1"):
        compute_objective("dpo_pairs", group(), {})


def test_dpo_pairs_with_hold_rows():
    # Rows 0 and 1 are pairs (chosen in slot 0 only); row 2 is a hold group: anchors in slots 0-1, no
    # rejected response (length 0). Pairs keep the DPO loss with their label; the hold row gets
    # -log sigmoid(beta * mean anchor ratio), whatever its label says.
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    mask = torch.tensor([[True, False], [True, False], [True, True]])
    lp = GroupLogps(policy_anchor=f(PA)[:, :2], ref_anchor=f(RA)[:, :2] - f([[0.0, 0], [0, 0], [1.0, 3.0]]),
                    anchor_mask=mask, anchor_lengths=torch.tensor(AL)[:, :2], policy_negative=f(PN),
                    ref_negative=f(RN), negative_lengths=torch.tensor([12, 4, 0]),
                    label=f([0.7, 1.0, 0.3]))
    got, m = compute_objective("dpo_pairs", lp, {"beta": 0.5})
    pair = [-(p * logsig(0.5 * h) + (1 - p) * logsig(-0.5 * h))
            for p, h in ((0.7, (PA[0][0] - RA[0][0]) - (PN[0] - RN[0])), (1.0, (PA[1][0] - RA[1][0]) - (PN[1] - RN[1])))]
    hold = -logsig(0.5 * (1.0 + 3.0) / 2)   # policy == RA there, the reference 1 and 3 nats lower
    assert got.tolist() == pytest.approx(pair + [hold])
    assert m["rewards/accuracies"] == pytest.approx(1 / 2)   # over the two pairs only
    assert torch.allclose(losses.hold_loss(lp.policy_anchor, lp.ref_anchor, beta=0.5, anchor_mask=mask)[2:],
                          torch.tensor([hold], dtype=torch.float64))
    mask[0, 1] = True   # a pair with two chosen responses is a layout error
    with pytest.raises(ValueError, match="K = 1"):
        compute_objective("dpo_pairs", lp, {"beta": 0.5})


def test_unknown_method_names_field_and_lists_choices():
    with pytest.raises(UserError) as err:
        compute_objective("d20", group(), {})
    assert err.value.field == "method"
    assert "d2o" in str(err.value) and "kto_negatives" in str(err.value)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError) as err:
        compute_objective("d2o", group(), {"betta": 0.1})
    assert err.value.field == "betta"
    with pytest.raises(UserError) as err:
        compute_objective("npo", group(), {"beta": 0.0})
    assert err.value.field == "beta"
    with pytest.raises(UserError) as err:
        compute_objective("npo", group(with_ref=False), {})
    assert err.value.field == "method" and "reference" in str(err.value)
    with pytest.raises(UserError, match="needs anchors"):
        compute_objective("d2o", group(k_slice=slice(0, 0)), {})


def test_group_shape_checks():
    with pytest.raises(ValueError, match="anchor_mask"):
        GroupLogps(torch.zeros(2, 3), None, torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 3),
                   torch.zeros(2), None, torch.ones(2))
    with pytest.raises(ValueError, match="bool"):
        GroupLogps(torch.zeros(2, 3), None, torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2), None, torch.ones(2))


def test_light_method_names_match_the_registry():
    """Config checks use the torch-free name list; it must be the registry's names, in its order."""
    from negalign.objectives.names import METHODS

    assert tuple(OBJECTIVES) == METHODS
