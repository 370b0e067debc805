"""Share of a training run spent recording diagnostics (target: under 5%).

    python benchmarks/diagnostics_overhead.py [--steps 6] [--objective mispo]

Profiles a short ``stalerl train`` on the testbed with cProfile and prints the cumulative time of
the per-update diagnostics recording (``_record_diagnostics`` + ``log_diagnostics``) as a share
of ``train()`` (a ratio within one run, so it holds on a busy machine too).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile

import torch

from stalerl.training.config import load_config
from stalerl.training.loop import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--objective", default="mispo", help="an objective that reports trajectory acceptance")
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, [
            f"steps={args.steps}", f"objective.name={args.objective}", f"model.testbed_size={args.size}",
            "data.eval_size=0", "progress=false", "tensorboard=false", "plots=false", "checkpoint_every=0",
            f"run_dir={tmp}/run",
        ])
        profile = cProfile.Profile()
        profile.enable()
        train(config)
        profile.disable()
    stats = pstats.Stats(profile).stats
    cumulative = lambda name: sum(v[3] for k, v in stats.items() if k[2] == name)  # noqa: E731
    total = cumulative("train")
    recording = cumulative("_record_diagnostics") + cumulative("log_diagnostics")
    print(f"train(): {total:.2f} s; diagnostics recording: {recording * 1000:.1f} ms")
    print(f"ratio diagnostics / run: {recording / total:.4%}  (target < 5%)")


if __name__ == "__main__":
    main()
