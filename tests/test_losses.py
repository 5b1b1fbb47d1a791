"""The pure losses: hand-computed values, the identities DESIGN.md names, gradients, and TRL parity.

Expected values are worked out with the `math` module on python floats, independently of the code
under test.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from negalign.objectives import losses


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# Two groups, three anchor slots; group 0 has anchors 0 and 2, group 1 has all three.
PA = [[-10.0, -12.5, -9.0], [-20.0, -18.0, -25.0]]
RA = [[-11.0, -12.0, -10.5], [-19.0, -18.5, -24.0]]
MASK = [[True, False, True], [True, True, True]]
PN = [-30.0, -15.0]
RN = [-28.0, -16.0]


def test_d2o_hand_computed():
    beta, alpha = 0.1, 0.2
    got = losses.d2o_loss(t(PA), t(RA), t(PN), t(RN), beta=beta, alpha=alpha, anchor_mask=torch.tensor(MASK))
    expected = []
    for b in range(2):
        diffs = [PA[b][i] - RA[b][i] for i in range(3) if MASK[b][i]]
        z = beta * sum(diffs) / len(diffs) - alpha * (PN[b] - RN[b])
        expected.append(-logsig(z))
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_d2o_masked_padding_never_leaks():
    # Padding may hold anything (here inf/nan): masked entries must not reach the result.
    pa, ra = t(PA), t(RA)
    pa[0, 1], ra[0, 1] = float("nan"), float("-inf")
    got = losses.d2o_loss(pa, ra, t(PN), t(RN), beta=0.1, alpha=0.1, anchor_mask=torch.tensor(MASK))
    assert torch.isfinite(got).all()


def test_d2o_hold_rows_keep_only_the_anchor_term():
    # Row 1 is a hold group (no negative): its loss is -log sigmoid(beta * mean anchor ratio), whatever
    # sits in the negative slot (even NaN); row 0 is unchanged.
    beta, alpha = 0.1, 0.2
    pn = t(PN)
    pn[1] = float("nan")
    got = losses.d2o_loss(t(PA), t(RA), pn, t(RN), beta=beta, alpha=alpha, anchor_mask=torch.tensor(MASK),
                          negative_mask=torch.tensor([True, False]))
    diffs0 = [PA[0][i] - RA[0][i] for i in (0, 2)]
    z0 = beta * sum(diffs0) / 2 - alpha * (PN[0] - RN[0])
    z1 = beta * sum(PA[1][i] - RA[1][i] for i in range(3)) / 3
    assert got.tolist() == pytest.approx([-logsig(z0), -logsig(z1)], rel=1e-12)


def test_npo_hand_computed():
    beta = 0.5
    got = losses.npo_loss(t(PN), t(RN), beta=beta)
    expected = [-(2 / beta) * logsig(-beta * (p - r)) for p, r in zip(PN, RN)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_dpo_soft_label_hand_computed():
    beta = 0.1
    pc, rc, pr, rr = [-5.0, -40.0], [-6.0, -38.0], [-9.0, -30.0], [-7.0, -33.0]
    labels = [0.8, 0.3]
    got = losses.dpo_loss(t(pc), t(rc), t(pr), t(rr), beta=beta, label=t(labels))
    expected = []
    for i in range(2):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        p = labels[i]
        expected.append(-(p * logsig(beta * h) + (1 - p) * logsig(-beta * h)))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_dpo_label_one_is_plain_dpo_and_half_is_symmetric():
    g = torch.Generator().manual_seed(0)
    pc, rc, pr, rr = (torch.randn(16, generator=g, dtype=torch.float64) * 5 - 30 for _ in range(4))
    plain = -torch.nn.functional.logsigmoid(0.3 * ((pc - rc) - (pr - rr)))
    assert torch.allclose(losses.dpo_loss(pc, rc, pr, rr, beta=0.3), plain)
    assert torch.allclose(losses.dpo_loss(pc, rc, pr, rr, beta=0.3, label=1.0), plain)
    half = losses.dpo_loss(pc, rc, pr, rr, beta=0.3, label=0.5)
    swapped = losses.dpo_loss(pr, rr, pc, rc, beta=0.3, label=0.5)
    assert torch.allclose(half, swapped)
    # p and 1 - p with the pair swapped are the same preference.
    assert torch.allclose(losses.dpo_loss(pc, rc, pr, rr, beta=0.3, label=0.9),
                          losses.dpo_loss(pr, rr, pc, rc, beta=0.3, label=0.1))
    with pytest.raises(ValueError):
        losses.dpo_loss(pc, rc, pr, rr, beta=0.3, label=1.5)


def test_ipo_hand_computed_length_normalised():
    beta = 0.1
    pc, rc, pr, rr = [-5.0, -40.0], [-6.0, -38.0], [-9.0, -30.0], [-7.0, -33.0]
    lc, lr = [4, 20], [6, 0]  # a zero length is clamped to 1, as TRL does
    got = losses.ipo_loss(t(pc), t(rc), t(pr), t(rr), beta=beta, chosen_lengths=torch.tensor(lc),
                          rejected_lengths=torch.tensor(lr))
    expected = []
    for i in range(2):
        h = (pc[i] - rc[i]) / max(lc[i], 1) - (pr[i] - rr[i]) / max(lr[i], 1)
        expected.append((h - 1 / (2 * beta)) ** 2)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_ga_per_token_and_sum():
    lengths = torch.tensor([10, 3])
    assert losses.ga_loss(t(PN), lengths).tolist() == pytest.approx([-3.0, -5.0])
    assert losses.ga_loss(t(PN), per_token=False).tolist() == pytest.approx(PN)
    with pytest.raises(ValueError):
        losses.ga_loss(t(PN))


def test_simnpo_hand_computed():
    beta, delta = 2.5, 0.5
    lengths = [10, 3]
    got = losses.simnpo_loss(t(PN), torch.tensor(lengths), beta=beta, delta=delta)
    expected = [-(2 / beta) * logsig(-(beta / n) * p - delta) for p, n in zip(PN, lengths)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_sft_hand_computed_and_empty_row():
    lengths = [[5, 5, 3], [10, 9, 25]]
    mask = [[True, False, True], [True, True, True]]
    expected = []
    for b in range(2):
        nll = [-PA[b][i] / lengths[b][i] for i in range(3) if mask[b][i]]
        expected.append(sum(nll) / len(nll))
    got = losses.sft_loss(t(PA), torch.tensor(lengths), torch.tensor(mask))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    none = losses.sft_loss(t(PA), torch.tensor(lengths), torch.zeros(2, 3, dtype=torch.bool))
    assert none.tolist() == [0.0, 0.0]


def test_instance_dpo_hand_computed():
    beta = 0.1
    got = losses.instance_dpo_loss(t(PA), t(RA), t(PN), t(RN), beta=beta, anchor_mask=torch.tensor(MASK))
    expected = []
    for b in range(2):
        terms = [-logsig(beta * ((PA[b][i] - RA[b][i]) - (PN[b] - RN[b]))) for i in range(3) if MASK[b][i]]
        expected.append(sum(terms) / len(terms))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_instance_ipo_hand_computed():
    beta = 0.1
    al = [[5, 5, 3], [10, 9, 25]]
    nl = [12, 4]
    got = losses.instance_ipo_loss(t(PA), t(RA), t(PN), t(RN), beta=beta, anchor_lengths=torch.tensor(al),
                                   negative_lengths=torch.tensor(nl), anchor_mask=torch.tensor(MASK))
    expected = []
    for b in range(2):
        terms = [((PA[b][i] - RA[b][i]) / al[b][i] - (PN[b] - RN[b]) / nl[b] - 1 / (2 * beta)) ** 2
                 for i in range(3) if MASK[b][i]]
        expected.append(sum(terms) / len(terms))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_kto_undesirable_hand_computed():
    beta, w = 0.1, 1.5
    mismatched_p, mismatched_r = [-20.0, -31.0, -12.0], [-21.0, -30.5, -13.0]
    kl = losses.kto_kl_estimate(t(mismatched_p), t(mismatched_r))
    kl_expected = max(0.0, sum(p - r for p, r in zip(mismatched_p, mismatched_r)) / 3)
    assert kl.item() == pytest.approx(kl_expected)
    assert not kl.requires_grad
    got = losses.kto_undesirable_loss(t(PN), t(RN), kl, beta=beta, undesirable_weight=w)
    expected = [w * (1 - sig(beta * (kl_expected - (p - r)))) for p, r in zip(PN, RN)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # A negative estimate is clamped to 0.
    assert losses.kto_kl_estimate(t([-5.0]), t([-1.0])).item() == 0.0
    assert torch.allclose(losses.kto_undesirable_loss(t(PN), t(RN), -3.0, beta=beta),
                          losses.kto_undesirable_loss(t(PN), t(RN), 0.0, beta=beta))


def test_soft_label():
    got = losses.soft_label(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0]), tau=0.5)
    assert got.tolist() == pytest.approx([sig(2.0), sig(-4.0)], rel=1e-6)
    assert losses.soft_label(3.0, 3.0, tau=1.0).item() == 0.5
    with pytest.raises(ValueError):
        losses.soft_label(1.0, 0.0, tau=0.0)


# ---- identities from DESIGN.md ------------------------------------------------------------------

def _random_group(b: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pa = torch.randn(b, k, generator=g, dtype=torch.float64) * 8 - 40
    ra = pa + torch.randn(b, k, generator=g, dtype=torch.float64) * 3
    pn = torch.randn(b, generator=g, dtype=torch.float64) * 8 - 40
    rn = pn + torch.randn(b, generator=g, dtype=torch.float64) * 3
    return pa, ra, pn, rn


def test_d2o_without_anchors_is_scaled_npo():
    _, _, pn, rn = _random_group(32, 0, seed=1)
    empty = torch.zeros(32, 0, dtype=torch.float64)
    beta = 0.1
    d2o = losses.d2o_loss(empty, empty, pn, rn, beta=beta, alpha=beta)
    assert torch.allclose(d2o, losses.npo_loss(pn, rn, beta=beta) * beta / 2)
    # Same via a mask with no valid anchor.
    pa, ra, _, _ = _random_group(32, 4, seed=2)
    none = torch.zeros(32, 4, dtype=torch.bool)
    assert torch.allclose(losses.d2o_loss(pa, ra, pn, rn, beta=beta, alpha=beta, anchor_mask=none), d2o)


def test_d2o_with_one_anchor_is_dpo():
    pa, ra, pn, rn = _random_group(32, 1, seed=3)
    d2o = losses.d2o_loss(pa, ra, pn, rn, beta=0.2, alpha=0.2)
    assert torch.allclose(d2o, losses.dpo_loss(pa[:, 0], ra[:, 0], pn, rn, beta=0.2))


def test_jensen_d2o_below_instance_dpo():
    pa, ra, pn, rn = _random_group(256, 11, seed=4)
    mask = torch.rand(256, 11, generator=torch.Generator().manual_seed(5)) < 0.7
    mask[:, 0] = True  # at least one anchor per group (a group without any has instance loss 0)
    d2o = losses.d2o_loss(pa, ra, pn, rn, beta=0.1, alpha=0.1, anchor_mask=mask)
    inst = losses.instance_dpo_loss(pa, ra, pn, rn, beta=0.1, anchor_mask=mask)
    assert (d2o <= inst + 1e-12).all()
    assert (d2o < inst).any()  # strict somewhere: the bound is not vacuous


def test_anchor_mask_equals_dropping_anchors():
    pa, ra, pn, rn = _random_group(1, 6, seed=6)
    keep = torch.tensor([[True, False, True, True, False, False]])
    idx = keep[0].nonzero().squeeze(1)
    for fn in (lambda a, r, m: losses.d2o_loss(a, r, pn, rn, beta=0.1, alpha=0.3, anchor_mask=m),
               lambda a, r, m: losses.instance_dpo_loss(a, r, pn, rn, beta=0.1, anchor_mask=m),
               lambda a, r, m: losses.sft_loss(a, torch.full(a.shape, 7), m)):
        masked = fn(pa, ra, keep)
        dropped = fn(pa[:, idx], ra[:, idx], None)
        assert torch.allclose(masked, dropped)


def test_half_precision_inputs_computed_in_float32():
    pa, ra, pn, rn = (x.to(torch.bfloat16) for x in _random_group(4, 3, seed=7))
    out = losses.d2o_loss(pa, ra, pn, rn, beta=0.1, alpha=0.1)
    assert out.dtype == torch.float32
    ref = losses.d2o_loss(pa.double(), ra.double(), pn.double(), rn.double(), beta=0.1, alpha=0.1)
    assert torch.allclose(out.double(), ref, atol=1e-6)


# ---- gradients ----------------------------------------------------------------------------------

def test_d2o_gradient_pushes_negative_down_and_anchors_up():
    pa, ra, pn, rn = _random_group(8, 3, seed=8)
    pa.requires_grad_(True)
    pn.requires_grad_(True)
    losses.d2o_loss(pa, ra, pn, rn, beta=0.1, alpha=0.1).sum().backward()
    # d loss / d log pi(y_l) > 0: a descent step lowers log pi(y_l); anchors move the other way.
    assert (pn.grad > 0).all()
    assert (pa.grad < 0).all()
    # Closed form: d/d pn of -logsig(z) = alpha * sigmoid(-z).
    with torch.no_grad():
        z = 0.1 * (pa - ra).mean(-1) - 0.1 * (pn - rn)
        assert torch.allclose(pn.grad, 0.1 * torch.sigmoid(-z))


def test_npo_and_ga_gradients_push_negative_down():
    _, _, pn, rn = _random_group(8, 0, seed=9)
    pn.requires_grad_(True)
    losses.npo_loss(pn, rn, beta=0.1).sum().backward()
    assert (pn.grad > 0).all()
    pn.grad = None
    losses.ga_loss(pn, torch.full((8,), 4)).sum().backward()
    assert torch.allclose(pn.grad, torch.full((8,), 0.25, dtype=torch.float64))


# ---- cross-check against TRL 1.16 --------------------------------------------------------------
# TRL computes DPO losses only inside the private DPOTrainer._compute_loss, which also runs the
# model. This CROSS-CHECK calls it unbound with a minimal stand-in `self` and a stand-in model whose
# per-token log-probs sum to chosen numbers, and with precomputed reference log-probs. It depends on
# TRL's private internals, so it runs only against the pinned TRL version.

def _trl_dpo_loss(loss_type: str, beta: float, pc, rc, pr, rr, chosen_len, rejected_len) -> float:
    from trl.trainer.dpo_trainer import DPOTrainer

    b, seq = len(pc), 1 + max(max(chosen_len), max(rejected_len))
    completion_mask = torch.zeros(2 * b, seq, dtype=torch.long)
    for row, n in enumerate(list(chosen_len) + list(rejected_len)):
        completion_mask[row, seq - n:] = 1
    # All of a sequence's log-prob on its last token: the sum over positions is what counts.
    per_token = torch.zeros(2 * b, seq - 1)
    per_token[:, -1] = torch.tensor(list(pc) + list(pr))

    class StandInModel:
        training = True

        def __call__(self, **kwargs):
            assert kwargs["fused_lm_head"]
            n = kwargs["input_ids"].shape
            return SimpleNamespace(log_probs=per_token, entropy=torch.zeros(n), mean_logits=torch.zeros(n),
                                   is_top1=torch.zeros(n, dtype=torch.bool))

    model = StandInModel()
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    self = SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        use_weighting=False, label_smoothing=0.0, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace())
    inputs = {"input_ids": torch.ones(2 * b, seq, dtype=torch.long), "attention_mask": torch.ones(2 * b, seq),
              "completion_mask": completion_mask, "ref_chosen_logps": torch.tensor(rc),
              "ref_rejected_logps": torch.tensor(rr)}
    return DPOTrainer._compute_loss(self, model, inputs, return_outputs=False).item()


def test_cross_check_trl_dpo_sigmoid_and_ipo():
    trl = pytest.importorskip("trl")
    if trl.__version__ != "1.16.0":
        pytest.skip(f"TRL cross-check is written against trl 1.16.0 internals, found {trl.__version__}")
    pc, rc = [-35.0, -12.5, -60.25], [-36.5, -11.0, -58.0]
    pr, rr = [-41.0, -20.0, -55.5], [-39.0, -22.5, -57.0]
    lc, lr = [7, 3, 12], [9, 5, 4]
    for beta in (0.1, 0.5):
        ours = losses.dpo_loss(torch.tensor(pc), torch.tensor(rc), torch.tensor(pr), torch.tensor(rr), beta=beta)
        assert ours.mean().item() == pytest.approx(_trl_dpo_loss("sigmoid", beta, pc, rc, pr, rr, lc, lr), rel=1e-6)
        ours = losses.ipo_loss(torch.tensor(pc), torch.tensor(rc), torch.tensor(pr), torch.tensor(rr), beta=beta,
                               chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr))
        assert ours.mean().item() == pytest.approx(_trl_dpo_loss("ipo", beta, pc, rc, pr, rr, lc, lr), rel=1e-6)
