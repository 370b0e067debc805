"""Benchmark: async against synchronous stalerl at equal staleness (docs/DESIGN.md#async).

Runs ``stalerl train`` twice per repeat on the same config and staleness, ``stale.mode=sync``
then ``stale.mode=async``, each in a fresh subprocess, and reads ``metrics.jsonl``:

* sync: per step, generation = ``timing_s/gen + timing_s/reward + timing_s/old_log_prob`` (the
  batch generated during the step) and training = ``timing_s/update_actor`` (the ``m`` updates);
* both: wall time per step (``timing_s/step``) / ``m`` = wall time per update.

The first ``--warmup`` steps of every run are dropped (buffer fill-up, worker start, allocator
warm-up); figures are medians over the remaining steps of all repeats. It prints

* ``async / sync`` wall time per update (the overlap's speed-up is its inverse);
* ``async / max(gen, train)``: async time per update over the sync run's
  max(generation, training) per update (target: <= 1.15);
* ``gen / train`` of the sync run (the setting is chosen so that they are close to 1).

Both modes run with the same staleness ``s`` (default ``s = m``: batch j+1 is generated while
batch j trains). In async mode the trainer and the rollout worker get half of the cores each
(1 + 1 on 2 cores). Sync runs once per ``--sync-threads`` value (default: 1 thread, and torch's
default = all cores) and the *fastest* sync setting is the reference, so that the comparison
measures the overlap and not a thread-count effect (on small models and shared cores, 2 threads
can be much slower than 1).

Usage::

    python benchmarks/async_vs_sync.py                     # testbed small, ~3-4 min on 2 cores
    python benchmarks/async_vs_sync.py --size tiny --steps 6 --repeats 1      # quick check
    python benchmarks/async_vs_sync.py --set rollout.max_new_tokens=48      # any train override
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS = [
    "rollout.prompts_per_step=16",
    "rollout.group_size=4",
    "rollout.max_new_tokens=32",
    "rollout.batch_size=64",
    "optim.mini_batches=2",
    "optim.micro_batch_size=32",
    "stale.staleness=2",
    "objective.name=m2po",
    "data.eval_size=0",
    "data.testbed_train_size=2000",
    "reward.num_workers=1",
    "checkpoint_every=0",
    "keep_checkpoints=1",
    "tensorboard=false",
    "plots=false",
    "progress=false",
]


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small"], help="testbed model size")
    p.add_argument("--model", default=None, help="model.path instead of the testbed")
    p.add_argument("--steps", type=int, default=10, help="training steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    p.add_argument("--repeats", type=int, default=1, help="sync/async pairs, interleaved")
    p.add_argument("--sync-threads", type=int, nargs="+", default=[1],
                   help="torch threads of the sync runs (0: torch default, all cores); the fastest is "
                        "the reference (default: 1; on 2 shared cores the default threads were ~50x slower)")
    p.add_argument("--set", nargs="*", default=[], help="extra section.key=value train overrides")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _overrides(args, mode: str, run_dir: str) -> list[str]:
    model = [f"model.path={args.model}"] if args.model else [f"model.testbed_size={args.size}"]
    return DEFAULTS + model + [f"steps={args.steps}", f"stale.mode={mode}", f"run_dir={run_dir}"] + list(args.set)


def _child(overrides_json: str) -> None:
    from stalerl.training.config import load_config
    from stalerl.training.loop import train

    train(load_config(overrides=json.loads(overrides_json)))


def _run(args, mode: str, root: Path, index: int, threads: int = 0) -> list[dict]:
    run_dir = root / f"{mode}-t{threads}-{index}"
    overrides = _overrides(args, mode, str(run_dir))
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run([sys.executable, __file__, "--_run", json.dumps(overrides)], check=True, env=env)
    from stalerl.run_files import read_steps

    steps = [r for r in read_steps(run_dir) if r["step"] >= 1]
    return steps[args.warmup:]


_BURN = "import torch,time;torch.set_num_threads(1);a=torch.randn(256,256);t=time.perf_counter()\n" \
        "for _ in range(400): a=torch.tanh(a@a*0.01)\nprint(time.perf_counter()-t)"


def parallel_capacity() -> float:
    """How many cores two 1-thread processes really get: 2 * t(alone) / t(two at once) (2.0 on two
    free cores, 1.0 when the machine has one core's worth of time left for us)."""
    def burn(n):
        procs = [subprocess.Popen([sys.executable, "-c", _BURN], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    alone = statistics.median(burn(1) for _ in range(3))
    both = statistics.median(burn(2) for _ in range(3))
    return 2 * alone / both


def main(argv=None) -> None:
    args = _parse(argv)
    if args._run is not None:
        _child(args._run)
        return
    capacity_before = parallel_capacity()
    from stalerl.testbed.warmstart import warm_start

    if not args.model:
        warm_start(size=args.size, progress=False)  # cached before timing anything
    m = next((int(o.split("=")[1]) for o in reversed(DEFAULTS + args.set) if o.startswith("optim.mini_batches=")))
    variants = [("sync", t) for t in args.sync_threads] + [("async", 0)]
    runs: dict[tuple[str, int], list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="stalerl-bench-") as tmp:
        for i in range(args.repeats):
            for mode, threads in variants:
                t0 = time.perf_counter()
                runs[(mode, threads)] += _run(args, mode, Path(tmp), i, threads)
                print(f"  {mode} (threads {threads or 'default'}) run {i + 1}/{args.repeats}: "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    capacity = (capacity_before + parallel_capacity()) / 2
    sync_wall = {t: statistics.median(r["timing_s/step"] for r in runs[("sync", t)]) for t in args.sync_threads}
    for t, wall in sync_wall.items():
        print(f"  sync with threads={t or 'default'}: wall per update {wall / m:.3f} s", file=sys.stderr)
    best = min(sync_wall, key=sync_wall.get)  # the reference: the fastest sync setting
    res = {"sync": runs[("sync", best)], "async": runs[("async", 0)]}

    def med(mode, fn):
        return statistics.median(fn(r) for r in res[mode])

    gen = med("sync", lambda r: r.get("timing_s/gen", 0) + r.get("timing_s/reward", 0) + r.get("timing_s/old_log_prob", 0)) / m
    trn = med("sync", lambda r: r["timing_s/update_actor"]) / m
    sync_u = med("sync", lambda r: r["timing_s/step"]) / m
    async_u = med("async", lambda r: r["timing_s/step"]) / m
    async_wait = med("async", lambda r: r.get("timing_s/wait_rollout", 0.0)) / m
    async_trn = med("async", lambda r: r["timing_s/update_actor"]) / m
    async_gen = med("async", lambda r: r.get("timing_s/gen", 0) + r.get("timing_s/reward", 0) + r.get("timing_s/old_log_prob", 0)) / m
    stale_sync = sorted({r["train/staleness_max"] for r in res["sync"]})
    stale_async = sorted({r["train/staleness_max"] for r in res["async"]})
    out = {
        "setting": _overrides(args, "<mode>", "<dir>"),
        "cpus": os.cpu_count(),
        "steps_measured": {k: len(v) for k, v in res.items()},
        "sync_threads_reference": best or "default",
        "sync_wall_per_update_by_threads": {str(t or "default"): w / m for t, w in sync_wall.items()},
        "sync_gen_per_update_s": gen,
        "sync_train_per_update_s": trn,
        "sync_wall_per_update_s": sync_u,
        "async_wall_per_update_s": async_u,
        "async_wait_per_update_s": async_wait,
        "async_train_per_update_s": async_trn,
        "async_gen_per_update_s": async_gen,
        "ratio_async_over_sync": async_u / sync_u,
        "ratio_async_over_max_gen_train": async_u / max(gen, trn),
        "ratio_gen_over_train_sync": gen / trn,
        "ratio_async_over_max_gen_train_async": async_u / max(async_gen, async_trn),
        "parallel_capacity_cores": capacity,
        "staleness_max_sync": stale_sync,
        "staleness_max_async": stale_async,
    }
    print(f"setting: {' '.join(out['setting'])}")
    print(f"medians over {out['steps_measured']} steps (after {args.warmup} warm-up steps per run), per update:")
    print(f"  sync (reference: the fastest, threads={best or 'default'}; all: "
          f"{out['sync_wall_per_update_by_threads']})")
    print(f"  sync : generation {gen:.3f} s, training {trn:.3f} s, wall {sync_u:.3f} s   (gen/train = {gen / trn:.2f})")
    print(f"  async: wall {async_u:.3f} s (trainer waited {async_wait:.3f} s; its training {async_trn:.3f} s, "
          f"worker generation {async_gen:.3f} s)")
    print(f"  staleness_max per step: sync {stale_sync}, async {stale_async}")
    print(f"ratio async/sync wall per update        : {out['ratio_async_over_sync']:.2f}  "
          f"(speed-up {1 / out['ratio_async_over_sync']:.2f}x)")
    print(f"ratio async / max(gen, train) of sync   : {out['ratio_async_over_max_gen_train']:.2f}  (target <= 1.15)")
    print(f"overlap inside the async run: wall / max(its gen, its train) = "
          f"{out['ratio_async_over_max_gen_train_async']:.2f}")
    print(f"parallel capacity of the machine during the run: {capacity:.2f} cores for two 1-thread processes "
          f"(2.0 = two free cores; the async gain needs it)")
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
