"""``stalerl report`` and the figures: fabricated run directories, and one short real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from stalerl.cli.main import main as cli_main
from stalerl.evaluation import plots
from stalerl.run_files import METRIC_ALIASES, canonical

OLD_NAMES = {new: old for old, new in METRIC_ALIASES.items()}


def make_run(path, objective="mispo", seed=0, steps=6, crash_at=None, hparams=None, staleness=2, legacy=False):
    """A small fake run directory with the files and metric names ``stalerl train`` writes, or with
    ``legacy`` those it wrote before the metric renames (docs/METRICS.md) and ``events.jsonl``: the
    old names, and the crash event inside ``metrics.jsonl``."""
    rng = np.random.default_rng(seed + 17 * len(objective))
    path.mkdir(parents=True)
    config = {"objective": {"name": objective, "hparams": hparams or {}}, "seed": seed,
              "stale": {"staleness": staleness}, "run_dir": str(path)}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    filters = objective.startswith("mispo") or objective == "ac_mispo"
    metrics = [{"step": 0, "eval/accuracy": 0.1 + 0.01 * seed}]
    updates, diags = [], []
    last = crash_at - 1 if crash_at else steps
    for step in range(1, last + 1):
        rec = {"step": step, "rollout/reward_mean": 0.1 * step + 0.01 * seed, "train/entropy": 1.5 - 0.05 * step,
               "train/staleness": 2.0, "actor/m2": 1e-4 * step, "actor/kl_k3": 5e-5 * step,
               "actor/pg_clipfrac": 0.1, "eval/accuracy": float(rng.random())}
        ups = []
        for u in range(2):
            upd = {"step": step, "update": 2 * (step - 1) + u, "train/grad_norm": float(rng.random() + 0.5),
                   "actor/m2": float(rng.random() * 1e-3)}
            if filters:
                upd["actor/traj_accept_frac"] = float(rng.random())
            ups.append(upd)
            lr = rng.normal(0, 2e-3, 8)
            d = {"step": step, "update": upd["update"], "traj_log_ratio": lr.tolist(),
                 "entropy": rng.random(16).tolist(), "ratio": np.exp(rng.normal(0, 0.05, 16)).tolist()}
            if filters:
                d["traj_accepted"] = ((lr >= math.log(0.996)) & (lr <= math.log(1.001))).tolist()
            diags.append(d)
        updates += ups
        rec["train/grad_norm"] = float(np.mean([u["train/grad_norm"] for u in ups]))
        if filters:
            rec["actor/traj_accept_frac"] = float(np.mean([u["actor/traj_accept_frac"] for u in ups]))
        metrics.append(rec)
    events = [{"event": "crash", "step": crash_at, "reason": "5 consecutive non-finite updates"}] if crash_at else []
    if legacy:
        metrics, updates = ([{OLD_NAMES.get(k, k): v for k, v in r.items()} for r in rs] for rs in (metrics, updates))
        metrics, events = metrics + events, []
    for name, records in (("metrics.jsonl", metrics), ("updates.jsonl", updates), ("diagnostics.jsonl", diags),
                          ("events.jsonl", events)):
        (path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    evals = [(r["step"], r["eval/accuracy"]) for r in metrics if "eval/accuracy" in r]
    best = max(evals, key=lambda e: e[1])
    (path / "summary.json").write_text(json.dumps({
        "objective": objective, "hparams": hparams or {}, "staleness": staleness, "steps_done": last,
        "crashed_at": crash_at, "crash_reason": "5 consecutive non-finite updates" if crash_at else None,
        "eval_accuracy_best": best[1], "best_step": best[0]}))
    return path


@pytest.fixture(params=[False, True], ids=["current", "legacy"])
def fake_runs(tmp_path, request):
    return [
        make_run(tmp_path / "mispo-0", "mispo", 0, legacy=request.param),
        make_run(tmp_path / "mispo-1", "mispo", 1, legacy=request.param),
        make_run(tmp_path / "grpo-0", "grpo", 0, legacy=request.param),
        make_run(tmp_path / "grpo-1", "grpo", 1, crash_at=4, legacy=request.param),
    ]


def _records(run, name="metrics.jsonl"):
    """The records of one of a run's files, under today's metric names."""
    return [canonical(json.loads(line)) for line in (run / name).read_text().splitlines()]


def test_group_runs_one_colour_per_objective(fake_runs, tmp_path):
    groups = plots.group_runs([plots.load_run(r) for r in fake_runs])
    assert [g.label for g in groups] == ["mispo", "grpo"]
    assert [len(g.runs) for g in groups] == [2, 2]
    assert groups[0].color != groups[1].color
    # same objective, other hyperparameters: separate groups with distinguishing labels
    other = make_run(tmp_path / "mispo-wide", "mispo", 0, hparams={"traj_low": 0.9})
    groups = plots.group_runs([plots.load_run(r) for r in fake_runs[:2] + [other]])
    assert len(groups) == 2 and "traj_low=0.9" in groups[1].label


def test_report_files_and_numbers(fake_runs, tmp_path):
    out = tmp_path / "report"
    assert cli_main(["report", *map(str, fake_runs), "--out", str(out), "--title", "Fake study"]) == 0
    for name in ("report.md", "report.json", "learning.png", "dynamics.png", "entropy_vs_ratio.png",
                 "log_rho.png", "accept_vs_m2.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert md.startswith("# Fake study")
    for fig in ("learning.png", "dynamics.png", "entropy_vs_ratio.png", "log_rho.png", "accept_vs_m2.png"):
        assert f"({fig})" in md
    data = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in data["runs"]}
    for run in fake_runs:
        row = rows[run.name]
        steps = [r for r in _records(run) if "event" not in r]
        evals = [(r["step"], r["eval/accuracy"]) for r in steps if "eval/accuracy" in r]
        best = max(evals, key=lambda e: e[1])
        assert row["eval_accuracy_best"] == pytest.approx(best[1])
        assert row["best_step"] == best[0]
        assert row["eval_accuracy_final"] == pytest.approx(evals[-1][1])
        norms = [json.loads(line)["train/grad_norm"] for line in (run / "updates.jsonl").read_text().splitlines()]
        assert row["grad_norm_mean"] == pytest.approx(np.mean(norms))
        assert row["grad_norm_p99"] == pytest.approx(np.percentile(norms, 99))
        assert row["grad_norm_max"] == pytest.approx(max(norms))
        # the per-update grad-norm mean equals the mean of metrics.jsonl's per-step means here
        assert row["grad_norm_mean"] == pytest.approx(np.mean([r["train/grad_norm"] for r in steps if "train/grad_norm" in r]))
        assert f"{best[1]:.4g}" in md
    assert rows["grpo-1"]["crashed_at"] == 4 and rows["grpo-0"]["crashed_at"] is None
    assert "crashed at step 4" in md
    assert math.isnan(rows["grpo-0"]["traj_accept_rate_mean"])  # grpo does not filter
    acc = [r["actor/traj_accept_frac"] for r in _records(fake_runs[0], "updates.jsonl")]
    assert rows["mispo-0"]["traj_accept_rate_mean"] == pytest.approx(np.mean(acc))
    # several seeds per objective: the per-objective table is there
    assert "## Objectives (mean ± std over seeds)" in md
    assert "| grpo | 2 |" in md and "1/2" in md
    # diagnostics: KS between the two objectives, mispo's band applied to grpo's trajectories
    pair = data["diagnostics"]["pairs"][0]
    assert {pair["a"], pair["b"]} == {"mispo", "grpo"}
    assert 0 <= pair["ks"]["statistic"] <= 1
    assert data["diagnostics"]["log_rho"]["mispo"]["band"] == pytest.approx([math.log(0.996), math.log(1.001)])
    assert "mispo" in data["diagnostics"]["accept_m2"] and "grpo" not in data["diagnostics"]["accept_m2"]


def test_report_default_out_dir_and_single_run(tmp_path):
    run = make_run(tmp_path / "only", "grpo", 0)
    assert cli_main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "## Objectives" not in md  # one run per objective: no seed table
    assert (run / "report" / "learning.png").is_file()
    assert not (run / "report" / "accept_vs_m2.png").exists()  # no acceptance rate logged


@pytest.mark.parametrize("legacy", [False, True], ids=["events.jsonl", "event in metrics.jsonl"])
def test_crash_read_from_the_event_without_a_summary(tmp_path, legacy):
    run = make_run(tmp_path / "crashed", "grpo", 0, crash_at=3, legacy=legacy)
    (run / "summary.json").unlink()  # a run killed before its summary: the crash event tells
    loaded = plots.load_run(run)
    assert (loaded.crashed_at, loaded.crash_reason) == (3, "5 consecutive non-finite updates")
    assert [r["step"] for r in loaded.steps] == [0, 1, 2]  # the event is not a step


def test_report_bad_input(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_learning_curves_only_existing_panels(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "rollout/reward_mean": 0.1 * s}) + "\n"
                                               for s in range(1, 5)))
    out = plots.learning_curves([run], tmp_path / "c.png")
    assert out is not None and out.is_file()
    assert plots.plot_panels([run], tmp_path / "d.png", keys=["actor/m2"]) is None
    assert not (tmp_path / "d.png").exists()
    drawn = plots.plot_panels([run], tmp_path / "e.png")
    assert drawn == ["rollout/reward_mean"]


def test_report_from_a_real_run(tiny_overrides, tmp_path):
    """End to end: a 3-step mispo run on the tiny testbed, then its report."""
    from stalerl.training.config import load_config
    from stalerl.training.loop import train

    run_dir = tmp_path / "real"
    cfg = load_config(None, tiny_overrides("steps=3", "objective.name=mispo", "stale.staleness=2",
                                           "data.eval_size=4", "eval.every=1", run_dir=run_dir))
    result = train(cfg)
    assert result.steps_done == 3
    out = tmp_path / "rep"
    assert cli_main(["report", str(run_dir), "--out", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "learning.png").is_file() and (out / "dynamics.png").is_file()
    data = json.loads((out / "report.json").read_text())
    row = data["runs"][0]
    steps = [r for r in _records(run_dir) if "event" not in r]
    evals = [(r["step"], r["eval/accuracy"]) for r in steps if r.get("eval/accuracy") is not None]
    best = max(evals, key=lambda e: e[1])
    assert row["eval_accuracy_best"] == pytest.approx(best[1]) and row["best_step"] == best[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert row["eval_accuracy_best"] == pytest.approx(summary["eval_accuracy_best"])
    norms = [json.loads(line)["train/grad_norm"] for line in (run_dir / "updates.jsonl").read_text().splitlines()]
    norms = [n for n in norms if n is not None]
    assert row["grad_norm_mean"] == pytest.approx(np.mean(norms))
    assert row["steps_done"] == 3 and row["crashed_at"] is None
    assert "mispo" in data["diagnostics"]["log_rho"]
    assert plots.learning_curves([run_dir], tmp_path / "curves.png") is not None
