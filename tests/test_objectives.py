"""Tests of stalerl.objectives against docs/OBJECTIVES.md and the papers' equations.

Expected values are computed by hand in each test (written out arithmetically), never copied
from the implementation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stalerl import objectives

SPEC_NAMES = [
    "grpo", "no_tr", "gspo", "gspo_token", "cispo", "m2po", "m2po_capped", "mispo",
    "mispo_token_only", "mispo_random_traj", "ac_mispo", "minpro", "tis",
]
SPEC_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
D = torch.float64


def e(x: float) -> float:
    return math.exp(x)


def t(x, dtype=D) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def call(obj, lr, adv, mask, old=None, rollout=None, grad=False, **kw):
    """Call ``obj`` with log_prob = old + lr (float64); returns (out, log_prob)."""
    lr = t(lr)
    old = t(old) if old is not None else -1.0 - 0.5 * torch.arange(lr.numel(), dtype=D).reshape(lr.shape) / lr.numel()
    log_prob = (old + lr).clone().requires_grad_(grad)
    out = obj(log_prob, old, t(adv), t(mask), rollout_log_prob=None if rollout is None else t(rollout), **kw)
    return out, log_prob


# The main small case: B=2, T=3, one padded token, A = (+1, -2). Padded log-ratio is huge on purpose.
LR = [[0.1, -0.3, 0.25], [0.05, -0.4, 7.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]]
LP = [[OLD[i][j] + LR[i][j] for j in range(3)] for i in range(2)]


def make_inputs(lr=LR, mask=MASK, adv=ADV, old=OLD):
    """``(log_prob, old_log_prob, advantages, mask)`` of the worked example; log_prob requires grad."""
    old_t = t(old)
    lp = (old_t + t(lr)).requires_grad_(True)
    return lp, old_t, t(adv), t(mask)


# ============================================================================ 1. contract
def test_available_lists_spec_names_in_order():
    assert objectives.available() == SPEC_NAMES


def test_build_unknown_name_lists_available():
    with pytest.raises(ValueError) as err:
        objectives.build("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in SPEC_NAMES:
        assert name in msg


def test_build_unknown_hparam_names_it():
    with pytest.raises(ValueError, match="bogus"):
        objectives.build("m2po", bogus=1)


@pytest.mark.parametrize("name,hp", [
    ("m2po", {"tau": "x"}), ("grpo", {"epsilon_low": "0.2"}), ("m2po", {"trust_region_only": 1}),
    ("mispo_random_traj", {"seed": "a"}), ("ac_mispo", {"beta": None}), ("m2po", {"tau": float("nan")}),
    ("grpo", {"dual_clip": 0.5}), ("m2po", {"stats_scope": "global"}),
    ("mispo_random_traj", {"seed": 1.5}), ("ac_mispo", {"warmup_train_steps": 2.5}),
    ("no_tr", {"loss_scale_factor": 0.0}), ("no_tr", {"loss_scale_factor": "x"}),
])
def test_ill_typed_or_invalid_hparams(name, hp):
    with pytest.raises(ValueError):
        objectives.build(name, **hp)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_bad_loss_agg_mode(name):
    with pytest.raises(ValueError, match="loss_agg_mode"):
        objectives.build(name, loss_agg_mode="token-median")


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_shape_and_dtype_errors_name_the_tensor(name):
    obj = objectives.build(name)
    lp, old, adv, mask = make_inputs()
    roll = old.clone()
    kw = {"rollout_log_prob": roll}
    with pytest.raises(ValueError, match="log_prob"):
        obj(lp[0], old[0], adv, mask[0], **kw)
    with pytest.raises(ValueError, match="old_log_prob"):
        obj(lp, old[:, :2], adv, mask, **kw)
    with pytest.raises(ValueError, match="advantages"):
        obj(lp, old, t([1.0, 2.0, 3.0]), mask, **kw)
    with pytest.raises(ValueError, match="advantages"):
        obj(lp, old, adv.unsqueeze(-1).expand(2, 2), mask, **kw)
    with pytest.raises(ValueError, match="response_mask"):
        obj(lp, old, adv, mask[:, :2], **kw)
    with pytest.raises(ValueError, match="log_prob"):
        obj(torch.zeros(2, 3, dtype=torch.long), old, adv, mask, **kw)
    with pytest.raises(ValueError, match="old_log_prob"):
        obj(lp, torch.zeros(2, 3, dtype=torch.int32), adv, mask, **kw)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_advantages_1d_equals_broadcast(name):
    lp, old, adv, mask = make_inputs()
    roll = old - 0.1
    a = objectives.build(name)(lp, old, adv, mask, rollout_log_prob=roll)
    b = objectives.build(name)(lp, old, adv.unsqueeze(-1).expand(2, 3).clone(), mask, rollout_log_prob=roll)
    assert torch.equal(a.loss, b.loss)
    assert a.metrics == b.metrics


def test_tis_requires_rollout_log_prob():
    lp, old, adv, mask = make_inputs()
    with pytest.raises(ValueError, match="rollout_log_prob"):
        objectives.build("tis")(lp, old, adv, mask)


def test_mispo_rollout_reference_requires_rollout_log_prob():
    lp, old, adv, mask = make_inputs()
    with pytest.raises(ValueError, match="rollout_log_prob"):
        objectives.build("mispo", reference="rollout")(lp, old, adv, mask)


# ============================================================================ 2. hand-computed values
def test_grpo_clips_both_sides():
    out, lp = call(objectives.build("grpo"), LR, ADV, MASK, old=OLD, grad=True)
    # seq 0 (A=+1): r=e^.1 inside; r=e^-.3 < .8 but A>0 keeps min=r; r=e^.25 > 1.2 -> 1.2
    # seq 1 (A=-2): r=e^.05 inside; r=e^-.4 < .8 with A<0 -> clipped to .8; padded token ignored
    expected = -(e(0.1) + e(-0.3) + 1.2 - 2 * e(0.05) - 2 * 0.8) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["actor/clipped_above_frac"] == pytest.approx(1 / 5)
    assert out.metrics["actor/clipped_below_frac"] == pytest.approx(1 / 5)
    out.loss.backward()
    # clipped tokens get no gradient; unclipped get -A r / 5
    g = torch.tensor([[-e(0.1), -e(-0.3), 0.0], [2 * e(0.05), 0.0, 0.0]], dtype=D) / 5
    torch.testing.assert_close(lp.grad, g, atol=1e-12, rtol=0)


def test_grpo_dual_clip():
    lr = [[0.1, -0.3, 0.25], [1.5, -0.4, 0.0]]
    no_dual, _ = call(objectives.build("grpo"), lr, ADV, MASK, old=OLD)
    dual, _ = call(objectives.build("grpo", dual_clip=3.0), lr, ADV, MASK, old=OLD)
    # A=-2, r=e^1.5=4.48: PPO gives -A*r = 2*4.48; dual clip bounds it by -A*c = 6
    assert no_dual.loss.item() == pytest.approx(-(e(0.1) + e(-0.3) + 1.2 - 2 * e(1.5) - 2 * 0.8) / 5, abs=1e-12)
    assert dual.loss.item() == pytest.approx(-(e(0.1) + e(-0.3) + 1.2 - 2 * 3.0 - 2 * 0.8) / 5, abs=1e-12)
    assert dual.metrics["actor/pg_clipfrac_lower"] == pytest.approx(1 / 5)


def test_grpo_asymmetric_clip_higher():
    out, _ = call(objectives.build("grpo", epsilon_low=0.2, epsilon_high=0.28), LR, ADV, MASK, old=OLD)
    # e^.25 = 1.284 > 1.28 -> 1.28
    assert out.loss.item() == pytest.approx(-(e(0.1) + e(-0.3) + 1.28 - 2 * e(0.05) - 2 * 0.8) / 5, abs=1e-12)


def test_no_tr():
    out, _ = call(objectives.build("no_tr"), LR, ADV, MASK, old=OLD)
    expected = -(e(0.1) + e(-0.3) + e(0.25) - 2 * e(0.05) - 2 * e(-0.4)) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", lambda v: (v[0] + v[1] + v[2] + v[3] + v[4]) / 5),
    ("seq-mean-token-mean", lambda v: ((v[0] + v[1] + v[2]) / 3 + (v[3] + v[4]) / 2) / 2),
    ("seq-mean-token-sum", lambda v: ((v[0] + v[1] + v[2]) + (v[3] + v[4])) / 2),
    ("seq-mean-token-sum-norm", lambda v: ((v[0] + v[1] + v[2]) + (v[3] + v[4])) / 2 / 3),
])
def test_loss_agg_modes_by_hand(mode, expected):
    v = [-e(0.1), -e(-0.3), -e(0.25), 2 * e(0.05), 2 * e(-0.4)]  # per-token -A r of no_tr
    out, _ = call(objectives.build("no_tr", loss_agg_mode=mode), LR, ADV, MASK, old=OLD)
    assert out.loss.item() == pytest.approx(expected(v), abs=1e-12)


def test_seq_mean_token_sum_norm_scale_factor():
    v = [-e(0.1), -e(-0.3), -e(0.25), 2 * e(0.05), 2 * e(-0.4)]
    out, _ = call(objectives.build("no_tr", loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=10.0),
                  LR, ADV, MASK, old=OLD)
    assert out.loss.item() == pytest.approx(sum(v) / 2 / 10, abs=1e-12)


def test_gspo_sequence_clip():
    # s_0 = exp((.1 - .3 + .25)/3) = 1.0168 > 1 + 4e-4, A>0 -> 1.0004
    # s_1 = exp((.05 - .4)/2) = 0.8395 < 1 - 3e-4, A<0 -> 0.9997
    for name in ("gspo", "gspo_token"):
        out, lp = call(objectives.build(name), LR, ADV, MASK, old=OLD, grad=True)
        assert out.loss.item() == pytest.approx(-((1 + 4e-4) * 1 - 2 * (1 - 3e-4)) / 2, abs=1e-12)
        out.loss.backward()
        assert lp.grad.abs().max().item() == 0.0  # both sequences clipped


def test_gspo_unclipped_value_and_gradient():
    s0, s1 = e((0.1 - 0.3 + 0.25) / 3), e((0.05 - 0.4) / 2)
    for name in ("gspo", "gspo_token"):
        out, lp = call(objectives.build(name, epsilon_low=0.5, epsilon_high=0.5), LR, ADV, MASK, old=OLD, grad=True)
        assert out.loss.item() == pytest.approx(-(s0 * 1 - 2 * s1) / 2, abs=1e-12)
        out.loss.backward()
        # d/dlogp_t of -(1/B) A_i s_i = -(1/B) A_i s_i / |o_i|
        g = torch.tensor([[-s0 / 3] * 3, [2 * s1 / 2, 2 * s1 / 2, 0.0]], dtype=D) / 2
        torch.testing.assert_close(lp.grad, g, atol=1e-12, rtol=0)


def test_gspo_token_per_token_advantages():
    adv = [[1.0, 2.0, 3.0], [-1.0, 0.5, 9.0]]
    s0, s1 = e((0.1 - 0.3 + 0.25) / 3), e((0.05 - 0.4) / 2)
    out, lp = call(objectives.build("gspo_token", epsilon_low=0.5, epsilon_high=0.5), LR, adv, MASK, old=OLD, grad=True)
    assert out.loss.item() == pytest.approx(-((s0 * 1 + s0 * 2 + s0 * 3) / 3 + (-s1 + 0.5 * s1) / 2) / 2, abs=1e-12)
    out.loss.backward()
    # GSPO-token gradient per token: -(1/B)(1/|o_i|) A_t s_i
    g = torch.tensor([[-s0 / 3, -2 * s0 / 3, -3 * s0 / 3], [s1 / 2, -0.5 * s1 / 2, 0.0]], dtype=D) / 2
    torch.testing.assert_close(lp.grad, g, atol=1e-12, rtol=0)


def test_cispo():
    lr = [[0.1, -0.3, 2.0], [0.05, -0.4, 0.0]]  # e^2 = 7.39 -> weight 5
    lp = [[OLD[i][j] + lr[i][j] for j in range(3)] for i in range(2)]
    out, g = call(objectives.build("cispo"), lr, ADV, MASK, old=OLD, grad=True)
    w = [[e(0.1), e(-0.3), 5.0], [e(0.05), e(-0.4)]]
    expected = -(w[0][0] * lp[0][0] + w[0][1] * lp[0][1] + w[0][2] * lp[0][2]
                 - 2 * w[1][0] * lp[1][0] - 2 * w[1][1] * lp[1][1]) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    out.loss.backward()
    grad = torch.tensor([[-w[0][0], -w[0][1], -5.0], [2 * w[1][0], 2 * w[1][1], 0.0]], dtype=D) / 5
    torch.testing.assert_close(g.grad, grad, atol=1e-12, rtol=0)
    assert out.metrics["actor/clipped_above_frac"] == pytest.approx(1 / 5)


def test_cispo_paper_preset_clips_low():
    out, _ = call(objectives.build("cispo_m2po_paper"), LR, ADV, MASK, old=OLD)
    lp = LP
    w = [[e(0.1), 0.8, 1.2], [e(0.05), 0.8]]  # clip to [0.8, 1.2]
    expected = -(w[0][0] * lp[0][0] + w[0][1] * lp[0][1] + w[0][2] * lp[0][2]
                 - 2 * w[1][0] * lp[1][0] - 2 * w[1][1] * lp[1][1]) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_m2po_masks_largest_trust_region_tokens():
    # trust-region tokens: (0,0) lr=.1 A>0; (0,2) lr=.25 A>0; (1,1) lr=-.4 A<0
    # M2 = {.01, .0625, .16}: mean .0775 > .04; drop .16 -> mean .03625 <= .04
    out, lp = call(objectives.build("m2po"), LR, ADV, MASK, old=OLD, grad=True)
    expected = -(e(0.1) + e(-0.3) + e(0.25) - 2 * e(0.05) + 0.0) / 5  # denominator: all 5 tokens
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    kept = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert torch.equal(out.extras["token_kept"], kept)
    assert out.metrics["actor/m2_before"] == pytest.approx((0.01 + 0.0625 + 0.16) / 3)
    assert out.metrics["actor/m2_after"] == pytest.approx((0.01 + 0.0625) / 2)
    out.loss.backward()
    assert lp.grad[1, 1].item() == 0.0
    # masked tokens stay in the per-sequence denominators too
    out, _ = call(objectives.build("m2po", loss_agg_mode="seq-mean-token-mean"), LR, ADV, MASK, old=OLD)
    expected = -((e(0.1) + e(-0.3) + e(0.25)) / 3 + (-2 * e(0.05) + 0.0) / 2) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_m2po_smaller_tau_and_all_tokens():
    # tau=.03: .03625 > .03 -> also drop .0625 -> .01
    out, _ = call(objectives.build("m2po", tau=0.03), LR, ADV, MASK, old=OLD)
    assert out.loss.item() == pytest.approx(-(e(0.1) + e(-0.3) - 2 * e(0.05)) / 5, abs=1e-12)
    # all tokens: {.01,.09,.0625,.0025,.16}: .065 -> drop .16: .04125 -> drop .09: .025
    out, _ = call(objectives.build("m2po", trust_region_only=False), LR, ADV, MASK, old=OLD)
    assert out.loss.item() == pytest.approx(-(e(0.1) + e(0.25) - 2 * e(0.05)) / 5, abs=1e-12)


def test_m2po_capped_by_hand():
    # harmful Delta^2 = {.01, .0625, .16}, N=3, tau*N = .12 < .2325
    # c^2 in [.01, .0625]: .01 + 2 c^2 = .12 -> c^2 = .055
    c = math.sqrt(0.055)
    out, _ = call(objectives.build("m2po_capped"), LR, ADV, MASK, old=OLD)
    assert out.metrics["actor/m2_cap"] == pytest.approx(c, abs=1e-12)
    # PPO clip to [e^-c, e^c] = [.791, 1.264]: e^.25 -> e^c (A>0); e^-.4 -> e^-c (A<0); e^-.3 < e^-c with A>0 stays
    expected = -(e(0.1) + e(-0.3) + e(c) - 2 * e(0.05) - 2 * e(-c)) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_m2po_capped_no_cap_when_budget_not_exceeded():
    out, _ = call(objectives.build("m2po_capped", tau=0.1), LR, ADV, MASK, old=OLD)  # .2325 <= .3
    assert out.loss.item() == pytest.approx(-(e(0.1) + e(-0.3) + e(0.25) - 2 * e(0.05) - 2 * e(-0.4)) / 5, abs=1e-12)


# MIS-PO case: B=3, T=3, one padded token, A = (1, -1, 2)
MIS_LR = [[0.002, -0.004, 0.0], [0.9, -0.9, 0.0015], [0.01, 0.02, 0.0]]
MIS_MASK = [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
MIS_ADV = [1.0, -1.0, 2.0]
# trajectory log-ratios: -0.002/3 (in band), 0.0015/3 (in band), 0.015 (out of band: e^.015 > 1.001)


def test_mispo():
    out, _ = call(objectives.build("mispo"), MIS_LR, MIS_ADV, MIS_MASK)
    # seq0 all tokens kept; seq1 tokens e^.9 > 2 and e^-.9 < .5 rejected, third kept; seq2 rejected
    expected = -(e(0.002) + e(-0.004) + e(0.0) - e(0.0015)) / 8
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["actor/traj_accept_frac"] == pytest.approx(2 / 3)
    assert out.extras["traj_accepted"].tolist() == [True, True, False]


def test_mispo_token_only():
    out, _ = call(objectives.build("mispo_token_only"), MIS_LR, MIS_ADV, MIS_MASK)
    expected = -(e(0.002) + e(-0.004) + e(0.0) - e(0.0015) + 2 * e(0.01) + 2 * e(0.02)) / 8
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_mispo_rollout_reference():
    old = torch.zeros(3, 3, dtype=D)
    roll = old - t(MIS_LR)  # ratios against the rollout are the MIS_LR ones; against old they are 0
    lp = old.clone()
    out = objectives.build("mispo", reference="rollout")(lp, old, t(MIS_ADV), t(MIS_MASK), rollout_log_prob=roll)
    assert out.extras["traj_accepted"].tolist() == [True, True, False]
    out2 = objectives.build("mispo")(lp, old, t(MIS_ADV), t(MIS_MASK), rollout_log_prob=roll)
    assert out2.extras["traj_accepted"].tolist() == [True, True, True]


def test_mispo_random_traj_zero_and_all():
    # N_acc = 0: every trajectory out of band -> nothing accepted, loss exactly 0
    lr0 = [[0.1, 0.1, 0.1], [-0.2, 0.0, 0.0], [0.05, 0.05, 0.0]]
    out, _ = call(objectives.build("mispo_random_traj", seed=3), lr0, MIS_ADV, MIS_MASK)
    assert out.loss.item() == 0.0
    assert out.extras["traj_accepted"].tolist() == [False, False, False]
    assert out.metrics["actor/n_accept"] == 0
    # N_acc = all: every trajectory in band -> same as mispo_token_only
    lr1 = [[0.0001, -0.0002, 0.0], [0.5, -0.5, 0.0003], [0.0, 0.0004, 0.0]]
    out, _ = call(objectives.build("mispo_random_traj", seed=3), lr1, MIS_ADV, MIS_MASK)
    expected = -(e(0.0001) + e(-0.0002) + e(0.0) - e(0.5) - e(-0.5) - e(0.0003) + 2 * e(0.0) + 2 * e(0.0004)) / 8
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.extras["traj_accepted"].tolist() == [True, True, True]


def test_ac_mispo_first_step():
    obj = objectives.build("ac_mispo")
    out, _ = call(obj, MIS_LR, MIS_ADV, MIS_MASK)
    b0 = math.log(1.01)
    target = 0.4 - (0.4 - 0.2) * 1 / 200
    z = sorted([0.002 / 3, 0.0015 / 3, 0.015])
    pos = target * (3 - 1)  # linear interpolation, numpy default
    q = z[0] + (pos - 0) * (z[1] - z[0])
    b1 = min(max(0.9 * b0 + 0.1 * q, math.log(1.0002)), math.log(1.01))
    assert out.metrics["actor/traj_bound"] == pytest.approx(b1, abs=1e-12)
    assert out.metrics["actor/accept_target"] == pytest.approx(target)
    # |log rho| = .015 > b1 ~ .009: seq2 rejected; seq0 and seq1 accepted (like mispo)
    assert out.extras["traj_accepted"].tolist() == [True, True, False]
    assert out.loss.item() == pytest.approx(-(e(0.002) + e(-0.004) + e(0.0) - e(0.0015)) / 8, abs=1e-12)


def test_minpro_prefix_min():
    # seq0 r dips then rises: lr = .3, -.5, .2, -.1 -> log rho_bar = 0, .3, -.5, -.5
    # seq1 left-padded (pad lr = -5 must be ignored): lr = ., .4, .1, .2 -> log rho_bar = ., 0, .4, .1
    lr = [[0.3, -0.5, 0.2, -0.1], [-5.0, 0.4, 0.1, 0.2]]
    mask = [[1, 1, 1, 1], [0, 1, 1, 1]]
    old = [[-1.0, -2.0, -0.5, -0.3], [-1.5, -0.7, -3.0, -0.2]]
    lp = [[old[i][j] + lr[i][j] for j in range(4)] for i in range(2)]
    adv = [1.0, -1.0]
    out, g = call(objectives.build("minpro"), lr, adv, mask, old=old, grad=True)
    w0 = [e(0 + 0.3), e(0.3 - 0.5), e(-0.5 + 0.2), e(-0.5 - 0.1)]
    w1 = [None, e(0 + 0.4), e(0.4 + 0.1), e(0.1 + 0.2)]
    expected = -(sum(w0[j] * lp[0][j] for j in range(4)) - sum(w1[j] * lp[1][j] for j in range(1, 4))) / 7
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    rho_bar_mean = (1 + e(0.3) + e(-0.5) + e(-0.5) + 1 + e(0.4) + e(0.1)) / 7
    assert out.metrics["actor/prefix_ratio_mean"] == pytest.approx(rho_bar_mean, abs=1e-12)
    out.loss.backward()
    grad = torch.tensor([[-w for w in w0], [0.0] + w1[1:]], dtype=D) / 7
    torch.testing.assert_close(g.grad, grad, atol=1e-12, rtol=0)
    # with eps_high = .2 every weight above 1.2 is truncated: e^.3, e^.4, e^.5, e^.3
    out, _ = call(objectives.build("minpro", epsilon_high=0.2), lr, adv, mask, old=old)
    w0c = [1.2, e(-0.2), e(-0.3), e(-0.6)]
    expected = -(sum(w0c[j] * lp[0][j] for j in range(4)) - 1.2 * (lp[1][1] + lp[1][2] + lp[1][3])) / 7
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_tis():
    old = t(OLD)
    roll = old - t([[0.1, 1.0, -0.2], [0.0, 0.3, 0.0]])
    lp = old + t(LR)
    out = objectives.build("tis")(lp, old, t(ADV), t(MASK), rollout_log_prob=roll)
    w = [e(0.1), 2.0, e(-0.2), 1.0, e(0.3)]  # min(pi_behav / pi_rollout, 2): e^1 truncated to 2
    expected = -(w[0] * e(0.1) + w[1] * e(-0.3) + w[2] * 1.2 - w[3] * 2 * e(0.05) - w[4] * 2 * 0.8) / 5
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["actor/tis_truncated_frac"] == pytest.approx(1 / 5)


# ============================================================================ 3. on-policy identity
def _plain_pg(log_prob, adv, mask, mode):
    v = adv * log_prob * mask
    n_seq = (mask.sum(-1) > 0).sum()
    if mode == "token-mean":
        return -v.sum() / mask.sum()
    if mode == "seq-mean-token-mean":
        return -(v.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seq
    if mode == "seq-mean-token-sum":
        return -v.sum() / n_seq
    return -v.sum() / n_seq / log_prob.shape[-1]


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("mode", SPEC_MODES + ["default"])
def test_on_policy_gradient_is_plain_pg(name, mode):
    g = torch.Generator().manual_seed(7)
    B, T = 6, 7
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    adv = torch.randn(B, generator=g, dtype=D)
    adv[2] = 0.0
    mask = torch.ones(B, T, dtype=D)
    mask[0, 5:] = 0
    mask[3, 2:] = 0
    mask[4, :1] = 0
    kw = {} if mode == "default" else {"loss_agg_mode": mode}
    ref_mode = ("seq-mean-token-mean" if name in ("gspo", "gspo_token") else "token-mean") if mode == "default" else mode
    obj = objectives.build(name, **kw)
    lp = old.clone().requires_grad_(True)
    out = obj(lp, old, adv, mask, rollout_log_prob=old.clone())
    out.loss.backward()
    lp_ref = old.clone().requires_grad_(True)
    _plain_pg(lp_ref, adv.unsqueeze(-1), mask, ref_mode).backward()
    torch.testing.assert_close(lp.grad, lp_ref.grad, atol=1e-10, rtol=0)


# ============================================================================ 4. robustness
def _all_finite(out):
    return torch.isfinite(out.loss).item() and all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_empty_mask(name):
    lp = torch.randn(2, 4, dtype=torch.float32).requires_grad_(True)
    old = torch.randn(2, 4)
    out = objectives.build(name)(lp, old, torch.tensor([1.0, -1.0]), torch.zeros(2, 4), rollout_log_prob=old - 0.1)
    assert out.loss.item() == 0.0
    assert _all_finite(out)
    out.loss.backward()
    assert lp.grad is not None and torch.isfinite(lp.grad).all()


@pytest.mark.parametrize("name", SPEC_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(name, dtype):
    g = torch.Generator().manual_seed(1)
    old = (-torch.rand(3, 5, generator=g) * 2).to(dtype)
    lp = (old.float() + 0.05 * torch.randn(3, 5, generator=g)).to(dtype).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=dtype)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    out = objectives.build(name)(lp, old, adv, mask, rollout_log_prob=old)
    assert out.loss.dtype == torch.float32
    assert _all_finite(out)
    out.loss.backward()
    assert lp.grad is not None and lp.grad.dtype == dtype and torch.isfinite(lp.grad.float()).all()


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_huge_log_ratios_stay_finite(name):
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(4, 6, generator=g) * 3
    sign = torch.where(torch.rand(4, 6, generator=g) > 0.5, 1.0, -1.0)
    lp = (old + sign * 1e4).requires_grad_(True)
    roll = old - sign * 1e4
    mask = torch.ones(4, 6)
    mask[2, 4:] = 0
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5])
    out = objectives.build(name)(lp, old, adv, mask, rollout_log_prob=roll)
    assert _all_finite(out)
    out.loss.backward()
    assert torch.isfinite(lp.grad).all()
    # same with the padded positions holding huge values only
    lp2 = old.clone()
    lp2[2, 4:] = 1e4
    out = objectives.build(name)(lp2.requires_grad_(True), old, adv, mask, rollout_log_prob=old)
    assert _all_finite(out)


# ============================================================================ 5. M2PO
def _reference_m2po_mask(lr: np.ndarray, adv: np.ndarray, mask: np.ndarray, tau: float, tr_only=True):
    """Algorithm 1 literally: remove the argmax trust-region token while the mean exceeds tau.

    Among equal maxima the latest token (batch order) is removed first, the implementation's
    documented tie convention ("ties kept in batch order")."""
    m2 = lr ** 2
    if tr_only:
        cand = ((adv > 0) & (lr > 0)) | ((adv < 0) & (lr < 0))
    else:
        cand = np.ones_like(mask, dtype=bool)
    cand &= mask > 0
    idx = list(np.flatnonzero(cand.reshape(-1)))
    flat = m2.reshape(-1)
    remaining = np.zeros(flat.shape, dtype=bool)
    remaining[idx] = True
    M = np.ones(flat.shape, dtype=bool)
    while remaining.any() and flat[remaining].mean() > tau:
        vals = np.where(remaining, flat, -np.inf)
        j = len(vals) - 1 - int(np.argmax(vals[::-1]))
        M[j] = False
        remaining[j] = False
    return M.reshape(lr.shape), remaining.reshape(lr.shape), cand


def _random_batch(seed, B, T, scale=0.3, dtype=D):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    lr = torch.randn(B, T, generator=g, dtype=dtype) * scale * torch.rand(B, 1, generator=g, dtype=dtype) * 2
    adv = torch.randn(B, generator=g, dtype=dtype)
    adv[torch.rand(B, generator=g) < 0.2] = 0.0
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(dtype)
    return old + lr, old, adv, mask


@pytest.mark.parametrize("seed", range(24))
def test_m2po_mask_matches_algorithm_1(seed):
    rng = np.random.default_rng(seed)
    B = int(rng.integers(1, 40))
    T = int(rng.integers(1, 5000 // B + 1))
    tr_only = bool(seed % 4 != 3)
    lp, old, adv, mask = _random_batch(seed, B, T, scale=float(rng.choice([0.05, 0.2, 0.5])))
    if seed % 6 == 5:
        tau = 0.04
    else:  # a budget below the batch's M2 so that tokens must go
        lr_ = lp - old
        a_ = adv.unsqueeze(-1)
        c_ = (((a_ > 0) & (lr_ > 0)) | ((a_ < 0) & (lr_ < 0)) | (not tr_only)) & (mask > 0)
        tau = float(lr_[c_].square().mean()) * float(rng.uniform(0.1, 0.9)) if c_.any() else 0.04
    out = objectives.build("m2po", tau=tau, trust_region_only=tr_only)(lp, old, adv, mask)
    kept = out.extras["token_kept"].numpy()
    lr = (lp - old).numpy()
    a = adv.unsqueeze(-1).expand(B, T).numpy()
    ref_M, remaining, cand = _reference_m2po_mask(lr, a, mask.numpy(), tau, tr_only)
    # token for token: kept = valid & M
    np.testing.assert_array_equal(kept, ref_M & (mask.numpy() > 0))
    masked = (mask.numpy() > 0) & ~kept
    # only candidate tokens are ever masked (A=0 and non-trust-region tokens never)
    assert not (masked & ~cand).any()
    if tr_only:
        assert not (masked & (a == 0)).any()
    # constraint holds after masking, and each removal was necessary
    m2 = lr ** 2
    rem = cand & kept
    if rem.any():
        assert m2[rem].mean() <= tau
    if masked.any():
        smallest = m2[masked].min()
        assert (m2[rem].sum() + smallest) / (rem.sum() + 1) > tau
    assert out.metrics["actor/m2_masked_tokens"] == masked.sum()
    if seed % 6 != 5:
        assert masked.any()


def test_m2po_ties_follow_batch_order():
    # trust-region M2 = {.09, .01, .09, .09, .09} with tau = .06: keeping .01 and one .09 gives
    # mean .05 <= .06, two .09's give .19/3 = .0633 > .06 -> three of the four equal .09's go
    lr = [[0.3, 0.1, 0.3], [0.3, 0.3, 0.0]]
    mask = [[1, 1, 1], [1, 1, 1]]
    out, _ = call(objectives.build("m2po", tau=0.06), lr, [1.0, 1.0], mask)
    kept = out.extras["token_kept"]
    assert int((~kept).sum()) == 3
    # the first .09 in batch order is the one kept
    assert kept.tolist() == [[True, True, False], [False, False, True]]


def test_m2po_micro_batches_match_full_batch():
    lp1, old1, adv1, m1 = _random_batch(11, 5, 9, scale=0.4)
    lp2, old2, adv2, m2 = _random_batch(12, 3, 14, scale=0.4)
    # full batch: pad the first micro-batch to T=14
    pad = lambda x, v=0.0: torch.cat([x, torch.full((x.shape[0], 5), v, dtype=x.dtype)], 1)  # noqa: E731
    lp = torch.cat([pad(lp1), lp2])
    old = torch.cat([pad(old1), old2])
    mask = torch.cat([pad(m1), m2])
    adv = torch.cat([adv1, adv2])
    for name in ("m2po", "m2po_capped"):
        obj = objectives.build(name, tau=0.02)
        full = obj(lp, old, adv, mask)
        stats = obj.batch_stats([lp1, lp2], [old1, old2], [adv1, adv2], [m1, m2])
        o1 = obj(lp1, old1, adv1, m1, batch_stats=stats)
        o2 = obj(lp2, old2, adv2, m2, batch_stats=stats)
        torch.testing.assert_close(o1.loss + o2.loss, full.loss, atol=1e-12, rtol=0)
        if name == "m2po":
            kept = torch.cat([pad(o1.extras["token_kept"].to(D)), o2.extras["token_kept"].to(D)]) > 0
            assert torch.equal(kept, full.extras["token_kept"])
            assert full.metrics["actor/m2_masked_tokens"] > 0
        # micro scope: each call its own statistics -> differs here
        micro = objectives.build(name, tau=0.02, stats_scope="micro")
        s_micro = micro.batch_stats([lp1, lp2], [old1, old2], [adv1, adv2], [m1, m2])
        solo1 = micro(lp1, old1, adv1, m1)
        assert s_micro.num_tokens == stats.num_tokens
        if name == "m2po":
            alone = objectives.build(name, tau=0.02)(lp1, old1, adv1, m1).extras["token_kept"]
            assert torch.equal(solo1.extras["token_kept"], alone)


def test_m2po_micro_scope_differs():
    # micro-batch 1 has small log-ratios, micro-batch 2 large ones: mini-batch M2 masks tokens of
    # micro-batch 2 only; per micro-batch, micro-batch 1 keeps everything, micro-batch 2 masks more.
    adv = t([1.0, 1.0])
    m = torch.ones(2, 4, dtype=D)
    old = torch.zeros(2, 4, dtype=D)
    lp1 = t([[0.05, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05]])  # M2 = .0025 each
    lp2 = t([[0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.25]])  # M2 = .09 / .0625
    tau = 0.04
    mini = objectives.build("m2po", tau=tau)
    s = mini.batch_stats([lp1, lp2], [old, old], [adv, adv], [m, m])
    k2_mini = mini(lp2, old, adv, m, batch_stats=s).extras["token_kept"]
    micro = objectives.build("m2po", tau=tau, stats_scope="micro")
    k2_micro = micro(lp2, old, adv, m).extras["token_kept"]
    # mini: 8 x .0025 + .0625 + k x .09 <= .04 (9+k): .02 + .0625 + .09k <= .36 + .04k -> k <= 5.55 -> 5 of 7 .09's kept
    assert int(k2_mini.sum()) == 1 + 5
    # micro: .0625 + k .09 <= .04 (1+k) -> .0225 <= -.05k -> k = 0, and .0625 > .04 -> nothing kept
    assert int(k2_micro.sum()) == 0


def test_m2po_capped_solution_property():
    for seed in range(10):
        lp, old, adv, mask = _random_batch(100 + seed, 20, 50, scale=0.5)
        obj = objectives.build("m2po_capped")
        out = obj(lp, old, adv, mask)
        lr = lp - old
        a = adv.unsqueeze(-1).expand_as(lr)
        harm = (((a > 0) & (lr > 0)) | ((a < 0) & (lr < 0))) & (mask > 0)
        d2 = lr[harm].square()
        c = out.metrics["actor/m2_cap"]
        if d2.sum() > 0.04 * d2.numel():
            assert torch.minimum(d2, torch.tensor(c * c, dtype=D)).sum().item() == pytest.approx(
                0.04 * d2.numel(), abs=1e-9)
        else:  # pragma: no cover - scale chosen so this does not happen
            assert c == 20.0


# ============================================================================ 6. AC-MIS-PO controller
def _batch_with_traj_log_ratios(zs, T=4, seed=0):
    """log_prob whose per-trajectory mean log-ratio equals zs exactly (to fp64 rounding)."""
    g = torch.Generator().manual_seed(seed)
    B = len(zs)
    old = -torch.rand(B, T, generator=g, dtype=D) * 2
    noise = torch.randn(B, T, generator=g, dtype=D) * 0.01
    noise = noise - noise.mean(-1, keepdim=True)
    lp = old + t(zs).unsqueeze(-1) + noise
    return lp, old, torch.randn(B, generator=g, dtype=D), torch.ones(B, T, dtype=D)


def _quantile_linear(values, q):
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


AC_BATCHES = [
    [0.001, -0.002, 0.004, -0.0005, 0.003],
    [0.0004, 0.0006, -0.0002, 0.0001, -0.0003],
    [-0.00005, 0.0001, 0.00002, -0.00003, 0.00001],
    [0.00001, -0.00002, 0.00003, 0.0, -0.00001],
    [0.2, -0.3, 0.1, 0.5, -0.4],  # drives the bound up into b_max (beta = .9)
    [0.005, 0.006, -0.007, 0.008, 0.009],
]


@pytest.mark.parametrize("beta,clip", [(0.9, "max"), (0.3, "min")])
def test_ac_mispo_controller_sequence_and_state(beta, clip):
    b_min, b_max = math.log(1.0002), math.log(1.01)
    warmup = 3
    obj = objectives.build("ac_mispo", warmup_train_steps=warmup, beta=beta)
    b = b_max  # b_0
    hit = set()
    for k, zs in enumerate(AC_BATCHES, start=1):  # k starts at 1
        target = 0.4 - (0.4 - 0.2) * k / warmup if k <= warmup else 0.2
        cand = _quantile_linear([abs(z) for z in zs], target)
        raw = beta * b + (1 - beta) * cand
        b = min(max(raw, b_min), b_max)
        if raw < b_min:
            hit.add("min")
        if raw > b_max:
            hit.add("max")
        lp, old, adv, mask = _batch_with_traj_log_ratios(zs, seed=k)
        if k == 4:  # checkpoint / restore into a fresh objective mid-run: identical next bound
            fresh = objectives.build("ac_mispo", warmup_train_steps=warmup, beta=beta)
            fresh.load_state_dict(obj.state_dict())
            bound_old = obj(lp, old, adv, mask).metrics["actor/traj_bound"]
            assert fresh(lp, old, adv, mask).metrics["actor/traj_bound"] == bound_old
            assert bound_old == pytest.approx(b, rel=1e-9, abs=1e-12)
            obj = fresh
            continue
        out = obj(lp, old, adv, mask)
        assert out.metrics["actor/traj_bound"] == pytest.approx(b, rel=1e-9, abs=1e-12), k
        assert out.metrics["actor/accept_target"] == pytest.approx(target)
        assert out.metrics["actor/controller_step"] == k
        # trajectories accepted exactly where |log rho| <= b (token ratios all in [0.5, 2])
        assert out.extras["traj_accepted"].tolist() == [abs(z) <= b for z in zs]
    assert clip in hit


def test_ac_mispo_state_dict_roundtrip_fresh():
    obj = objectives.build("ac_mispo")
    for k in range(3):
        obj(*_batch_with_traj_log_ratios([0.001 * (k + 1), -0.002, 0.0005], seed=k))
    state = obj.state_dict()
    assert state["step"] == 3
    fresh = objectives.build("ac_mispo")
    fresh.load_state_dict(state)
    batch = _batch_with_traj_log_ratios([0.003, -0.001, 0.0002], seed=9)
    assert fresh(*batch).metrics["actor/traj_bound"] == obj(*batch).metrics["actor/traj_bound"]
    assert fresh.state_dict() == obj.state_dict()


# ============================================================================ 7. RandomTraj
def _traj_batch(seed, B=10, frac_in=0.4):
    g = torch.Generator().manual_seed(seed)
    zs = [(0.0001 if torch.rand(1, generator=g).item() < frac_in else 0.05) * (1 if i % 2 else -1) for i in range(B)]
    return _batch_with_traj_log_ratios(zs, T=5, seed=seed)


def test_random_traj_accepts_mispo_count():
    for seed in range(5):
        lp, old, adv, mask = _traj_batch(seed, B=12)
        mask[3, 2:] = 0
        mask[7] = 0  # an empty trajectory is never drawn
        n_mispo = int(objectives.build("mispo")(lp, old, adv, mask).extras["traj_accepted"].sum())
        out = objectives.build("mispo_random_traj", seed=seed)(lp, old, adv, mask)
        acc = out.extras["traj_accepted"]
        assert int(acc.sum()) == n_mispo
        assert not acc[7]


def test_random_traj_seeding_and_state():
    lp, old, adv, mask = _traj_batch(0, B=30, frac_in=0.5)
    a = objectives.build("mispo_random_traj", seed=1)
    b = objectives.build("mispo_random_traj", seed=1)
    c = objectives.build("mispo_random_traj", seed=2)
    ra = a(lp, old, adv, mask).extras["traj_accepted"]
    assert torch.equal(ra, b(lp, old, adv, mask).extras["traj_accepted"])
    assert not torch.equal(ra, c(lp, old, adv, mask).extras["traj_accepted"])
    state = a.state_dict()
    fresh = objectives.build("mispo_random_traj", seed=99)
    fresh.load_state_dict(state)
    assert torch.equal(a(lp, old, adv, mask).extras["traj_accepted"], fresh(lp, old, adv, mask).extras["traj_accepted"])


def test_random_traj_micro_batches_match_full_batch():
    lp, old, adv, mask = _traj_batch(4, B=12)
    full = objectives.build("mispo_random_traj", seed=5)(lp, old, adv, mask)
    obj = objectives.build("mispo_random_traj", seed=5)
    s = obj.batch_stats([lp[:5], lp[5:]], [old[:5], old[5:]], [adv[:5], adv[5:]], [mask[:5], mask[5:]])
    o1 = obj(lp[:5], old[:5], adv[:5], mask[:5], batch_stats=s)
    o2 = obj(lp[5:], old[5:], adv[5:], mask[5:], batch_stats=s)
    assert torch.equal(torch.cat([o1.extras["traj_accepted"], o2.extras["traj_accepted"]]), full.extras["traj_accepted"])
    torch.testing.assert_close(o1.loss + o2.loss, full.loss, atol=1e-12, rtol=0)


def test_random_traj_uniform():
    zs = [0.0001, 0.0002, -0.0001, 0.05, 0.06, -0.05, 0.07, 0.08, -0.09, 0.1]  # N_acc = 3 of 10
    lp, old, adv, mask = _batch_with_traj_log_ratios(zs, T=3, seed=3)
    obj = objectives.build("mispo_random_traj", seed=0)
    n = 2000
    counts = torch.zeros(10)
    for _ in range(n):
        acc = obj(lp, old, adv, mask).extras["traj_accepted"]
        assert int(acc.sum()) == 3
        counts += acc.to(torch.float32)
    p = 0.3
    sigma = math.sqrt(n * p * (1 - p))
    assert ((counts - n * p).abs() < 5 * sigma).all(), counts
    # chi-square with 9 dof: 99.99th percentile ~ 33.7
    chi2 = (((counts - n * p) ** 2) / (n * p)).sum().item()
    assert chi2 < 33.7


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("name", ["m2po", "mispo_random_traj", "grpo"])
def test_micro_batch_losses_sum_to_full_batch_loss(name, mode):
    lp1, old1, adv1, m1 = _random_batch(21, 4, 6, scale=0.3)
    lp2, old2, adv2, m2 = _random_batch(22, 3, 9, scale=0.3)
    pad = lambda x: torch.cat([x, torch.zeros(x.shape[0], 3, dtype=x.dtype)], 1)  # noqa: E731
    full_in = (torch.cat([pad(lp1), lp2]), torch.cat([pad(old1), old2]), torch.cat([adv1, adv2]), torch.cat([pad(m1), m2]))
    hp = {"loss_agg_mode": mode, "loss_scale_factor": 9.0}
    full = objectives.build(name, **hp)(*full_in)
    obj = objectives.build(name, **hp)
    stats = obj.batch_stats([lp1, lp2], [old1, old2], [adv1, adv2], [m1, m2])
    total = obj(lp1, old1, adv1, m1, batch_stats=stats).loss + obj(lp2, old2, adv2, m2, batch_stats=stats).loss
    torch.testing.assert_close(total, full.loss, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(12))
def test_m2po_mask_matches_algorithm_1_float32(seed):
    rng = np.random.default_rng(1000 + seed)
    B = int(rng.integers(2, 40))
    T = int(rng.integers(1, 5000 // B + 1))
    lp, old, adv, mask = _random_batch(1000 + seed, B, T, scale=float(rng.choice([0.05, 0.2, 0.5])), dtype=torch.float32)
    lr32 = lp - old  # exactly what the objective computes in float32
    a = adv.unsqueeze(-1).expand(B, T)
    cand = (((a > 0) & (lr32 > 0)) | ((a < 0) & (lr32 < 0))) & (mask > 0)
    tau = float(lr32[cand].double().square().mean()) * float(rng.uniform(0.1, 0.9)) if cand.any() else 0.04
    out = objectives.build("m2po", tau=tau)(lp, old, adv, mask)
    ref_M, _, _ = _reference_m2po_mask(lr32.double().numpy(), a.double().numpy(), mask.double().numpy(), tau)
    # reference on the float32 squares, accumulated in float64
    np.testing.assert_array_equal(out.extras["token_kept"].numpy(), ref_M & (mask.numpy() > 0))


# ============================================================================ splits and pooled metrics


def _trim(x, mask):
    """The rows' tensors trimmed to their longest response, as the loop slices a micro-batch."""
    return x[:, : max(int(mask.sum(-1).max()), 1)]


@pytest.mark.parametrize("mode", objectives.core.AGG_MODES)
@pytest.mark.parametrize("split", [(8,), (3, 5), (1, 1, 2, 4), (1,) * 8])
def test_mini_batch_loss_is_the_sum_over_any_micro_batch_split(mode, split):
    # The loop backpropagates each micro-batch's loss and sums the gradients: the micro-batch
    # losses, each on rows trimmed to their own longest response, must add up to the mini-batch's.
    lp, old, adv, mask = _random_batch(31, 8, 12, scale=0.3)
    horizon = 16  # rollout.max_new_tokens: longer than any response here
    full = objectives.build("grpo", loss_agg_mode=mode)
    whole = full(lp, old, adv, mask, batch_stats=full.batch_stats(lp, old, adv, mask, horizon=horizon)).loss
    if mode == "seq-mean-token-sum-norm":  # by hand: sum over sequences / sequences / horizon
        r = torch.exp(lp - old)
        per_token = torch.maximum(-adv[:, None] * r, -adv[:, None] * r.clamp(0.8, 1.2))
        torch.testing.assert_close(whole, (per_token * mask).sum() / 8 / horizon, atol=1e-12, rtol=0)
    obj = objectives.build("grpo", loss_agg_mode=mode)
    bounds = np.cumsum((0,) + split)
    parts = [(_trim(lp[a:b], mask[a:b]), _trim(old[a:b], mask[a:b]), adv[a:b], _trim(mask[a:b], mask[a:b]))
             for a, b in itertools.pairwise(bounds)]
    stats = obj.batch_stats(*[list(x) for x in zip(*parts, strict=True)], horizon=horizon)
    total = sum(obj(*p, batch_stats=stats).loss for p in parts)
    torch.testing.assert_close(total, whole, atol=1e-12, rtol=0)


def test_seq_mean_token_sum_norm_without_horizon_uses_the_longest_micro_batch():
    lp, old, adv, mask = _random_batch(32, 6, 10)
    obj = objectives.build("no_tr", loss_agg_mode="seq-mean-token-sum-norm")
    parts = [(_trim(x[:3], mask[:3]) if x.dim() == 2 else x[:3]) for x in (lp, old, adv, mask)], \
            [(_trim(x[3:], mask[3:]) if x.dim() == 2 else x[3:]) for x in (lp, old, adv, mask)]
    stats = obj.batch_stats(*[list(x) for x in zip(*parts, strict=True)])
    assert stats.horizon == max(p[3].shape[1] for p in parts)


def test_reduce_metrics_pools_like_the_whole_batch():
    # maxima, token means, trajectory rates and spreads of two parts equal those of the union
    x = t([[0.1, 0.5, 0.0], [0.2, 0.0, 0.0], [0.9, 0.3, 0.4]])
    m = t([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    traj = t([0.01, -0.02, 0.05])
    acc = t([1, 0, 1])
    whole = {"max": objectives.Stat.max(x, m), "mean": objectives.Stat.mean(x, m),
             "rate": objectives.Stat.mean(acc, torch.ones(3, dtype=D)), "std": objectives.Stat.std(traj, acc)}
    halves = [{k: objectives.Stat(s.kind, tuple(s.parts.tolist())) for k, s in d.items()} for d in (
        {"max": objectives.Stat.max(x[:1], m[:1]), "mean": objectives.Stat.mean(x[:1], m[:1]),
         "rate": objectives.Stat.mean(acc[:1], torch.ones(1, dtype=D)), "std": objectives.Stat.std(traj[:1], acc[:1])},
        {"max": objectives.Stat.max(x[1:], m[1:]), "mean": objectives.Stat.mean(x[1:], m[1:]),
         "rate": objectives.Stat.mean(acc[1:], torch.ones(2, dtype=D)), "std": objectives.Stat.std(traj[1:], acc[1:])})]
    got = objectives.reduce_metrics(halves)
    assert got["max"] == pytest.approx(0.9)
    assert got["mean"] == pytest.approx((0.1 + 0.5 + 0.2 + 0.9 + 0.3 + 0.4) / 6)
    assert got["rate"] == pytest.approx(2 / 3)
    assert got["std"] == pytest.approx(0.02)  # accepted 0.01 and 0.05: population std 0.02
    host = {k: objectives.Stat(s.kind, tuple(s.parts.tolist())) for k, s in whole.items()}
    assert objectives.reduce_metrics([host]) == pytest.approx(got)
    # two "ranks" through a gather that concatenates them: the same values, the batch part once
    ranks = iter([halves[0], halves[1]])
    row = {}

    def gather(tensor):
        other = next(ranks)
        names = sorted(other)
        row["second"] = torch.tensor([v for n in names for v in other[n].parts], dtype=torch.float64)
        return torch.cat([tensor, row["second"]])

    first = next(ranks)
    batch = {"n": objectives.Stat.total(7)}
    pooled = objectives.reduce_metrics([first], batch=batch, gather=gather)
    assert pooled == pytest.approx({**got, "n": 7.0})


def test_ac_mispo_warmup_counts_training_steps():
    # 4 controller steps (optimizer updates) per training step: the target reaches A_end after
    # 2 training steps = 8 updates, and is halfway at update 4 (training step 1)
    obj = objectives.build("ac_mispo", warmup_train_steps=2, updates_per_train_step=4)
    assert obj.target_acceptance(4) == pytest.approx(0.3)
    assert obj.target_acceptance(8) == pytest.approx(0.2)
    assert obj.target_acceptance(2) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="updates_per_train_step"):
        objectives.build("ac_mispo", updates_per_train_step=0)
