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
    python benchmarks/study_speed.py --floor                 # each study's arithmetic floor (below)

``--floor`` asks how fast the studies could run at all on these cores: it counts the matrix
arithmetic of a short run of the studies' setting (``torch.utils.flop_counter.FlopCounterMode``:
the matmuls and attention, not the elementwise ops, so a lower bound on the work) per training
step, per evaluation and per generation batch, times the same run without the counter, and
measures the core's rate on a large matmul (1024 x 1024, float32, 1 thread) and on the testbed
model's own forward+backward (its 128-wide matmuls run slower than a large one). Each study's
floor is its counted arithmetic at the large-matmul rate on all the cores: no change to the loop
(fusing, batching seeds, fewer dispatches) can make the study faster than that, only less
arithmetic (a smaller model, fewer steps or seeds) or more cores.
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


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one thread on a ``size`` x ``size`` float32 matmul (median of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        times.append(time.perf_counter() - t0)
    return 10 * 2 * size**3 / statistics.median(times)


def model_rate(model_dir: Path, rows: int = 32, tokens: int = 96, repeats: int = 5) -> float:
    """FLOP/s of one thread on the testbed model's forward+backward over ``rows`` x ``tokens``."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (rows, tokens))

    def forward_backward():
        model(input_ids=ids).logits.log_softmax(-1).mean().backward()

    with FlopCounterMode(display=False) as counter:
        forward_backward()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward_backward()
        times.append(time.perf_counter() - t0)
    return counter.get_total_flops() / statistics.median(times)


def count_run(objective: str, steps: int, staleness: int, extra: list[str], root: Path) -> dict[str, float]:
    """The matrix FLOPs of one in-process run of the studies' setting: per training step (its
    updates and the generation batches it made), per evaluation and per generation batch (rollout,
    reward, behaviour log-probs)."""
    from torch.utils.flop_counter import FlopCounterMode

    overrides = [o for o in d.TESTBED_OVERRIDES if not o.startswith("steps=")]
    overrides += [f"steps={steps}", f"objective.name={objective}", f"stale.staleness={staleness}",
                  f"eval.every={steps}", "progress=false", "tensorboard=false", "plots=false",
                  f"run_dir={root / f'floor-{objective}-{time.monotonic_ns()}'}"]
    config = load_config(None, overrides + extra)
    saved = (loop.evaluate, loop.make_rollout_batch)
    counted: dict[str, list[float]] = {"eval": [], "generation": []}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            with FlopCounterMode(display=False) as inner:  # nested: the outer counter sees these too
                out = fn(*args, **kwargs)
            counted[name].append(inner.get_total_flops())
            return out
        return wrapped

    try:
        loop.evaluate, loop.make_rollout_batch = counting("eval", saved[0]), counting("generation", saved[1])
        with FlopCounterMode(display=False) as outer:
            loop.train(config, progress=False)
    finally:
        loop.evaluate, loop.make_rollout_batch = saved
    total = outer.get_total_flops()
    updates = total - sum(counted["eval"]) - sum(counted["generation"])
    generation = statistics.mean(counted["generation"])
    return {"step": updates / steps + generation * len(counted["generation"]) / steps,
            "eval": statistics.mean(counted["eval"]), "generation": generation, "startup": 0.0}


def floor(objective: str, steps: int, extra: list[str]) -> dict[str, float]:
    """Print each study's arithmetic floor on this machine's cores next to the measured loop."""
    from stalerl.testbed.warmstart import warm_start

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        run_once("after", objective, 2, 0, extra, Path(tmp))  # warm-up: imports, caches, the warm start
        timed = run_once("after", objective, steps, 0, extra, Path(tmp))
        flops = count_run(objective, steps, 0, extra, Path(tmp))
    model_config = load_config(None, list(d.TESTBED_OVERRIDES) + extra).model
    model_dir = warm_start(size=model_config.testbed_size, progress=False) if model_config.path == "testbed" else model_config.path
    big, small = [], []
    for _ in range(3):  # interleaved: the rates share whatever load the machine has
        big.append(matmul_rate())
        small.append(model_rate(model_dir))
    big_rate, small_rate = statistics.median(big), statistics.median(small)
    loop_rate = flops["step"] / timed["step"]
    print(f"\nmachine: {cores} cores, load average {os.getloadavg()[0]:.2f}, 1 thread per core")
    print(f"matrix arithmetic per training step {flops['step'] / 1e9:.1f} GFLOP (of it one generation batch "
          f"{flops['generation'] / 1e9:.1f}), per evaluation {flops['eval'] / 1e9:.1f} GFLOP")
    print(f"one core: large matmul {big_rate / 1e9:.1f} GFLOP/s, the model's forward+backward {small_rate / 1e9:.1f} "
          f"GFLOP/s; the loop's steps ({objective}, {timed['step']:.2f} s) {loop_rate / 1e9:.1f} GFLOP/s = "
          f"{loop_rate / big_rate:.0%} of the large matmul, {loop_rate / small_rate:.0%} of the model's own rate")
    print("\n| study | runs | floor at the large-matmul rate | at the model's own rate |")
    print("|---|---|---|---|")
    floors = {}
    for study in d.STUDIES.values():
        work = study_estimate(study, flops, study.seeds, cores)  # FLOPs per core
        floors[study.name] = work / big_rate / 60
        print(f"| {study.name} | {len(study.conditions) * study.seeds} | {floors[study.name]:.0f} min | "
              f"{work / small_rate / 60:.0f} min |")
    return floors


def study_estimate(study: d.Study, m: dict[str, float], seeds: int, cores: int) -> float:
    """Estimated wall seconds of a full study from per-step / per-eval / start-up seconds (or its
    FLOPs per core, given FLOPs per step / evaluation / generation batch and no start-up)."""
    total = 0.0
    for cond in study.conditions:
        c = load_config(None, condition_overrides(study, cond, scale="testbed", quick=False, seed=0,
                                                  run_dir=Path("unused"), extra=[]))
        evals = 1 + sum(loop.eval_due(c, step) for step in range(1, c.steps + 1))  # and step 0
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
    parser.add_argument("--floor", action="store_true", help="each study's arithmetic floor on these cores instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.floor:
        return {"floor_minutes": floor(args.objectives[-1], args.steps, args.extra)}
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
