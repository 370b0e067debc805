"""Benchmark: the studies' training loop with and without the speed changes, in one process.

Runs ``stalerl train`` in-process (:func:`stalerl.training.loop.train`) on the studies' testbed
settings (``TESTBED_OVERRIDES`` of ``stalerl/studies/definitions.py``, ``steps`` shortened), once
per variant and round, the variants interleaved:

* ``before``: the speed changes switched off by monkeypatching their switch points, and the
  evaluation at its former size (``eval.samples=4``):
  ``loop._stats_from_gradient_pass`` -> False (M2PO / AC-MIS-PO / RandomTraj score each mini-batch
  twice: a no-grad pass for their statistics, then the gradient pass) and
  ``verifier.integer_verdict`` -> None (every integer answer that is not the same string goes to a
  math-verify worker process);
* ``after``: the code as shipped, the evaluation as ``TESTBED_OVERRIDES`` sizes it.

For each run it reads ``metrics.jsonl`` and times ``evaluate`` (wrapped): per training step
(``timing_s/step``, steps after the first), per evaluation, and the rest (start-up: model, problems,
verifier), after one untimed warm-up run; a new interpreter's imports are timed apart (each run of
``reproduce --jobs`` is a subprocess that pays them). It prints the before/after ratio of each, measured in the same process, and the
estimated wall time of each full study at 5 seeds (runs x estimated run time / cores, assuming
``--jobs`` = cores share them perfectly), from the ``after`` numbers, with the machine's cores
and load average next to them: on a shared machine only the ratios are comparable between runs.

Usage::

    python benchmarks/study_speed.py                         # m2po and grpo_verl, 10 steps, 2 rounds
    python benchmarks/study_speed.py --objectives m2po --steps 6 --rounds 1      # quick look
    python benchmarks/study_speed.py --set model.testbed_size=tiny               # any train override
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from stalerl.rewards import verifier
from stalerl.studies import definitions as d
from stalerl.studies.reproduce import condition_overrides
from stalerl.training import loop
from stalerl.training.config import load_config
from stalerl.run_files import read_steps

BEFORE_EVAL_SAMPLES = 4
"""``eval.samples`` before the evaluation was sized by the interval it must give."""


def run_once(variant: str, objective: str, steps: int, staleness: int, extra: list[str], root: Path) -> dict:
    """One in-process training run; returns its per-step, per-evaluation and start-up seconds."""
    overrides = [o for o in d.TESTBED_OVERRIDES if not o.startswith("steps=")]
    overrides += [f"steps={steps}", f"objective.name={objective}", f"stale.staleness={staleness}",
                  "progress=false", "tensorboard=false", "plots=false",
                  f"run_dir={root / f'{variant}-{objective}-{time.monotonic_ns()}'}"]
    if variant == "before":
        overrides.append(f"eval.samples={BEFORE_EVAL_SAMPLES}")
    config = load_config(None, overrides + extra)
    saved = (loop._stats_from_gradient_pass, verifier.integer_verdict, loop.evaluate)
    eval_seconds: list[float] = []

    def timed_evaluate(*args, **kwargs):
        t0 = time.perf_counter()
        out = saved[2](*args, **kwargs)
        eval_seconds.append(time.perf_counter() - t0)
        return out

    try:
        loop.evaluate = timed_evaluate
        if variant == "before":
            loop._stats_from_gradient_pass = lambda micros: False
            verifier.integer_verdict = lambda gold, pred: None
        t0 = time.perf_counter()
        result = loop.train(config, progress=False)
        wall = time.perf_counter() - t0
    finally:
        loop._stats_from_gradient_pass, verifier.integer_verdict, loop.evaluate = saved
    records = [r for r in read_steps(result.run_dir) if "timing_s/step" in r]
    step_times = [r["timing_s/step"] for r in records]
    gen = [r.get("timing_s/gen", 0.0) + r.get("timing_s/reward", 0.0) + r.get("timing_s/old_log_prob", 0.0)
           for r in records]
    return {"wall": wall, "step": statistics.mean(step_times[1:] or step_times),
            "eval": statistics.mean(eval_seconds) if eval_seconds else 0.0,
            "generation": statistics.mean(gen), "startup": wall - sum(step_times) - sum(eval_seconds)}


def study_estimate(study: d.Study, m: dict[str, float], seeds: int, cores: int) -> float:
    """Estimated wall seconds of a full study from per-step / per-eval / start-up seconds."""
    total = 0.0
    for cond in study.conditions:
        c = load_config(None, condition_overrides(study, cond, scale="testbed", quick=False, seed=0,
                                                  run_dir=Path("unused"), extra=[]))
        evals = (c.steps // c.eval.every if c.eval.every else 0) + 1  # and step 0
        # a stale run generates s / m batches more than it consumes (they wait in its final
        # checkpoint), unless the staleness reaches beyond the run (loop._generation_limit)
        s, m_ = c.stale.staleness, c.optim.mini_batches
        fill = s // m_ if s <= (c.steps - 1) * m_ else 0
        total += m["startup"] + c.steps * m["step"] + evals * m["eval"] + fill * m["generation"]
    return seeds * total / cores


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns, per objective, the before/after ratios (step, eval, whole run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["m2po", "grpo_verl"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--staleness", type=int, default=4, help="stale.staleness of the measured runs (updates)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a stalerl train override")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores, load average {os.getloadavg()[0]:.2f} at start, torch {torch.__version__}, "
          f"1 thread; testbed overrides: {' '.join(d.TESTBED_OVERRIDES)}")
    t0 = time.perf_counter()  # what each `stalerl train` subprocess of `reproduce --jobs` pays first
    subprocess.run([sys.executable, "-c", "import stalerl.training.loop, transformers.models.qwen3"], check=True)
    process_start = time.perf_counter() - t0
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_once("after", args.objectives[0], 2, 0, args.extra, Path(tmp))  # warm-up: imports, caches
        for r in range(args.rounds):
            for objective in args.objectives:
                for variant in ("before", "after"):
                    out = run_once(variant, objective, args.steps, args.staleness, args.extra, Path(tmp))
                    results.setdefault((objective, variant), []).append(out)
                    print(f"round {r + 1} {objective:10s} {variant:6s} wall {out['wall']:6.1f} s  step "
                          f"{out['step']:.3f} s  eval {out['eval']:.2f} s  start-up {out['startup']:.1f} s", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}\n")
    print("| objective | per step before / after | ratio | per eval before / after | ratio | whole run ratio |")
    print("|---|---|---|---|---|---|")
    merged: dict[str, list[float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for objective in args.objectives:
        b = {k: statistics.median(x[k] for x in results[(objective, "before")]) for k in results[(objective, "before")][0]}
        a = {k: statistics.median(x[k] for x in results[(objective, "after")]) for k in results[(objective, "after")][0]}
        print(f"| {objective} | {b['step']:.3f} / {a['step']:.3f} s | {b['step'] / a['step']:.2f}x | "
              f"{b['eval']:.2f} / {a['eval']:.2f} s | {b['eval'] / max(a['eval'], 1e-9):.2f}x | "
              f"{b['wall'] / a['wall']:.2f}x |")
        for k, v in a.items():
            merged.setdefault(k, []).append(v)
        ratios[objective] = {k: b[k] / max(a[k], 1e-9) for k in ("step", "eval", "wall")}
    after = {k: statistics.mean(v) for k, v in merged.items()}
    after["startup"] += process_start
    print(f"\nestimated full studies (each study's own steps and staleness), 5 seeds, on {cores} cores (--jobs {cores}), from "
          f"the 'after' runs (mean of objectives: step {after['step']:.2f} s, eval {after['eval']:.2f} s, "
          f"start-up {after['startup']:.1f} s with a new process's imports {process_start:.1f} s):")
    for study in d.STUDIES.values():
        minutes = study_estimate(study, after, study.seeds, cores) / 60
        print(f"  {study.name:16s} {len(study.conditions) * study.seeds:4d} runs  ~{minutes:.0f} min")
    return ratios


if __name__ == "__main__":
    main()
