"""Benchmark: a short training run alone and beside CPU-bound processes.

The same short run, ``stalerl train steps=6 data.eval_size=0`` (the testbed ``small`` model,
every other setting at its default), each time in a fresh ``python -m stalerl`` subprocess:

* ``stalerl``: as a user gets it (threads chosen by :mod:`stalerl.runtime`, passive OpenMP
  waits), with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` removed from its environment;
* ``old default``: torch's own default, what stalerl did before it chose threads: one intra-op
  thread per core (``runtime.threads=<os.cpu_count()>``) and libgomp's default wait (spin for
  about 3 ms, ``GOMP_SPINCOUNT=300000``, before sleeping);

each idle and beside ``k`` CPU-bound processes (``python -c 'while True: pass'``, started before
the run and killed after it) for ``k`` in ``--busy`` (default 1, and ``cores - 1`` on machines
with more than 2 cores). Rounds are interleaved (every variant once per round, ``--repeats``
rounds). It prints the median wall time of each (the whole command, as a user times it, and
the loop alone: the sum of the steps' ``timing_s/step``), the ratios ``contended / idle`` (target
on 2 cores with one busy process: <= 1.5) and ``stalerl idle / old default idle`` (target:
<= 1.05), the load average (``os.getloadavg()``) before each run and the cores.

The old default beside busy processes is slow (6x its idle time was measured on 2 cores); it
runs only with ``--old-contended``.

Usage::

    python benchmarks/contention.py                        # ~3-4 min on 2 free cores
    python benchmarks/contention.py --repeats 3 --old-contended
    python benchmarks/contention.py --size tiny --steps 3 --repeats 1    # quick check
    python benchmarks/contention.py --set rollout.max_new_tokens=32     # any train override
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

#: Removed from the environment of every run: each variant states its own threads.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small"], help="testbed model size")
    p.add_argument("--steps", type=int, default=6, help="training steps per run")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    p.add_argument("--busy", type=int, nargs="+", default=None,
                   help="numbers of CPU-bound processes beside the run (default: 1, and cores-1 if > 1)")
    p.add_argument("--old-contended", action="store_true", help="also run the old default beside busy processes")
    p.add_argument("--set", nargs="*", default=[], help="extra section.key=value train overrides")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    return p.parse_args(argv)


def _variants(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """label -> (train overrides, environment additions)."""
    return {
        "stalerl": ([], {}),
        "old default": ([f"runtime.threads={cores}"], {"GOMP_SPINCOUNT": "300000"}),
    }


def _run(args, overrides: list[str], env_add: dict[str, str], busy: int, run_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env.update(env_add)
    cmd = [sys.executable, "-m", "stalerl", "train", f"steps={args.steps}", "data.eval_size=0",
           f"model.testbed_size={args.size}", f"run_dir={run_dir}", "progress=false", *overrides, *args.set]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0.0)  # let them start spinning
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        for b in burners:
            b.kill()
            b.wait()
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"run failed (exit {proc.returncode}): {' '.join(cmd)}")
    from stalerl.run_files import read_steps

    loop = sum(r["timing_s/step"] for r in read_steps(run_dir) if r["step"] >= 1)
    return {"wall_s": wall, "loop_s": loop, "load_1min": load}


def main(argv=None) -> None:
    args = _parse(argv)
    from stalerl.runtime import available_cores
    from stalerl.testbed.warmstart import warm_start

    cores = os.cpu_count() or 1
    busy_counts = args.busy or sorted({1, max(1, available_cores() - 1)})
    warm_start(size=args.size, progress=False)  # cached before timing anything
    variants = _variants(cores)
    plan = [("stalerl", 0), ("old default", 0)] + [("stalerl", k) for k in busy_counts]
    if args.old_contended:
        plan += [("old default", k) for k in busy_counts]
    runs: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="stalerl-contention-") as tmp:
        for i in range(args.repeats):
            for label, busy in plan:
                overrides, env_add = variants[label]
                run_dir = Path(tmp) / f"{label.replace(' ', '-')}-busy{busy}-{i}"
                result = _run(args, overrides, env_add, busy, run_dir)
                runs[(label, busy)].append(result)
                print(f"  round {i + 1}/{args.repeats} {label:<11} beside {busy} busy: wall {result['wall_s']:6.1f} s, "
                      f"loop {result['loop_s']:6.1f} s, load {result['load_1min']:.2f}", file=sys.stderr)
    loads.append(os.getloadavg())

    def med(key, field="wall_s"):
        return statistics.median(r[field] for r in runs[key])

    out = {
        "command": f"stalerl train steps={args.steps} data.eval_size=0 model.testbed_size={args.size} "
                   + " ".join(args.set),
        "cpu_count": cores,
        "affinity_cores": available_cores(),
        "load_average_before_after": [list(x) for x in loads],
        "load_1min_median_during_runs": statistics.median(r["load_1min"] for rs in runs.values() for r in rs),
        "runs": {f"{label} busy={busy}": rs for (label, busy), rs in runs.items()},
        "median_wall_s": {f"{label} busy={busy}": med((label, busy)) for label, busy in plan},
        "median_loop_s": {f"{label} busy={busy}": med((label, busy), "loop_s") for label, busy in plan},
    }
    idle = med(("stalerl", 0))
    old_idle = med(("old default", 0))
    out["ratio_idle_stalerl_over_old_default"] = idle / old_idle
    out["ratio_loop_idle_stalerl_over_old_default"] = med(("stalerl", 0), "loop_s") / med(("old default", 0), "loop_s")
    for k in busy_counts:
        out[f"ratio_contended_over_idle_busy{k}"] = med(("stalerl", k)) / idle
        out[f"ratio_loop_contended_over_idle_busy{k}"] = med(("stalerl", k), "loop_s") / med(("stalerl", 0), "loop_s")
        if args.old_contended:
            out[f"ratio_old_default_contended_over_idle_busy{k}"] = med(("old default", k)) / old_idle
    print(f"command: {out['command']}  ({args.repeats} interleaved rounds, medians)")
    print(f"machine: {cores} CPUs, {out['affinity_cores']} in this process's affinity; 1-min load average "
          f"{loads[0][0]:.2f} before, {loads[1][0]:.2f} after, median {out['load_1min_median_during_runs']:.2f} "
          "at the start of the runs (busy processes of the benchmark included)")
    for label, busy in plan:
        print(f"  {label:<11} beside {busy} busy: wall {med((label, busy)):6.1f} s   loop {med((label, busy), 'loop_s'):6.1f} s")
    for k in busy_counts:
        print(f"ratio contended/idle, stalerl, {k} busy      : {out[f'ratio_contended_over_idle_busy{k}']:.2f}  "
              f"(loop alone {out[f'ratio_loop_contended_over_idle_busy{k}']:.2f}; target on 2 cores, 1 busy: <= 1.5)")
        if args.old_contended:
            print(f"ratio contended/idle, old default, {k} busy  : "
                  f"{out[f'ratio_old_default_contended_over_idle_busy{k}']:.2f}")
    print(f"ratio idle stalerl / idle old default      : {out['ratio_idle_stalerl_over_old_default']:.2f}  "
          f"(loop alone {out['ratio_loop_idle_stalerl_over_old_default']:.2f}; target <= 1.05)")
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
