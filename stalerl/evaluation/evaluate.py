"""``stalerl eval CHECKPOINT``: avg@n, maj@n and unbiased pass@k of a checkpoint on benchmarks.

CHECKPOINT is a run's ``checkpoints/step_*`` directory, a run directory (its latest checkpoint),
any Hugging Face causal LM directory, ``testbed`` / ``testbed:tiny`` (the warm-started testbed
model) or, when online, a Hub model name.

Each benchmark is ``testbed`` (the testbed's held-out split: by default the same problems a
run's periodic evaluation uses), a local ``.jsonl``/``.json``/``.parquet`` file, or a
``datasets`` name (``HuggingFaceH4/MATH-500``, ``HuggingFaceH4/aime_2024``...). Every problem
gets ``n`` samples at ``--temperature`` (1.0); the table and ``--out`` JSON report, per benchmark
and averaged over benchmarks: avg@n, maj@n and pass@k for k = 1, 2, 4, ... <= n (or ``--k``).

Protocol presets of the seed papers:

* ``--protocol m2po`` -- avg@16 on AIME benchmarks (a name or path containing ``aime``), avg@4
  on the others;
* ``--protocol minpro`` -- n = 128 samples, pass@k for k = 1, 2, ..., 128.

An explicit ``--n`` overrides the preset's n. Settings a run stored in ``config.yaml`` (prompt
template, max new tokens, testbed levels and held-out size, seed) are the defaults when
CHECKPOINT belongs to a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from stalerl.errors import UserError
from stalerl.run_files import RunFiles

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "ResolvedCheckpoint",
    "resolve_checkpoint",
    "benchmark_n",
    "evaluate_checkpoint",
    "format_table",
    "add_arguments",
    "main",
]

#: Protocol presets: default n, n for AIME benchmarks, default ks (None: 1, 2, 4, ... <= n).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "m2po": {"n": 4, "aime_n": 16, "description": "AIME avg@16, others avg@4 (M2PO paper)"},
    "minpro": {"n": 128, "aime_n": 128, "description": "pass@k for k = 1, 2, 4, ..., 128 (MinPRO paper)"},
}
DEFAULT_N = 4
TESTBED_DEFAULT_SIZE = 128


@dataclass
class ResolvedCheckpoint:
    """Where the model weights are and what the run (if any) said about them."""

    model_path: str
    """A directory (or Hub name) for ``from_pretrained``."""
    run_dir: Path | None = None
    run_config: dict[str, Any] = field(default_factory=dict)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path} (the run's settings, used as eval defaults) cannot be read: "
                        f"{' '.join(str(err).split())[:200]}; repair it or pass a checkpoints/step_* directory "
                        "and the options explicitly") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} (the run's settings, used as eval defaults) is empty or not a mapping")
    return data


def resolve_checkpoint(checkpoint: str | Path) -> ResolvedCheckpoint:
    """Resolve CHECKPOINT (see the module docstring) to a loadable model.

    Raises:
        FileNotFoundError: a path that does not exist, or a directory that is neither a model
            (no ``config.json``) nor a run directory with a complete checkpoint.
    """
    text = str(checkpoint)
    if text == "testbed" or text.startswith("testbed:"):
        from stalerl.testbed.warmstart import WARMSTART_RECIPES, warm_start

        size = text.split(":", 1)[1] if ":" in text else "small"
        if size not in WARMSTART_RECIPES:
            raise UserError(f"checkpoint {text!r}: the testbed comes in sizes {', '.join(WARMSTART_RECIPES)}; "
                            f"give testbed:{next(iter(WARMSTART_RECIPES))} or a model directory")
        return ResolvedCheckpoint(str(warm_start(size=size, progress=False)))
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            run_dir = None
            parent = RunFiles(path.parent.parent)
            if path.parent == parent.checkpoints and parent.config.is_file():
                run_dir = parent.root
            cfg = _read_yaml(RunFiles(run_dir).config) if run_dir else {}
            return ResolvedCheckpoint(str(path), run_dir, cfg)
        files = RunFiles(path)
        if files.checkpoints.is_dir() or files.config.is_file():
            from stalerl.training.checkpoint import latest_checkpoint

            latest = latest_checkpoint(files.checkpoints)
            if latest is None:
                raise FileNotFoundError(
                    f"checkpoint {text!r}: the run directory has no complete checkpoint under "
                    f"{files.checkpoints} (the run may not have reached its first checkpoint)"
                )
            return ResolvedCheckpoint(str(latest), path, _read_yaml(files.config))
        raise FileNotFoundError(
            f"checkpoint {text!r} is a directory but neither a model (no config.json) nor a run "
            "directory (no checkpoints/); pass a run directory, a checkpoints/step_* directory or "
            "a Hugging Face model directory"
        )
    if path.exists():
        raise FileNotFoundError(f"checkpoint {text!r} is a file; pass a directory")
    looks_like_hub = (text.count("/") == 1 and not text.startswith((".", "/", "~"))
                      and not text.endswith(("/",)) and " " not in text)
    if looks_like_hub:
        return ResolvedCheckpoint(text)
    raise FileNotFoundError(f"checkpoint directory {text!r} does not exist")


def _is_aime(benchmark: str) -> bool:
    return "aime" in os.path.basename(str(benchmark)).lower() or "aime" in str(benchmark).lower()


def benchmark_n(benchmark: str, n: int | None, protocol: str | None) -> int:
    """Samples per problem for a benchmark under the protocol (an explicit ``n`` wins)."""
    if n is not None:
        return n
    if protocol is None:
        return DEFAULT_N
    preset = PROTOCOLS[protocol]
    return preset["aime_n"] if _is_aime(benchmark) else preset["n"]


def _check_ks(ks: Sequence[int] | None, ns: Sequence[int]) -> None:
    if ks is None:
        return
    for k in ks:
        if k < 1:
            raise UserError(f"pass@k needs k >= 1, got --k {k}")
        if k > min(ns):
            raise UserError(
                f"pass@{k} needs k <= n, but n={min(ns)} samples per problem; raise --n or drop k={k}"
            )


def _data_config(run_config: dict[str, Any], template: str | None, chat: bool | None,
                 question_field: str | None, answer_field: str | None, max_prompt_length: int | None):
    from stalerl.training.config import DataConfig, from_dict

    data = dict(run_config.get("data") or {})
    known = {f for f in DataConfig.__dataclass_fields__}
    data = {k: v for k, v in data.items() if k in known}
    try:
        dc = from_dict(DataConfig, data)
    except Exception:
        dc = DataConfig()
    if template is not None:
        dc.template = template
    if chat is not None:
        dc.chat_template = chat
    if question_field is not None:
        dc.question_field = question_field
    if answer_field is not None:
        dc.answer_field = answer_field
    if max_prompt_length is not None:
        dc.max_prompt_length = max_prompt_length
    return dc


def _benchmark_name(benchmark: str, taken: set[str]) -> str:
    name = benchmark
    if os.path.isfile(os.path.expanduser(benchmark)):
        name = Path(benchmark).stem
    base, i = name, 2
    while name in taken:
        name = f"{base}#{i}"
        i += 1
    taken.add(name)
    return name


def _load_model(model_path: str, device: str, dtype: str):
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from stalerl.training.checkpoint import load_model

    hf_logging.disable_progress_bar()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as err:
        raise FileNotFoundError(
            f"checkpoint {model_path!r} could not be loaded as a causal LM "
            f"(not a model directory here, and not loadable as a Hub name): {str(err)[:300]}"
        ) from None
    model = load_model(model_path, f"checkpoint {model_path!r}", dtype=torch_dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model, tokenizer


def evaluate_checkpoint(
    checkpoint: str | Path,
    benchmarks: Sequence[str] = ("testbed",),
    *,
    n: int | None = None,
    ks: Sequence[int] | None = None,
    protocol: str | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    template: str | None = None,
    chat_template: bool | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    split: str | None = None,
    max_prompt_length: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    progress: Callable[[str], None] | bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on benchmarks; returns the JSON-able result.

    Args: as the command-line options (``stalerl eval --help``). ``ks`` defaults to
    1, 2, 4, ... <= n per benchmark. ``progress`` is called with one line per finished
    benchmark (``True``: the line goes to this module's logger at INFO level).

    Returns:
        ``{"checkpoint", "model_path", "protocol", "settings": {...}, "benchmarks": {name:
        {"source", "num_problems", "n", "avg@n"-style keys "avg@{n}", "maj@{n}", "pass@{k}"...,
        "skipped_prompts", "response_length_mean", "truncated_frac", "seconds"}}, "average":
        {"avg@n", "maj@n", "pass@{k}" (k common to all benchmarks)}}``.

    Raises:
        ValueError: a bad option (k > n, unknown protocol, n < 1, a temperature <= 0), a
            benchmark that cannot be loaded (a file without the answer field, ...).
        FileNotFoundError: a missing checkpoint.
    """
    import torch

    from stalerl.data.prompts import build_prompts, prompt_limits
    from stalerl.evaluation.metrics import default_ks, summarize
    from stalerl.rewards.reward import MathReward
    from stalerl.rollout.generation import generate

    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if n is not None and n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if not temperature > 0:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size),
                        ("--max-prompt-length", max_prompt_length)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must lie in (0, 1], got {top_p}")
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must lie in [0, 2**32 - 1], got {seed}")
    benchmarks = list(benchmarks) or ["testbed"]
    ns = {b: benchmark_n(b, n, protocol) for b in benchmarks}
    _check_ks(ks, list(ns.values()))
    for b in benchmarks:  # a missing local file is an error before the model is loaded
        src = os.path.expanduser(b)
        if b != "testbed" and (src.lower().endswith((".jsonl", ".json", ".parquet")) or src.startswith((".", "/", "~"))) \
                and not os.path.isfile(src):
            raise FileNotFoundError(f"benchmark file {b!r} does not exist")

    resolved = resolve_checkpoint(checkpoint)
    run_cfg = resolved.run_config
    data_config = _data_config(run_cfg, template, chat_template, question_field, answer_field, max_prompt_length)
    if max_new_tokens is None:
        max_new_tokens = int((run_cfg.get("rollout") or {}).get("max_new_tokens") or 0) or None
    if device != "auto":
        from stalerl.models.device import resolve_device

        device = str(resolve_device(device))
    model, tokenizer = _load_model(resolved.model_path, device, dtype)
    run_seed = int(run_cfg.get("seed", 0) or 0)
    testbed_size = limit or int((run_cfg.get("data") or {}).get("eval_size") or 0) or TESTBED_DEFAULT_SIZE

    results: dict[str, Any] = {}
    taken: set[str] = set()
    with MathReward(format_score=0.0, num_workers=1) as reward:
        for b in benchmarks:
            t0 = time.perf_counter()
            if b == "testbed":
                mnt = max_new_tokens or 64
                prompts, skipped = build_prompts("testbed", split="test", size=testbed_size, tokenizer=tokenizer,
                                                 data_config=data_config, seed=run_seed + 1, **prompt_limits(model, mnt))
            else:
                positions = getattr(model.config, "max_position_embeddings", None) or 2048
                mnt = max_new_tokens or min(1024, positions // 2)  # a default that leaves room for the prompt
                prompts, skipped = build_prompts(b, split=split, size=limit, tokenizer=tokenizer,
                                                 data_config=data_config, seed=seed, **prompt_limits(model, mnt))
            if not prompts:
                raise UserError(f"benchmark {b!r} has no problems")
            nb = ns[b]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
                gen = generate(model, tokenizer, [p.text for p in prompts], group_size=nb, temperature=temperature,
                               top_p=top_p, max_new_tokens=mnt, batch_size=batch_size)
            scored = reward(gen.texts, [p.answer for p in prompts for _ in range(nb)])
            correct = np.asarray(scored.correct, dtype=bool).reshape(len(prompts), nb)
            answers = [scored.answers[i * nb:(i + 1) * nb] for i in range(len(prompts))] if scored.answers else None
            bks = list(ks) if ks is not None else default_ks(nb)
            summary = summarize(correct, answers, bks)
            name = _benchmark_name(b, taken)
            results[name] = {
                "source": b,
                **summary,
                "skipped_prompts": int(skipped),
                "max_new_tokens": mnt,
                "response_length_mean": float(gen.response_mask.sum(-1).float().mean()),
                "truncated_frac": float(gen.truncated.float().mean()),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if progress:
                (progress if callable(progress) else log.info)(
                    f"stalerl eval: {name}: avg@{nb}={summary[f'avg@{nb}']:.4f} ({len(prompts)} problems x {nb} samples)")
    return {
        "checkpoint": str(checkpoint),
        "model_path": resolved.model_path,
        "run_dir": str(resolved.run_dir) if resolved.run_dir else None,
        "protocol": protocol,
        "settings": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                     "seed": seed, "limit": limit, "template": data_config.template,
                     "chat_template": data_config.chat_template, "ks": list(ks) if ks else None},
        "benchmarks": results,
        "average": _average(results),
    }


def _average(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Unweighted mean over benchmarks of avg@n, maj@n (each at its own n) and of the pass@k
    whose k every benchmark has."""
    if not results:
        return {}
    rows = list(results.values())
    out: dict[str, float] = {"num_benchmarks": len(rows)}
    out["avg@n"] = float(np.mean([r[f"avg@{r['n']}"] for r in rows]))
    if all(f"maj@{r['n']}" in r for r in rows):
        out["maj@n"] = float(np.mean([r[f"maj@{r['n']}"] for r in rows]))
    common = set.intersection(*[{k for k in r if k.startswith("pass@")} for r in rows])
    for key in sorted(common, key=lambda k: int(k.split("@")[1])):
        out[key] = float(np.mean([r[key] for r in rows]))
    return out


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table: one row per benchmark and an average row."""
    benches = result["benchmarks"]
    pass_keys = sorted({k for r in benches.values() for k in r if k.startswith("pass@")},
                       key=lambda k: int(k.split("@")[1]))
    header = ["benchmark", "problems", "n", "avg@n", "maj@n"] + pass_keys
    rows = []
    for name, r in benches.items():
        avg_key, maj_key = f"avg@{r['n']}", f"maj@{r['n']}"
        rows.append([name, str(r["num_problems"]), str(r["n"]), f"{r[avg_key]:.4f}",
                     f"{r[maj_key]:.4f}" if maj_key in r else "-"]
                    + [f"{r[k]:.4f}" if k in r else "-" for k in pass_keys])
    if len(benches) > 1:
        avg = result["average"]
        rows.append(["average", str(sum(r["num_problems"] for r in benches.values())), "-",
                     f"{avg['avg@n']:.4f}", f"{avg['maj@n']:.4f}" if "maj@n" in avg else "-"]
                    + [f"{avg[k]:.4f}" if k in avg else "-" for k in pass_keys])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))))
    return "\n".join(lines)


# ============================================================================ command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``stalerl eval``."""
    p.add_argument("checkpoint", help="a run directory (latest checkpoint), a checkpoints/step_* directory, a Hugging "
                                      "Face causal LM directory, 'testbed[:tiny]', or a Hub model name")
    p.add_argument("--benchmarks", nargs="+", default=["testbed"], metavar="B",
                   help="each 'testbed' (held-out split), a .jsonl/.json/.parquet file or a datasets name "
                        "(default: testbed)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS),
                   help="m2po: AIME avg@16, others avg@4; minpro: n=128, pass@k up to 128")
    p.add_argument("--n", type=int, default=None, help=f"samples per problem (default {DEFAULT_N} or the protocol's)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="the k of pass@k (default 1, 2, 4, ... <= n)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="response length limit (default: the run's rollout.max_new_tokens, else 64 on the "
                        "testbed and 1024 on other benchmarks)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences generated at once (default 64)")
    p.add_argument("--template", default=None, help="prompt template: auto, m2po, plain or a string with {question} "
                                                    "(default: the run's, else auto)")
    p.add_argument("--chat-template", action="store_true", default=None, help="wrap prompts in the chat template")
    p.add_argument("--question-field", default=None, help="field of the question in file/Hub rows (default problem)")
    p.add_argument("--answer-field", default=None, help="field of the reference answer (default answer)")
    p.add_argument("--split", default=None, help="split of a datasets name (default: its usual split)")
    p.add_argument("--max-prompt-length", type=int, default=None,
                   help="skip (and count) prompts longer than this many tokens (default: the run's, else 512)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--limit", type=int, default=None,
                   help="first N problems of each benchmark (testbed default: the run's eval size, else 128)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")


def main(args: argparse.Namespace) -> int:
    """``stalerl eval`` entry point: print the table, write ``--out`` (checked writable before any
    sample is computed, and written atomically)."""
    from stalerl.training.rundir import atomic_write_text, check_writable

    if args.out:
        if Path(args.out).is_dir():
            raise UserError(f"--out {args.out} is a directory; pass a file name such as {Path(args.out) / 'eval.json'}")
        check_writable(Path(args.out).parent, "--out directory")
    result = evaluate_checkpoint(
        args.checkpoint, args.benchmarks, n=args.n, ks=args.k, protocol=args.protocol, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, template=args.template,
        chat_template=args.chat_template, question_field=args.question_field, answer_field=args.answer_field,
        split=args.split, max_prompt_length=args.max_prompt_length, seed=args.seed, limit=args.limit,
        device=args.device, dtype=args.dtype, progress=lambda line: print(line, file=sys.stderr),
    )
    print(f"checkpoint: {result['model_path']}   temperature {args.temperature}"
          + (f"   protocol {args.protocol}" if args.protocol else ""))
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)),
                          "the evaluation results")
        print(f"wrote {out}")
    return 0
