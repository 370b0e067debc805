"""Calibration: the drift statistics of candidate testbed settings beside the papers' ranges.

For each candidate setting (any ``stalerl train`` overrides: ``optim.lr``, ``stale.staleness``,
``optim.mini_batches``, ``rollout.group_size``, ``model.testbed_size``, ...) it runs three short
training runs of the testbed: ``grpo_verl`` on-policy (s = 0), ``grpo_verl`` at the candidate's
staleness s and ``m2po`` at s; then it prints, per statistic of
:data:`stalerl.studies.calibration.TARGETS`, the papers' range, its source, and each candidate's
median over the steady-state updates (the updates that train on data exactly s updates stale;
:func:`stalerl.studies.calibration.drift_stats`).

A stale run lasts ``s / m`` steps of fill-up (training on the initial policy's rollouts) plus
``--measure-steps`` steady-state steps; an on-policy run lasts ``--measure-steps`` steps (candidates that differ only in staleness share
it). Runs go
in parallel subprocesses (``--jobs``, each given ``runtime.cores = cores // jobs``; set
``OMP_NUM_THREADS`` to the cores the calibration may use), without evaluation or checkpoints. A
run directory with a ``summary.json`` is reused, so a second call only prints.

The loop time of each run (the sum of its steps' ``timing_s/step``) is printed too: it sizes the
studies (docs/REPRODUCTION.md, "Calibration").

Usage::

    OMP_NUM_THREADS=2 python benchmarks/calibrate_testbed.py --out /tmp/calib \\
        --candidate s64-lr1e-4 "stale.staleness=64 optim.lr=1e-4" \\
        --candidate s256-lr5e-5 "stale.staleness=256 optim.lr=5e-5"
    python benchmarks/calibrate_testbed.py --out /tmp/calib --quick     # smoke test, tiny model
    python benchmarks/calibrate_testbed.py --out /tmp/calib --json      # also the numbers as JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stalerl.run_files import RunFiles, read_steps
from stalerl.studies.calibration import TARGETS, drift_stats

#: The testbed defaults the studies use (stalerl/studies/definitions.py), without evaluation.
BASE = ["rollout.prompts_per_step=16", "rollout.group_size=8", "optim.mini_batches=4", "data.eval_size=0",
        "checkpoint_every=0", "plots=false", "tensorboard=false", "progress=false"]
QUICK = ["model.testbed_size=tiny", "rollout.prompts_per_step=4", "rollout.group_size=4", "optim.mini_batches=2",
         "rollout.max_new_tokens=24", "data.testbed_train_size=200", "data.eval_size=0", "checkpoint_every=0",
         "plots=false", "tensorboard=false", "progress=false"]
DEFAULT_CANDIDATES = [("s64-lr1e-4", "stale.staleness=64 optim.lr=1e-4"),
                      ("s256-lr5e-5", "stale.staleness=256 optim.lr=5e-5")]
#: (condition name, objective, stale)
CONDITIONS = [("grpo-s0", "grpo_verl", False), ("grpo", "grpo_verl", True), ("m2po", "m2po", True)]


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory of the runs (reused on a second call)")
    p.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "OVERRIDES"),
                   help="a candidate: its name and its space-separated train overrides (repeatable)")
    p.add_argument("--measure-steps", type=int, default=16, help="steady-state steps per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model and batches: a smoke test of the tool")
    p.add_argument("--json", action="store_true", help="also print the statistics as JSON")
    return p.parse_args(argv)


def _value(overrides: list[str], key: str, default: str) -> str:
    found = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return found[-1] if found else default


def plan(args) -> list[tuple[str, str, Path, list[str]]]:
    """(candidate, condition, run dir, overrides) of every run."""
    base = QUICK if args.quick else BASE
    candidates = args.candidate or ([("quick", "stale.staleness=4 optim.lr=1e-3")] if args.quick else DEFAULT_CANDIDATES)
    measure = min(args.measure_steps, 3) if args.quick else args.measure_steps
    runs = []
    for name, text in candidates:
        own = base + text.split()
        s = int(_value(own, "stale.staleness", "0"))
        m = int(_value(own, "optim.mini_batches", "4"))
        for cond, objective, stale in CONDITIONS:
            steps = measure + (s // m if stale else 0)
            run_dir = Path(args.out) / name / cond
            if not stale:  # candidates that differ only in staleness share their on-policy run
                key = " ".join(sorted(o for o in own if not o.startswith("stale.staleness=")))
                run_dir = Path(args.out) / "on-policy" / hashlib.sha256(key.encode()).hexdigest()[:10]
            overrides = own + [f"objective.name={objective}", f"stale.staleness={s if stale else 0}",
                               f"steps={steps}", f"seed={args.seed}", f"run_dir={run_dir}"]
            runs.append((name, cond, run_dir, overrides))
    return runs


def run_all(runs, jobs: int) -> None:
    """Each run not finished yet, in up to ``jobs`` subprocesses at once."""
    from stalerl.runtime import run_cores

    cores = max(1, run_cores() // jobs)
    todo = list({r[2]: r for r in runs if not RunFiles(r[2]).summary.is_file()}.values())  # shared runs once
    running: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(cores), "MKL_NUM_THREADS": str(cores)}
    for _, _, run_dir, overrides in todo:
        while len(running) >= jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.5)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "stalerl", "train", f"runtime.cores={cores}", *overrides]
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    for p in running:
        p.wait()


def _seconds(run_dir: Path) -> float | None:
    """Loop time of a finished run: the sum of its steps' ``timing_s/step`` (the fill-up is in step 1's)."""
    if not RunFiles(run_dir).summary.is_file():
        return None
    return sum(r.get("timing_s/step") or 0.0 for r in read_steps(run_dir))


def _fmt(value, statistic: str) -> str:
    if value is None:
        return "–"
    if statistic in ("clipfrac", "masked_frac", "forking_frac", "mispo_accept"):
        return f"{100 * value:.2f}%"
    return f"{value:.3g}"


def table(runs) -> tuple[str, dict]:
    """The markdown table (one row per target, one column per candidate) and the raw statistics."""
    stats = {(name, cond): drift_stats(run_dir) for name, cond, run_dir, _ in runs if RunFiles(run_dir).updates.is_file()}
    names = list(dict.fromkeys(name for name, *_ in runs))
    head = "| statistic | condition | papers | source | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for t in TARGETS:
        cond = "m2po" if t.objective == "m2po" else ("grpo" if t.stale else "grpo-s0")
        paper = "–" if t.low is None else (_fmt(t.low, t.statistic) if t.low == t.high
                                           else f"{_fmt(t.low, t.statistic)}–{_fmt(t.high, t.statistic)}")
        cells = [_fmt(stats.get((n, cond), {}).get(t.statistic), t.statistic) for n in names]
        lines.append(f"| {t.statistic} | {cond} | {paper} | {t.source} | " + " | ".join(cells) + " |")
    for extra in ("m2_all", "kl", "entropy"):
        cells = [_fmt(stats.get((n, "grpo-s0"), {}).get(extra), extra) for n in names]
        lines.append(f"| {extra} | grpo-s0 | – | on-policy reference | " + " | ".join(cells) + " |")
    for cond in ("grpo-s0", "grpo", "m2po"):
        cells = [str(stats.get((n, cond), {}).get("updates", "–")) for n in names]
        lines.append(f"| steady-state updates | {cond} | | | " + " | ".join(cells) + " |")
    secs = {(name, cond): _seconds(run_dir) for name, cond, run_dir, _ in runs}
    for cond in ("grpo-s0", "grpo", "m2po"):
        cells = ["–" if secs.get((n, cond)) is None else f"{secs[(n, cond)]:.0f} s" for n in names]
        lines.append(f"| run time | {cond} | | | " + " | ".join(cells) + " |")
    return "\n".join(lines), {f"{n}/{c}": v for (n, c), v in stats.items()}


def main(argv=None) -> int:
    args = _parse(argv)
    runs = plan(args)
    t0 = time.time()
    run_all(runs, args.jobs)
    text, raw = table(runs)
    print(text)
    print(f"\n{len(runs)} runs, {time.time() - t0:.0f} s wall, load average {os.getloadavg()[0]:.2f}, "
          f"{os.cpu_count()} cores, --jobs {args.jobs}")
    if args.json:
        print(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
