"""stalerl.evaluation.diagnostics on synthetic inputs with known answers, and its run-directory loaders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

import stalerl.evaluation.diagnostics as sd
from stalerl.evaluation import diagnostics as diag


def test_reexport_is_the_same_module_api():
    for name in diag.__all__:
        assert getattr(sd, name) is getattr(diag, name)


def test_grad_norm_stats_known_values():
    out = diag.grad_norm_stats(np.arange(1, 101))
    assert out["mean"] == pytest.approx(50.5)
    assert out["p99"] == pytest.approx(99.01)  # numpy linear interpolation
    assert out["max"] == 100
    assert out["n"] == 100 and out["nonfinite"] == 0


def test_grad_norm_stats_skips_nonfinite_and_none():
    out = diag.grad_norm_stats([1.0, None, float("nan"), 3.0, float("inf")])
    assert out["mean"] == pytest.approx(2.0)
    assert out["max"] == 3.0
    assert out["n"] == 2 and out["nonfinite"] == 3
    empty = diag.grad_norm_stats([])
    assert math.isnan(empty["mean"]) and empty["n"] == 0


def test_entropy_by_ratio_bins_constructed():
    # |r-1| = 0.0005 (bin 0), 0.05 (bin 1), 0.5 (bin 2, twice); entropies chosen per bin.
    ratio = [1.0005, 0.9995, 1.05, 0.5, 1.5]
    entropy = [1.0, 3.0, 2.0, 4.0, 6.0]
    out = diag.entropy_by_ratio_bins(entropy, ratio, bins=[0, 0.01, 0.1, 1.0])
    assert out["count"] == [2, 1, 2]
    assert out["mean_entropy"] == pytest.approx([2.0, 2.0, 5.0])
    assert out["low"] == [0, 0.01, 0.1] and out["high"] == [0.01, 0.1, 1.0]
    # an empty bin is NaN with count 0; values beyond the last edge are dropped
    out = diag.entropy_by_ratio_bins([1.0, 2.0], [1.0, 3.0], bins=[0, 0.5, 1.0])
    assert out["count"] == [1, 0]
    assert out["mean_entropy"][0] == 1.0 and math.isnan(out["mean_entropy"][1])


def test_entropy_by_ratio_bins_default_bins_cover_everything():
    rng = np.random.default_rng(0)
    r = np.exp(rng.normal(0, 0.5, 1000))
    out = diag.entropy_by_ratio_bins(rng.random(1000), r)
    assert sum(out["count"]) == 1000
    assert len(out["count"]) == len(diag.DEFAULT_RATIO_BINS) - 1


def test_entropy_by_ratio_bins_errors():
    with pytest.raises(ValueError, match="same length"):
        diag.entropy_by_ratio_bins([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        diag.entropy_by_ratio_bins([1.0], [1.0], bins=[0.1, 0.1])


def test_accepted_log_ratios_and_std():
    lr = np.array([0.1, -0.2, 0.3, 0.05])
    acc = [True, False, True, True]
    x = diag.accepted_log_ratios(lr, acc)
    np.testing.assert_allclose(x, [0.1, 0.3, 0.05])
    s = diag.log_rho_stats(x)
    assert s["n"] == 3
    assert s["std"] == pytest.approx(np.std([0.1, 0.3, 0.05]))
    assert s["mean"] == pytest.approx(0.15)
    np.testing.assert_allclose(diag.accepted_log_ratios(lr), lr)  # no filter: all accepted
    with pytest.raises(ValueError):
        diag.accepted_log_ratios(lr, [True])


def test_ks_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1.5, 200)
    out = diag.ks_test(a, b)
    ref = stats.ks_2samp(a, b)
    assert out["statistic"] == pytest.approx(ref.statistic)
    assert out["pvalue"] == pytest.approx(ref.pvalue)
    assert (out["n_a"], out["n_b"]) == (300, 200)
    assert math.isnan(diag.ks_test([], b)["statistic"])


def test_reject_share_by_hand():
    x = [-0.01, -0.003, 0.0, 0.0005, 0.002]
    band = (math.log(0.996), math.log(1.001))  # MIS-PO: [-0.004008, 0.0009995]
    # -0.01 below, 0.002 above -> 2 of 5 rejected
    assert diag.reject_share(x, *band) == pytest.approx(0.4)
    assert diag.reject_share(x) == 0.0
    assert diag.reject_share(x, high=0.0) == pytest.approx(0.4)
    # a bound that moves per trajectory (AC-MIS-PO's b_k)
    assert diag.reject_share([0.5, 0.5], [-1.0, -0.1], [1.0, 0.1]) == pytest.approx(0.5)
    assert math.isnan(diag.reject_share([]))


def test_acceptance_m2_correlation_matches_scipy():
    rng = np.random.default_rng(2)
    m2 = rng.random(50)
    acc = 1 - m2 + 0.1 * rng.random(50)
    out = diag.acceptance_m2_correlation(acc, m2)
    assert out["pearson"] == pytest.approx(stats.pearsonr(acc, m2)[0])
    assert out["pearson_p"] == pytest.approx(stats.pearsonr(acc, m2)[1])
    assert out["spearman"] == pytest.approx(stats.spearmanr(acc, m2)[0])
    assert out["spearman_p"] == pytest.approx(stats.spearmanr(acc, m2)[1])
    assert out["n"] == 50 and out["pearson"] < -0.9


def test_acceptance_m2_correlation_drops_missing_and_degenerate():
    out = diag.acceptance_m2_correlation([0.1, None, 0.3, 0.2, float("nan")], [1.0, 2.0, 3.0, 2.5, 1.0])
    assert out["n"] == 3
    assert out["spearman"] == pytest.approx(stats.spearmanr([0.1, 0.3, 0.2], [1.0, 3.0, 2.5])[0])
    assert math.isnan(diag.acceptance_m2_correlation([0.5, 0.5, 0.5], [1, 2, 3])["pearson"])
    assert math.isnan(diag.acceptance_m2_correlation([0.5], [1])["spearman"])


def _fake_run(path, objective, hparams, diags, updates):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": objective, "hparams": hparams}, "seed": 0}))
    (path / "diagnostics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in diags))
    (path / "updates.jsonl").write_text("".join(json.dumps(u) + "\n" for u in updates))
    (path / "metrics.jsonl").write_text(json.dumps({"step": 0}) + "\n")
    return path


def test_loaders_and_compare_runs(tmp_path):
    a = _fake_run(tmp_path / "a", "mispo", {}, [
        {"step": 1, "update": 0, "traj_log_ratio": [0.0, -0.002, 0.1], "traj_accepted": [True, True, False],
         "entropy": [1.0, 2.0], "ratio": [1.0, 1.2]},
        {"step": 1, "update": 1, "traj_log_ratio": [0.0005], "traj_accepted": [True], "entropy": [3.0], "ratio": [1.0]},
    ], [
        {"step": 1, "update": 0, "train/grad_norm": 1.0, "actor/traj_accept_frac": 0.6, "actor/m2": 0.1},
        {"step": 1, "update": 1, "train/grad_norm": None, "actor/traj_accept_frac": 1.0, "actor/m2": 0.01},
    ])
    b = _fake_run(tmp_path / "b", "grpo", {}, [
        {"step": 1, "update": 0, "traj_log_ratio": [-0.01, 0.0, 0.002, 0.0001], "entropy": [], "ratio": []},
    ], [{"step": 1, "update": 0, "train/grad_norm": 2.0, "actor/m2": 0.2}])

    np.testing.assert_allclose(diag.run_accepted_log_ratios(a), [0.0, -0.002, 0.0005])
    np.testing.assert_allclose(diag.run_accepted_log_ratios(a, accepted_only=False), [0.0, -0.002, 0.1, 0.0005])
    np.testing.assert_allclose(diag.run_accepted_log_ratios(b), [-0.01, 0.0, 0.002, 0.0001])
    g = diag.run_grad_norms(a)
    assert g[0] == 1.0 and math.isnan(g[1])
    ent, ratio = diag.run_entropy_ratio(a)
    np.testing.assert_allclose(ent, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(ratio, [1.0, 1.2, 1.0])
    acc, m2 = diag.run_acceptance_m2(b)
    assert math.isnan(acc[0]) and m2[0] == 0.2

    assert diag.run_acceptance_band(a) == pytest.approx((math.log(0.996), math.log(1.001)))
    assert diag.run_acceptance_band(b) is None
    cmp = diag.compare_runs(b, a)
    # grpo's trajectories against MIS-PO's band: -0.01 and 0.002 fall outside -> 2 of 4
    assert cmp["a_rejected_by_b"] == pytest.approx(0.5)
    assert cmp["b_rejected_by_a"] is None  # grpo does not filter
    ref = stats.ks_2samp([-0.01, 0.0, 0.002, 0.0001], [0.0, -0.002, 0.0005])
    assert cmp["ks"]["statistic"] == pytest.approx(ref.statistic)
    assert cmp["std_a"] == pytest.approx(np.std([-0.01, 0.0, 0.002, 0.0001]))

    summary = diag.analyze_run(a)
    assert summary["grad_norm"]["n"] == 1 and summary["grad_norm"]["nonfinite"] == 1
    assert summary["accepted_log_rho"]["n"] == 3 and summary["all_log_rho"]["n"] == 4
    assert sum(summary["entropy_by_ratio"]["count"]) == 3


def test_ac_mispo_band_is_its_last_bound(tmp_path):
    run = _fake_run(tmp_path / "ac", "ac_mispo", {}, [], [
        {"step": 1, "update": 0, "actor/traj_bound": 0.009},
        {"step": 1, "update": 1, "actor/traj_bound": 0.004},
    ])
    assert diag.run_acceptance_band(run) == pytest.approx((-0.004, 0.004))
    preset = _fake_run(tmp_path / "fixed", "mispo_fixed_final", {}, [], [])
    assert diag.run_acceptance_band(preset) == pytest.approx((math.log(0.9998), math.log(1.0002)))


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        diag.load_updates(tmp_path / "nope")
