"""`stalerl reproduce`: the studies' plans, verdict logic, and every study in --quick mode."""

from __future__ import annotations

import json
import math

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


def test_verdicts_follow_the_numbers():
    study = d.STUDIES["mispo-mechanism"]
    stats = {
        "mispo": [_stats(eval_best=0.10, accept_mean=0.30, accepted_std_mean=0.001)],
        "mispo_token_only": [_stats(eval_best=0.40)],
        "mispo_random_traj": [_stats(eval_best=0.05, accept_mean=0.30, accepted_std_mean=0.02)],
    }
    rows = verdicts(study, stats)
    assert [r["reproduced"] for r in rows] == [True, False, True]
    assert "40.0%" in rows[0]["testbed"] and "10.0%" in rows[0]["testbed"]


def test_bound_and_stability_claims_read_the_right_numbers():
    ac = d.STUDIES["ac-mispo"]
    bound = next(i for i, c in enumerate(ac.claims) if "tightens" in c.text)
    pinned = verdicts(ac, {"ac_mispo": [_stats(bound_first=0.00995, bound_last=0.00995)]})[bound]
    tightened = verdicts(ac, {"ac_mispo": [_stats(bound_first=0.00995, bound_last=0.0002)]})[bound]
    assert (pinned["reproduced"], tightened["reproduced"]) == (False, True)
    assert "0.0002" in tightened["testbed"]
    minpro = d.STUDIES["minpro"]
    stable = next(i for i, c in enumerate(minpro.claims) if "collapses" in c.text)
    row = verdicts(minpro, {"minpro": [_stats(eval_best=0.2, eval_final=0.15)],
                            "cispo": [_stats(eval_best=0.25, eval_final=0.0)]})[stable]
    assert row["reproduced"] is True and "15.0%" in row["testbed"]


def test_missing_numbers_give_no_verdict():
    study = d.STUDIES["ac-mispo"]
    rows = verdicts(study, {"ac_mispo": [_stats(eval_best=0.3)]})
    assert rows[1]["reproduced"] is None  # mispo missing: no direction can be read


def test_unknown_study_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown study 'nope'.*prosperity"):
        reproduce("nope", out=tmp_path)


def _quick(study, tmp_path, tiny_overrides):
    overrides = [o for o in tiny_overrides() if o.startswith(("model.path", "reward.function"))]
    out = reproduce(study, out=tmp_path / study, quick=True, overrides=overrides + ["progress=false"],
                    progress=False)
    rows = json.loads((out / "verdicts.json").read_text())
    assert len(rows) == len(d.STUDIES[study].claims)
    assert all(r["reproduced"] in (True, False, None) for r in rows)
    text = (out / "verdicts.md").read_text()
    assert "quick mode" in text and "| claim | paper | testbed | reproduced |" in text
    for cond in d.STUDIES[study].conditions:
        assert (out / "runs" / f"{cond.name}-seed0" / "summary.json").exists()
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {c.name for c in d.STUDIES[study].conditions}
    # a second call reuses the finished runs instead of training again
    mtime = (out / "runs" / f"{d.STUDIES[study].conditions[0].name}-seed0" / "summary.json").stat().st_mtime
    reproduce(study, out=tmp_path / study, quick=True, overrides=overrides + ["progress=false"], progress=False)
    assert (out / "runs" / f"{d.STUDIES[study].conditions[0].name}-seed0" / "summary.json").stat().st_mtime == mtime
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


def test_derived_bound_is_the_mean_final_bound_of_ac_mispo():
    cond = next(c for c in d.STUDIES["ac-mispo"].conditions if c.derive is not None)
    got = cond.derive({"ac_mispo": [_stats(bound_last=0.002), _stats(bound_last=0.004)]})
    assert got == {"traj_low": pytest.approx(math.exp(-0.003), abs=1e-6), "traj_high": pytest.approx(math.exp(0.003), abs=1e-6)}
    with pytest.raises(ValueError, match="ac_mispo runs logged no trajectory bound"):
        cond.derive({"ac_mispo": [_stats()]})


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
