"""`stalerl reproduce`: the studies' plans, verdict logic, and every study in --quick mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stalerl.studies import definitions as d
from stalerl.studies.reproduce import condition_overrides, reproduce, verdicts
from stalerl.training.config import load_config


def test_every_condition_builds_a_valid_config(tmp_path):
    for study in d.STUDIES.values():
        for cond in study.conditions:
            for scale, quick in (("testbed", False), ("testbed", True), ("paper", False)):
                args = condition_overrides(study, cond, scale=scale, quick=quick, seed=0,
                                           run_dir=tmp_path / "r", extra=[])
                config = load_config(None, args)
                expected = 0 if not cond.stale else (
                    d.QUICK_STALENESS if quick else study.testbed_scale.get("stale.staleness", d.TESTBED_STALENESS)
                    if scale == "testbed" else study.paper_scale["stale.staleness"])
                if cond.staleness is not None:  # the sweep's own axis: the papers' s, the testbed's equivalent
                    own = cond.testbed_staleness if scale == "testbed" else cond.staleness
                    expected = min(own, d.QUICK_STALENESS) if quick else own
                assert config.stale.staleness == expected
                if scale == "testbed" and not quick:
                    for key, value in study.testbed_scale.items():  # the study's own setting wins
                        section, name = key.split(".")
                        assert getattr(getattr(config, section), name) == value
                assert config.objective.name == cond.objective


def test_paper_scale_uses_the_papers_batch_and_model(tmp_path):
    study = d.STUDIES["prosperity"]
    args = condition_overrides(study, study.conditions[1], scale="paper", quick=False, seed=0,
                               run_dir=tmp_path, extra=[])
    config = load_config(None, args)
    assert config.model.path == "Qwen/Qwen3-1.7B-Base"
    assert (config.rollout.prompts_per_step, config.rollout.group_size, config.optim.mini_batches) == (256, 8, 4)
    assert config.stale.staleness == 256 and config.optim.lr == 1e-6
    # bf16 compute keeps float32 masters, so lr 1e-6 steps do not round away
    assert config.model.dtype == "bfloat16" and config.model.master_weights


def test_each_study_keeps_its_papers_own_setting(tmp_path):
    """MinPRO delays rollouts by n = 2 global steps of 16 updates; AC-MIS-PO samples 4 responses."""
    minpro, ac = d.STUDIES["minpro"], d.STUDIES["ac-mispo"]
    stale = next(c for c in minpro.conditions if c.stale)
    paper = load_config(None, condition_overrides(minpro, stale, scale="paper", quick=False, seed=0,
                                                  run_dir=tmp_path, extra=[]))
    assert (paper.model.path, paper.rollout.prompts_per_step, paper.optim.mini_batches) == ("Qwen/Qwen3-8B-Base", 512, 16)
    assert paper.stale.staleness == 2 * paper.optim.mini_batches and paper.steps == 120
    testbed = load_config(None, condition_overrides(minpro, stale, scale="testbed", quick=False, seed=0,
                                                    run_dir=tmp_path, extra=[]))
    assert testbed.stale.staleness == 2 * testbed.optim.mini_batches  # the same two batches of delay
    ac_paper = load_config(None, condition_overrides(ac, ac.conditions[0], scale="paper", quick=False, seed=0,
                                                     run_dir=tmp_path, extra=[]))
    assert (ac_paper.rollout.group_size, ac_paper.optim.lr, ac_paper.stale.staleness) == (4, 2e-6, 256)


def _stats(**kw):
    base = {k: math.nan for k in ("eval_best", "eval_final", "reward_best", "clipfrac_mean", "accept_mean",
                                  "accepted_std_mean", "accept_m2_pearson", "bound_first", "bound_last")}
    base.update(kw)
    return base


NOISE = (0.0, 1.0, -1.0, 0.5, -0.5)  # five seeds around a centre


def S(center, noise=0.002):
    """Five seeds' values of one statistic, ``center`` +- ``noise``."""
    return [center + noise * n for n in NOISE]


def runs(**conditions):
    """{condition: {stat: per-seed list}} -> {condition: [per-seed stats dict]}."""
    out = {}
    for cond, values in conditions.items():
        n = len(next(iter(values.values())))
        out[cond] = [_stats(**{k: v[i] for k, v in values.items()}) for i in range(n)]
    return out


def acc(**centers):
    """Accuracy runs: {cond: (center, noise)} for the last-4 and first-half accuracies."""
    return runs(**{c: {"eval_lastk": S(*v), "eval_first_half": S(*v), "eval_best": S(*v)} for c, v in centers.items()})


LOUD = 0.05  # seed noise large enough to leave a small gap undecided

# (study, claim index) -> {verdict: hand-made runs}
CASES = {
    ("prosperity", 0): {
        "reproduced": runs(no_tr={"eval_first_half": S(0.35), "eval_lastk": S(0.05)},
                           grpo={"eval_first_half": S(0.30), "eval_lastk": S(0.30)}),
        "contradicted": runs(no_tr={"eval_first_half": S(0.20), "eval_lastk": S(0.05)},
                             grpo={"eval_first_half": S(0.30), "eval_lastk": S(0.30)}),
        "inconclusive": runs(no_tr={"eval_first_half": S(0.31, LOUD), "eval_lastk": S(0.05)},
                             grpo={"eval_first_half": S(0.30), "eval_lastk": S(0.30)}),
    },
    ("prosperity", 1): {
        "reproduced": acc(**{"grpo-s0": (0.33,), "grpo": (0.28,)}),
        "contradicted": acc(**{"grpo-s0": (0.28,), "grpo": (0.33,)}),
        "inconclusive": acc(**{"grpo-s0": (0.30, LOUD), "grpo": (0.30,)}),
    },
    ("prosperity", 2): {  # within 2 points or better
        "reproduced": acc(**{"m2po": (0.325,), "grpo-s0": (0.33,)}),
        "contradicted": acc(**{"m2po": (0.25,), "grpo-s0": (0.33,)}),
        "inconclusive": acc(**{"m2po": (0.31, LOUD), "grpo-s0": (0.33,)}),
    },
    ("prosperity", 3): {
        "reproduced": acc(m2po=(0.36,), grpo=(0.30,)),
        "contradicted": acc(m2po=(0.26,), grpo=(0.30,)),
        "inconclusive": acc(m2po=(0.30, LOUD), grpo=(0.30,)),
    },
    ("prosperity", 4): {  # at least 10x fewer
        "reproduced": runs(grpo={"clipfrac_mean": S(0.04, 0.001)}, m2po={"clipfrac_mean": S(0.002, 0.0001)}),
        "contradicted": runs(grpo={"clipfrac_mean": S(0.04, 0.001)}, m2po={"clipfrac_mean": S(0.03, 0.001)}),
        "inconclusive": runs(grpo={"clipfrac_mean": S(0.04, 0.001)}, m2po={"clipfrac_mean": S(0.004, 0.002)}),
    },
    ("mispo-mechanism", 0): {
        "reproduced": acc(mispo_token_only=(0.40,), mispo=(0.30,)),
        "contradicted": acc(mispo_token_only=(0.25,), mispo=(0.30,)),
        "inconclusive": acc(mispo_token_only=(0.31, LOUD), mispo=(0.30,)),
    },
    ("mispo-mechanism", 1): {
        "reproduced": runs(mispo_random_traj={"eval_lastk": S(0.35), "accept_mean": S(0.20, 0.001)},
                           mispo={"eval_lastk": S(0.30), "accept_mean": S(0.20, 0.001)}),
        "contradicted": runs(mispo_random_traj={"eval_lastk": S(0.25), "accept_mean": S(0.20, 0.001)},
                             mispo={"eval_lastk": S(0.30), "accept_mean": S(0.20, 0.001)}),
        "inconclusive": runs(mispo_random_traj={"eval_lastk": S(0.31, LOUD), "accept_mean": S(0.20, 0.001)},
                             mispo={"eval_lastk": S(0.30), "accept_mean": S(0.20, 0.001)}),
    },
    ("mispo-mechanism", 2): {
        "reproduced": runs(mispo_random_traj={"grad_norm_mean": S(0.015, 0.001), "accepted_std_mean": S(0.026, 0.001)},
                           mispo={"grad_norm_mean": S(0.010, 0.0005), "accepted_std_mean": S(0.0012, 0.0001)}),
        "contradicted": runs(mispo_random_traj={"grad_norm_mean": S(0.005, 0.0005), "accepted_std_mean": S(0.026, 0.001)},
                             mispo={"grad_norm_mean": S(0.010, 0.0005), "accepted_std_mean": S(0.0012, 0.0001)}),
        "inconclusive": runs(mispo_random_traj={"grad_norm_mean": S(0.010, 0.004), "accepted_std_mean": S(0.026, 0.001)},
                             mispo={"grad_norm_mean": S(0.010, 0.0005), "accepted_std_mean": S(0.0012, 0.0001)}),
    },
    ("ac-mispo", 0): {
        "reproduced": acc(ac_mispo=(0.40,), grpo=(0.30,), mispo=(0.30,), m2po=(0.30,)),
        "contradicted": acc(ac_mispo=(0.35,), grpo=(0.45,), mispo=(0.30,), m2po=(0.30,)),
        "inconclusive": acc(ac_mispo=(0.40,), grpo=(0.39, LOUD), mispo=(0.30,), m2po=(0.30,)),
    },
    ("ac-mispo", 1): {
        "reproduced": acc(ac_mispo=(0.40,), mispo=(0.30,)),
        "contradicted": acc(ac_mispo=(0.25,), mispo=(0.30,)),
        "inconclusive": acc(ac_mispo=(0.31, LOUD), mispo=(0.30,)),
    },
    ("ac-mispo", 5): {
        "reproduced": runs(ac_mispo={"accept_m2_pearson": S(0.11, 0.02)}),
        "contradicted": runs(ac_mispo={"accept_m2_pearson": S(0.6, 0.02)}),
        "inconclusive": runs(ac_mispo={"accept_m2_pearson": S(0.28, 0.05)}),
    },
    ("ac-mispo", 4): {
        "reproduced": runs(ac_mispo={"bound_first": S(0.009, 0.0001), "bound_last": S(0.003, 0.0002)}),
        "contradicted": runs(ac_mispo={"bound_first": S(0.009, 0.0001), "bound_last": S(0.008, 0.0002)}),
        "inconclusive": runs(ac_mispo={"bound_first": S(0.009, 0.0001), "bound_last": S(0.0045, 0.002)}),
    },
    ("minpro", 1): {
        "reproduced": acc(minpro=(0.30,), cispo=(0.20,)),
        "contradicted": acc(minpro=(0.20,), cispo=(0.30,)),
        "inconclusive": acc(minpro=(0.21, LOUD), cispo=(0.20,)),
    },
    ("minpro", 2): {
        "reproduced": acc(minpro=(0.30,), grpo=(0.20,)),
        "contradicted": acc(minpro=(0.20,), grpo=(0.30,)),
        "inconclusive": acc(minpro=(0.21, LOUD), grpo=(0.20,)),
    },
    ("minpro", 3): {
        "reproduced": runs(cispo={"reward_largest_drop": S(0.4, 0.01), "eval_lastk": S(0.10)},
                           minpro={"reward_largest_drop": S(0.05, 0.01), "eval_lastk": S(0.30)}),
        "contradicted": runs(cispo={"reward_largest_drop": S(0.02, 0.01), "eval_lastk": S(0.10)},
                             minpro={"reward_largest_drop": S(0.10, 0.01), "eval_lastk": S(0.30)}),
        "inconclusive": runs(cispo={"reward_largest_drop": S(0.1, 0.05), "eval_lastk": S(0.10)},
                             minpro={"reward_largest_drop": S(0.1, 0.01), "eval_lastk": S(0.30)}),
    },
    ("minpro", 4): {
        "reproduced": runs(grpo={"clipfrac_mean": S(0.016, 0.001)}, m2po={"clipfrac_mean": S(0.002, 0.0001)}),
        "contradicted": runs(grpo={"clipfrac_mean": S(0.002, 0.0001)}, m2po={"clipfrac_mean": S(0.016, 0.001)}),
        "inconclusive": runs(grpo={"clipfrac_mean": S(0.016, 0.001)}, m2po={"clipfrac_mean": S(0.016, 0.006)}),
    },
}


def _magnitude(fixed, wide, close_noise):
    return acc(**{fixed: (0.30 + wide, 0.002), "mispo": (0.30,), "ac_mispo": (0.30 + wide, close_noise)})


for _i, _fixed in ((2, "mispo_fixed_final"), (3, "mispo_fixed_testbed_final")):
    CASES[("ac-mispo", _i)] = {
        "reproduced": _magnitude(_fixed, 0.10, 0.002),   # +10 over mispo, equal to ac_mispo
        "contradicted": _magnitude(_fixed, 0.0, 0.002),  # no gain over mispo at all
        "inconclusive": _magnitude(_fixed, 0.10, 2 * LOUD),  # +10 over mispo, the gap to ac_mispo undecided
    }


def _reward(minpro, others, noise=0.005):
    conds = {"grpo": others, "gspo": others, "cispo": others, "m2po": others, "minpro": minpro}
    return runs(**{c: {"reward_second_half": S(v[0], noise if c == "minpro" else 0.005),
                       "reward_largest_drop": S(v[1], 0.005)} for c, v in conds.items()})


CASES[("minpro", 0)] = {
    "reproduced": _reward((0.60, 0.02), (0.50, 0.10)),
    "contradicted": _reward((0.40, 0.02), (0.50, 0.10)),
    "inconclusive": _reward((0.51, 0.02), (0.50, 0.10), noise=LOUD),
}


CASES[("staleness-sweep", 0)] = {  # within 2 points or better
    "reproduced": acc(**{"m2po-s256": (0.325,), "grpo-s0": (0.33,)}),
    "contradicted": acc(**{"m2po-s256": (0.25,), "grpo-s0": (0.33,)}),
    "inconclusive": acc(**{"m2po-s256": (0.31, LOUD), "grpo-s0": (0.33,)}),
}
CASES[("staleness-sweep", 1)] = {
    "reproduced": acc(**{"grpo-s0": (0.33,), "grpo-s256": (0.28,)}),
    "contradicted": acc(**{"grpo-s0": (0.28,), "grpo-s256": (0.33,)}),
    "inconclusive": acc(**{"grpo-s0": (0.30, LOUD), "grpo-s256": (0.30,)}),
}


def test_every_claim_has_hand_made_cases():
    assert set(CASES) == {(name, i) for name, study in d.STUDIES.items() for i in range(len(study.claims))}


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_claim_verdicts_on_hand_made_results(key):
    study = d.STUDIES[key[0]]
    for expected, stats in CASES[key].items():
        row = verdicts(study, stats)[key[1]]
        assert row["verdict"] == expected, (key, expected, row["testbed"])
        assert row["statistic"]


def test_accuracy_claims_pair_per_problem_results_when_runs_saved_them():
    # two seeds of 40 problems: a is 10 points better on every problem -> reproduced over seeds x problems
    base = [[0.3 + 0.01 * (p % 7) for p in range(40)] for _ in range(2)]
    better = [[x + 0.1 for x in row] for row in base]
    stats = {"mispo_token_only": [_stats(eval_problems_lastk=r, eval_lastk=0.4) for r in better],
             "mispo": [_stats(eval_problems_lastk=r, eval_lastk=0.3) for r in base]}
    row = verdicts(d.STUDIES["mispo-mechanism"], stats)[0]
    assert row["verdict"] == "reproduced" and "seeds x problems" in row["testbed"]


def test_missing_numbers_give_no_verdict():
    study = d.STUDIES["ac-mispo"]
    rows = verdicts(study, {"ac_mispo": [_stats(eval_lastk=0.3)]})
    assert rows[1]["verdict"] is None  # mispo missing: nothing to compare


def test_unknown_study_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown study 'nope'.*prosperity"):
        reproduce("nope", out=tmp_path)


def _quick(study, tmp_path, tiny_overrides):
    overrides = [o for o in tiny_overrides() if o.startswith(("model.path", "reward.function"))]
    first: list[str] = []
    out = reproduce(study, out=tmp_path / study, quick=True, overrides=overrides + ["progress=false"],
                    progress=False, echo=first.append)
    starts = [line for line in first if line.startswith(f"[{study}] ")]
    assert len(starts) == len(d.STUDIES[study].conditions)  # one line per run started, one seed in quick mode
    assert "left)" not in starts[0] and all(line.endswith(" min left)") for line in starts[1:])  # the pace so far
    rows = json.loads((out / "verdicts.json").read_text())
    assert len(rows) == len(d.STUDIES[study].claims)
    assert all(r["verdict"] in ("reproduced", "contradicted", "inconclusive", None) for r in rows)
    text = (out / "verdicts.md").read_text()
    assert "quick mode" in text and "| claim | paper | testbed | verdict |" in text
    for cond in d.STUDIES[study].conditions:
        assert (out / "runs" / f"{cond.name}-seed0" / "summary.json").exists()
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {c.name for c in d.STUDIES[study].conditions}
    # a second call reuses the finished runs instead of training again
    mtime = (out / "runs" / f"{d.STUDIES[study].conditions[0].name}-seed0" / "summary.json").stat().st_mtime
    shown: list[str] = []
    reproduce(study, out=tmp_path / study, quick=True, overrides=overrides + ["progress=false"], progress=False,
              echo=shown.append)
    assert (out / "runs" / f"{d.STUDIES[study].conditions[0].name}-seed0" / "summary.json").stat().st_mtime == mtime
    n = len(d.STUDIES[study].conditions)
    assert shown[0] == f"[{study}] {n} of {n} runs already finished in {out}: reused"
    return out


def test_quick_mispo_mechanism(tmp_path, tiny_overrides):
    out = _quick("mispo-mechanism", tmp_path, tiny_overrides)
    assert (out / "report" / "report.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("study", ["prosperity", "ac-mispo", "minpro"])
def test_quick_study(study, tmp_path, tiny_overrides):
    out = _quick(study, tmp_path, tiny_overrides)
    if study == "ac-mispo":  # MIS-PO fixed at the bound the ac_mispo runs ended with
        stats = json.loads((out / "stats.json").read_text())
        bound = sum(s["bound_last"] for s in stats["ac_mispo"]) / len(stats["ac_mispo"])
        config = load_config(out / "runs" / "mispo_fixed_testbed_final-seed0" / "config.yaml")
        hparams = config.objective.hparams
        assert hparams["traj_low"] == pytest.approx(math.exp(-bound), abs=1e-6)
        assert hparams["traj_high"] == pytest.approx(math.exp(bound), abs=1e-6)
        plan = json.loads((out / "plan.json").read_text())
        assert f"objective.hparams.traj_high={hparams['traj_high']}" in plan[-1]["command"]


def test_time_left_is_the_pace_of_the_finished_runs():
    from stalerl.studies.reproduce import time_left

    assert time_left(600.0, 0, 40) == ""  # nothing finished yet: no pace to go by
    assert time_left(600.0, 10, 40) == " (about 30 min left)"  # 60 s a run, 30 runs to go
    assert time_left(3600.0, 10, 40) == " (about 3.0 h left)"
    assert time_left(600.0, 40, 40) == ""


def test_derived_bound_is_the_mean_final_bound_of_ac_mispo():
    cond = next(c for c in d.STUDIES["ac-mispo"].conditions if c.derive is not None)
    got = cond.derive({"ac_mispo": [_stats(bound_last=0.002), _stats(bound_last=0.004)]})
    assert got == {"traj_low": pytest.approx(math.exp(-0.003), abs=1e-6), "traj_high": pytest.approx(math.exp(0.003), abs=1e-6)}
    with pytest.raises(ValueError, match="ac_mispo runs logged no trajectory bound"):
        cond.derive({"ac_mispo": [_stats()]})


def test_every_claim_is_documented_in_reproduction_md():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "REPRODUCTION.md").read_text()
    for study in d.STUDIES.values():
        for claim in study.claims:
            assert f"| {claim.text} | {claim.paper} | {claim.statistic} |" in text, claim.text


def test_jobs_share_the_cores_and_a_derived_condition_waits(tmp_path, tiny_overrides, monkeypatch):
    """--jobs 2 with 2 cores for the study: each run is a subprocess given runtime.cores = 2 // 2
    (the default is None); the derived condition starts once both runs before it have finished."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the cores the study may use
    seen: dict[str, int] = {}

    def derive(stats):
        seen.update({name: len(runs) for name, runs in stats.items()})
        return {}

    base = d.STUDIES["mispo-mechanism"]
    study = d.Study(name="jobs-test", seed_file=base.seed_file, title="jobs", claims=[],
                    conditions=[*base.conditions[:2], d.Condition("derived", "mispo", derive=derive)],
                    paper_scale=base.paper_scale)
    monkeypatch.setitem(d.STUDIES, "jobs-test", study)
    overrides = [o for o in tiny_overrides() if o.startswith(("model.path", "reward.function"))]
    out = reproduce("jobs-test", out=tmp_path / "jobs", quick=True, overrides=overrides, progress=False, jobs=2)
    assert seen == {"mispo": 1, "mispo_token_only": 1}
    for name in ("mispo", "mispo_token_only", "derived"):
        run = out / "runs" / f"{name}-seed0"
        assert (run / "summary.json").exists() and (run / "train.log").exists()
        assert load_config(run / "config.yaml").runtime.cores == 1
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        reproduce("jobs-test", out=tmp_path / "jobs", quick=True, jobs=0)


def test_sweep_has_every_objective_at_every_staleness(tmp_path):
    study = d.STUDIES["staleness-sweep"]
    assert study.seeds == 5 and study.sweep
    got = {(c.objective, c.staleness) for c in study.conditions}
    assert got == {(o, s) for o in ("grpo_verl", "no_tr", "gspo", "cispo", "m2po", "mispo", "ac_mispo", "minpro")
                   for s in (0, 16, 64, 256)}
    cond = next(c for c in study.conditions if c.name == "minpro-s64")
    config = load_config(None, condition_overrides(study, cond, scale="paper", quick=False, seed=0,
                                                   run_dir=tmp_path, extra=[]))
    assert (config.objective.name, config.stale.staleness) == ("minpro", 64)
    testbed = load_config(None, condition_overrides(study, cond, scale="testbed", quick=False, seed=0,
                                                    run_dir=tmp_path, extra=[]))
    assert testbed.stale.staleness == 12  # 64 * 48 / 256: the calibrated equivalent
    # evaluated at the start and at the last EVAL_LAST_K evaluation steps only: 0, 45, 50, 55, 60
    from stalerl.training.loop import eval_due

    assert [st for st in range(1, testbed.steps + 1) if eval_due(testbed, st)] == [45, 50, 55, 60]
    assert len([st for st in range(1, testbed.steps + 1) if eval_due(testbed, st)]) == d.EVAL_LAST_K
    assert [d.sweep_testbed_staleness(s) for s in (0, 1, 16, 64, 256)] == [0, 4, 4, 12, 48]


def _sweep_runs(acc_by_cond, drops_by_cond):
    """Two seeds of three problems per condition; accuracy per problem and largest reward drops."""
    return {c: [_stats(eval_problems_lastk=[a, a, a], eval_lastk=a, eval_best=a + 0.05, reward_largest_drop=dr,
                       crashed_at=None) for a, dr in zip(accs, drops_by_cond[c], strict=True)]
            for c, accs in acc_by_cond.items()}


def test_sweep_table_and_figure_from_hand_made_runs(tmp_path):
    from stalerl.studies.sweep import COLLAPSE_DROP, write_sweep

    study = d.STUDIES["staleness-sweep"]
    runs_ = _sweep_runs({"m2po-s0": [0.30, 0.40], "m2po-s256": [0.30, 0.30], "no_tr-s256": [0.10, 0.20]},
                        {"m2po-s0": [0.0, 0.1], "m2po-s256": [0.05, 0.05], "no_tr-s256": [0.5, 0.1]})
    runs_["no_tr-s256"][1]["crashed_at"] = 40  # a crash is a collapse whatever the drop
    rows = write_sweep(tmp_path, study, runs_)
    by = {r["condition"]: r for r in rows}
    assert [r["condition"] for r in rows] == ["no_tr-s256", "m2po-s0", "m2po-s256"]  # the study's order
    assert by["m2po-s0"]["accuracy"].estimate == pytest.approx(0.35)  # mean of seeds x problems
    # two seeds 0.30 / 0.40: the bootstrap over seeds draws (0.30, 0.30) ... (0.40, 0.40)
    assert by["m2po-s0"]["accuracy"].low == pytest.approx(0.30) and by["m2po-s0"]["accuracy"].high == pytest.approx(0.40)
    assert by["m2po-s256"]["accuracy"].low == by["m2po-s256"]["accuracy"].high == pytest.approx(0.30)
    assert by["m2po-s0"]["best"] == pytest.approx(0.40)
    assert by["no_tr-s256"]["drop"].estimate == pytest.approx(0.3)
    assert 0.5 > COLLAPSE_DROP > 0.1
    assert (by["no_tr-s256"]["collapsed"], by["m2po-s0"]["collapsed"], by["m2po-s256"]["collapsed"]) == (2, 0, 0)
    text = (tmp_path / "sweep.md").read_text()
    # m2po at s = 256 against s = 0, seed by seed: 0.30 - 0.30 and 0.30 - 0.40, so -5 points, the
    # bootstrap over the two seeds spans -10 .. 0; no_tr has no s = 0 run, and s = 0 has no change
    assert by["m2po-s256"]["change"].estimate == pytest.approx(-0.05)
    assert (by["m2po-s256"]["change"].low, by["m2po-s256"]["change"].high) == (pytest.approx(-0.10), pytest.approx(0.0))
    assert by["m2po-s0"]["change"] is None and by["no_tr-s256"]["change"] is None
    assert "| m2po | 0 | 0 | 35.0% [30.0, 40.0] | – | 40.0% | 0.05 [0, 0.1] | 0/2 |" in text
    assert "| m2po | 256 | 48 | 30.0% [30.0, 30.0] | -5.0 pt [-10.0, +0.0] | 35.0% |" in text
    assert "| no_tr | 256 | 48 | 15.0% [10.0, 20.0] | – | 20.0% |" in text and "| 2/2 |" in text
    assert "![staleness sweep](sweep.png)" in text
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_sweep_without_accuracy_writes_the_table_and_no_figure(tmp_path):
    from stalerl.studies.sweep import write_sweep

    rows = write_sweep(tmp_path, d.STUDIES["staleness-sweep"], {"grpo-s16": [_stats(reward_largest_drop=0.1)]})
    assert len(rows) == 1 and not (tmp_path / "sweep.png").exists()
    assert "| grpo | 16 | 4 | n/a | – | n/a |" in (tmp_path / "sweep.md").read_text()


@pytest.mark.slow
def test_runs_go_seed_by_seed_unless_a_condition_derives():
    """A study stopped early holds whole seeds; a derived condition keeps the plan's order, since
    it needs the conditions before it finished."""
    from stalerl.studies.reproduce import run_order

    a, b = d.Condition("a", "grpo"), d.Condition("b", "m2po")
    plan = [(c, seed, None, []) for c in (a, b) for seed in range(3)]  # condition-major, like reproduce
    order = run_order(plan)
    assert [(plan[i - 1][0].name, plan[i - 1][1]) for i in order] == [
        ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    derived = d.Condition("c", "mispo", derive=lambda stats: {})
    plan = [(c, seed, None, []) for c in (a, derived) for seed in range(2)]
    assert run_order(plan) == [1, 2, 3, 4]


def test_quick_staleness_sweep(tmp_path, tiny_overrides, monkeypatch):
    """Two objectives of the sweep at s = 0 and s = 16 (capped at the quick staleness), end to end."""
    base = d.STUDIES["staleness-sweep"]
    keep = {"m2po-s0", "m2po-s16", "grpo-s0", "grpo-s16"}
    study = d.Study(name="sweep-test", seed_file=base.seed_file, title=base.title, claims=[],
                    conditions=[c for c in base.conditions if c.name in keep], paper_scale=base.paper_scale,
                    sweep=True)
    monkeypatch.setitem(d.STUDIES, "sweep-test", study)
    overrides = [o for o in tiny_overrides() if o.startswith(("model.path", "reward.function"))]
    out = reproduce("sweep-test", out=tmp_path / "sweep", quick=True, overrides=overrides, progress=False)
    text = (out / "sweep.md").read_text()
    assert text.count("| m2po |") == 2 and text.count("| grpo |") == 2
    assert load_config(out / "runs" / "m2po-s16-seed0" / "config.yaml").stale.staleness == d.QUICK_STALENESS
    assert "[sweep.md](sweep.md)" in (out / "verdicts.md").read_text()


@pytest.mark.slow  # a warm-up run, two timed runs and a fresh interpreter's imports: a minute under load
def test_study_speed_benchmark_smoke(tiny_testbed, capsys):
    import importlib.util
    from pathlib import Path

    from stalerl.rewards import verifier
    from stalerl.training import loop

    path = Path(__file__).parents[1] / "benchmarks" / "study_speed.py"
    spec = importlib.util.spec_from_file_location("bench_study_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    switches = (loop._stats_from_gradient_pass, verifier.integer_verdict, loop.evaluate)
    tiny = [f"model.path={tiny_testbed}", "data.eval_size=4", "data.testbed_train_size=100", "rollout.prompts_per_step=2",
            "rollout.group_size=4", "optim.mini_batches=2", "rollout.max_new_tokens=8"]
    ratios = bench.main(["--objectives", "m2po", "--steps", "1", "--staleness", "0", "--rounds", "1",
                         *[a for o in tiny for a in ("--set", o)]])
    assert set(ratios) == {"m2po"} and all(r > 0 for r in ratios["m2po"].values())
    out = capsys.readouterr().out
    assert "| m2po |" in out and "staleness-sweep" in out
    assert (loop._stats_from_gradient_pass, verifier.integer_verdict, loop.evaluate) == switches  # restored


@pytest.mark.slow  # two short runs and one counted run of the tiny testbed
def test_study_speed_floor_counts_each_part_of_a_run(tiny_testbed, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from stalerl.training import loop

    path = Path(__file__).parents[1] / "benchmarks" / "study_speed.py"
    spec = importlib.util.spec_from_file_location("bench_study_speed_floor", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    switches = (loop.evaluate, loop.make_rollout_batch)
    tiny = [f"model.path={tiny_testbed}", "data.eval_size=4", "data.testbed_train_size=100", "rollout.prompts_per_step=2",
            "rollout.group_size=4", "optim.mini_batches=2", "rollout.max_new_tokens=8"]
    flops = bench.count_run("grpo", 2, 0, tiny, tmp_path)
    # a step is its generation batch (8 rows) plus two updates' forward+backward on the same rows:
    # more than the batch alone, and each part did some arithmetic
    assert flops["step"] > flops["generation"] > 0 and flops["eval"] > 0
    assert (loop.evaluate, loop.make_rollout_batch) == switches  # restored
    floors = bench.main(["--floor", "--objectives", "grpo", "--steps", "1", *[a for o in tiny for a in ("--set", o)]])
    assert set(floors["floor_minutes"]) == set(d.STUDIES)
    # the sweep has the most runs of the studies' setting, so the most arithmetic
    assert max(floors["floor_minutes"], key=floors["floor_minutes"].get) == "staleness-sweep"
    assert "| staleness-sweep | 160 |" in capsys.readouterr().out


# ------------------------------------------------------------------ calibration (drift statistics)


def _drift_run(tmp_path):
    """A run at s = 8 with two fill-up updates (staleness 0, 4) and two steady-state updates."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("stale:\n  staleness: 8\n")
    updates = [
        {"update": 0, "train/staleness": 0, "actor/pg_clipfrac": 0.5, "actor/m2": 9.0, "actor/ppo_kl": 9.0, "train/entropy": 9.0},
        {"update": 1, "train/staleness": 4, "actor/pg_clipfrac": 0.5, "actor/m2": 9.0, "actor/ppo_kl": 9.0, "train/entropy": 9.0},
        {"update": 2, "train/staleness": 8, "actor/pg_clipfrac": 0.01, "actor/m2": 0.02, "actor/ppo_kl": 0.01, "train/entropy": 0.3},
        {"update": 3, "train/staleness": 9, "actor/pg_clipfrac": 0.03, "actor/m2": 0.04, "actor/ppo_kl": None, "train/entropy": 0.5},
    ]
    # log rho(tau): ln 0.996 = -0.00401, ln 1.001 = 0.0009995
    diagnostics = [
        {"update": 0, "entropy": [5.0, 5.0], "traj_log_ratio": [1.0, -1.0]},
        {"update": 2, "entropy": [0.1, 0.7, 1.0, 0.5], "traj_log_ratio": [0.0, 0.0005, -0.003, 0.01]},
        {"update": 3, "entropy": [0.1, 0.1, 0.1, 2.0], "traj_log_ratio": [0.02, -0.02]},
    ]
    (run / "updates.jsonl").write_text("".join(json.dumps(u) + "\n" for u in updates))
    (run / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diagnostics))
    return run


def test_drift_stats_are_steady_state_medians(tmp_path):
    from stalerl.studies.calibration import drift_stats

    stats = drift_stats(_drift_run(tmp_path))
    assert stats["staleness"] == 8 and stats["updates"] == 2  # the fill-up updates (staleness 0, 4) left out
    assert stats["clipfrac"] == pytest.approx(0.02)  # mean of 0.01, 0.03
    assert stats["m2_all"] == pytest.approx(0.03) and stats["entropy"] == pytest.approx(0.4)  # medians
    assert stats["kl"] == pytest.approx(0.01)  # the null value is not a number
    assert stats["m2_before"] is None and stats["masked_frac"] is None  # not an M2PO run
    # entropies above 0.672 nats: 2 of 4, then 1 of 4 -> median 0.375
    assert stats["forking_frac"] == pytest.approx(0.375)
    # inside [0.996, 1.001]: 0, 0.0005, -0.003 of 4 (0.75), none of 2 (0) -> median 0.375
    assert stats["mispo_accept"] == pytest.approx(0.375)
    spread = [float(np.std([0.0, 0.0005, -0.003, 0.01])), 0.02]
    assert stats["traj_log_ratio_std"] == pytest.approx(np.median(spread))


def test_calibration_benchmark_plans_fill_up_plus_measured_steps_and_prints_targets(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "calibrate_testbed.py"
    spec = importlib.util.spec_from_file_location("calibrate_testbed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench._parse(["--out", str(tmp_path), "--candidate", "c", "stale.staleness=8 optim.lr=1e-4",
                         "--measure-steps", "5"])
    runs = bench.plan(args)
    steps = {cond: int(bench._value(o, "steps", "0")) for _, cond, _, o in runs}
    assert steps == {"grpo-s0": 5, "grpo": 5 + 8 // 4, "m2po": 5 + 8 // 4}  # s / m fill-up steps
    for _, cond, _dir, overrides in runs:
        assert load_config(None, overrides).stale.staleness == (0 if cond == "grpo-s0" else 8)
    # candidates that differ only in staleness share their on-policy run, not the stale ones
    two = bench.plan(bench._parse(["--out", str(tmp_path), "--candidate", "a", "stale.staleness=8 optim.lr=1e-4",
                                   "--candidate", "b", "stale.staleness=16 optim.lr=1e-4"]))
    dirs = {(name, cond): run_dir for name, cond, run_dir, _ in two}
    assert dirs["a", "grpo-s0"] == dirs["b", "grpo-s0"] and dirs["a", "grpo"] != dirs["b", "grpo"]
    # the grpo run's statistics land in the row of each target measured on it
    (tmp_path / "c").mkdir()
    _drift_run(tmp_path / "c")
    (tmp_path / "c" / "run").rename(tmp_path / "c" / "grpo")
    text, raw = bench.table(runs)
    assert raw["c/grpo"]["clipfrac"] == pytest.approx(0.02)
    row = next(line for line in text.splitlines() if line.startswith("| clipfrac | grpo |"))
    assert "0.66%–1.22%" in row and row.rstrip(" |").endswith("2.00%")
