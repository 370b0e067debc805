"""Benchmark: the stalerl loop against TRL's GRPOTrainer on the same tiny offline model.

Same model (the embedded testbed, ``small`` by default, and its character tokenizer), same
prompts (testbed training problems), same generation batch of P prompts x G completions, same
number of optimizer updates per generation batch (m), same completion length, same reward
function (a cheap Python function, so that the reward costs the same in both), no KL term,
no evaluation, no checkpoints in the timed part, CPU, on-policy (stalerl ``stale.staleness=0``,
``stale.mode=sync``: the batch generated with the policy of update j*m feeds updates j*m ...
j*m+m-1, which is TRL's ``steps_per_generation=m``). The two map as

=============================  ==========================  ======================================
                               stalerl                     TRL 1.16 ``GRPOConfig``
=============================  ==========================  ======================================
prompts x group                rollout.prompts_per_step P  ``per_device_train_batch_size * m / G``
                               rollout.group_size G        ``num_generations=G``
updates per generation batch   optim.mini_batches m        ``steps_per_generation=m``
sequences per fwd/bwd pass     optim.micro_batch_size      ``per_device_train_batch_size`` (no
                               = P*G/m                     gradient accumulation)
completion length              rollout.max_new_tokens L    ``max_completion_length=L``
=============================  ==========================  ======================================

Equal lengths: every completion is exactly L tokens in both, through ``min_new_tokens=L``
(stalerl: in the ``generation_config.json`` of a copy of the model directory, which its
``generate`` picks up; TRL: ``generation_kwargs``), so both do the same work.

Each framework runs in a fresh subprocess with the same number of torch threads
(``--threads``, default 1: on 2 shared cores, 2 threads make both of them several times slower).
Throughput = completions of the generation batches after the first ``--warmup`` ones, divided by
the wall time they took (stalerl: the steps' ``time/step``; TRL: a callback's timestamps at the
optimizer steps that close those generation batches). It prints completions/s of each, their
ratio (issue 7 target: stalerl >= 1.5x TRL) and per-phase stalerl times. ``--repeats`` pairs
run interleaved; figures are medians.

Usage::

    python benchmarks/vs_trl.py                      # testbed small, P=16 G=4 L=32 m=2, ~3 min
    python benchmarks/vs_trl.py --size tiny --steps 4 --repeats 1
    python benchmarks/vs_trl.py --profile stalerl    # cProfile of the stalerl child (top 25)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def digit_reward(completions, answers=None):
    """The shared reward: share of digits in the completion (variance in every group)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def trl_digit_reward(prompts, completions, **kwargs):
    return digit_reward(completions)


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--model", default=None, help="a saved testbed model directory instead of --size")
    p.add_argument("--prompts", "-P", type=int, default=16)
    p.add_argument("--group", "-G", type=int, default=4)
    p.add_argument("--length", "-L", type=int, default=32, help="completion length (forced)")
    p.add_argument("--mini-batches", "-m", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="generation batches per run")
    p.add_argument("--warmup", type=int, default=1, help="generation batches not timed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--profile", choices=["stalerl", "trl"], default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--_child", nargs=2, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- children

def _stalerl_child(args, model_dir: str, out: Path) -> dict:
    from stalerl.training.config import load_config
    from stalerl.training.loop import train

    P, G, m = args.prompts, args.group, args.mini_batches
    overrides = [
        f"model.path={model_dir}", "model.device=cpu", f"rollout.prompts_per_step={P}", f"rollout.group_size={G}",
        f"rollout.max_new_tokens={args.length}", f"rollout.batch_size={P * G}", f"optim.mini_batches={m}",
        f"optim.micro_batch_size={P * G // m}", f"optim.lr={args.lr}", "stale.staleness=0", "stale.mode=sync",
        "objective.name=grpo", "data.eval_size=0", "data.testbed_train_size=2000", f"steps={args.steps}",
        "checkpoint_every=0", "keep_checkpoints=1", "tensorboard=false", "plots=false", "progress=false",
        f"reward.function={Path(__file__).resolve()}:digit_reward", f"run_dir={out / 'run'}",
    ]
    train(load_config(overrides=overrides))
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r and r["step"] >= 1][args.warmup:]
    return {
        "seconds": sum(r["time/step"] for r in steps),
        "completions": len(steps) * P * G,
        "length_mean": statistics.mean(r["rollout/response_length_mean"] for r in steps),
        "phase_s": {k: statistics.median(r.get(k, 0.0) for r in steps)
                    for k in ("time/generate", "time/score", "time/behaviour_logprob", "time/train", "time/step")},
    }


def _trl_child(args, model_dir: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from stalerl.testbed.task import generate_problems

    hf_logging.set_verbosity_error()
    P, G, m = args.prompts, args.group, args.mini_batches
    problems = generate_problems(2000, split="train", seed=0, levels=(1, 2, 3))
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    config = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=P * G // m, gradient_accumulation_steps=1, steps_per_generation=m,
        num_generations=G, max_completion_length=args.length, generation_kwargs={"min_new_tokens": args.length},
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
        max_steps=args.steps * m, logging_steps=10_000, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, log_completions=False,
    )
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    lengths: list[float] = []
    trainer = GRPOTrainer(model=model_dir, reward_funcs=trl_digit_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Stamp()])
    original = trainer._generate_single_turn

    def recording(*a, **k):  # record the completion lengths TRL generated
        result = original(*a, **k)
        completion_ids = result[0] if isinstance(result, tuple) else None  # (completion_ids, logprobs)
        if completion_ids is not None:
            lengths.extend(len(c) for c in completion_ids)
        return result

    trainer._generate_single_turn = recording
    torch.manual_seed(0)
    trainer.train()
    # generation batch j (0-based) is closed by optimizer step (j+1)*m; time batches warmup..steps-1
    start = stamps[args.warmup * m - 1] if args.warmup else None
    if start is None:
        raise SystemExit("--warmup must be >= 1 for TRL timing")
    seconds = stamps[args.steps * m - 1] - start
    return {
        "seconds": seconds,
        "completions": (args.steps - args.warmup) * P * G,
        "length_mean": statistics.mean(lengths) if lengths else float("nan"),
    }


def _child(args) -> None:
    which, model_dir = args._child
    out = Path(tempfile.mkdtemp(prefix=f"stalerl-vs-trl-{which}-"))
    try:
        fn = _stalerl_child if which == "stalerl" else _trl_child
        if args.profile == which:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            result = prof.runcall(fn, args, model_dir, out)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        else:
            result = fn(args, model_dir, out)
        print("RESULT " + json.dumps(result))
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------- driver

def _run(which: str, model_dir: Path, argv: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, *argv, "--_child", which, str(model_dir)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{which} run failed (exit {proc.returncode})")
    if proc.stderr.strip() and "tottime" in proc.stderr or "function calls" in proc.stderr:
        sys.stderr.write(proc.stderr)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args._child:
        import torch

        torch.set_num_threads(max(1, args.threads))
        _child(args)
        return
    if (args.prompts * args.group) % args.mini_batches:
        raise SystemExit("P*G must be divisible by m")
    from stalerl.testbed.warmstart import warm_start

    src = Path(args.model) if args.model else warm_start(size=args.size, progress=False)
    with tempfile.TemporaryDirectory(prefix="stalerl-vs-trl-") as tmp:
        model_dir = Path(tmp) / "model"
        shutil.copytree(src, model_dir)
        gen_cfg = model_dir / "generation_config.json"
        cfg = json.loads(gen_cfg.read_text()) if gen_cfg.exists() else {}
        cfg["min_new_tokens"] = args.length  # equal completion lengths (EOS suppressed until L)
        gen_cfg.write_text(json.dumps(cfg, indent=2))
        results: dict[str, list[dict]] = {"stalerl": [], "trl": []}
        for i in range(args.repeats):
            for which in ("stalerl", "trl"):
                t0 = time.perf_counter()
                results[which].append(_run(which, model_dir, argv, args.threads))
                print(f"  {which} run {i + 1}/{args.repeats}: {time.perf_counter() - t0:.1f} s total", file=sys.stderr)

    cps = {k: [r["completions"] / r["seconds"] for r in v] for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in cps.items()}
    ratio = med["stalerl"] / med["trl"]
    out = {
        "setting": {"model": f"testbed-{args.size}", "P": args.prompts, "G": args.group, "L": args.length,
                    "m": args.mini_batches, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                    "repeats": args.repeats},
        "completions_per_s": cps,
        "median_completions_per_s": med,
        "length_mean": {k: [r["length_mean"] for r in v] for k, v in results.items()},
        "stalerl_phase_s_median": results["stalerl"][0]["phase_s"],
        "ratio_stalerl_over_trl": ratio,
    }
    s = out["setting"]
    print(f"setting: testbed-{args.size}, P={s['P']} G={s['G']} L={s['L']} (forced) m={s['m']}, "
          f"{args.steps - args.warmup} timed generation batches after {args.warmup}, {args.threads} thread(s)")
    print(f"  completion length mean: stalerl {out['length_mean']['stalerl']}, trl {out['length_mean']['trl']}")
    print(f"  stalerl: {med['stalerl']:.1f} completions/s   (runs: {[round(x, 1) for x in cps['stalerl']]})")
    print(f"  trl    : {med['trl']:.1f} completions/s   (runs: {[round(x, 1) for x in cps['trl']]})")
    print("  stalerl step phases (median s): " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in out["stalerl_phase_s_median"].items()))
    print(f"ratio stalerl / TRL completions per second: {ratio:.2f}  (target >= 1.5)")
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
