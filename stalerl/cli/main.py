"""The ``stalerl`` command line.

    stalerl objectives                     list every objective, its summary and defaults
    stalerl train [--config F] [k=v ...]   the off-policy RL loop (default: the embedded testbed)
    stalerl train --help-config [KEY]      every config key with its type, default and meaning
    stalerl train --resume RUN_DIR         continue a run exactly from its last checkpoint
    stalerl eval CHECKPOINT [...]          avg@n, maj@n, pass@k on benchmarks
    stalerl report RUN_DIR [RUN_DIR ...]   Markdown report with figures
    stalerl reproduce STUDY                rerun a seed paper's study
    stalerl data prepare SOURCE --out F    verl-format Parquet with the M2PO prompt template
    stalerl export RUN_DIR [--step N] OUT  a checkpoint as a plain save_pretrained directory

Errors in what the user gave (a config key, a file, a dataset row, a run directory in use; every
:class:`stalerl.errors.UserError`) are printed as one line and exit with status 2; a fault during
the work (a dying rollout worker, an unanticipated I/O error) is one line and status 1; a training
run that crashed on non-finite updates exits with status 3. ``docs/REFUSALS.md`` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stalerl.run_files import RunFiles


def _cmd_objectives(args) -> int:
    from stalerl import objectives

    rows = objectives.describe()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['summary']}")
        shown = {k: v for k, v in row["defaults"].items() if k not in ("loss_scale_factor",)}
        print(f"{'':<{width}}  defaults: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _cmd_train(args) -> int:
    if args.help_config is not None:
        from stalerl.training.config_help import config_help

        print(config_help(args.help_config or None))
        return 0
    from stalerl.training.config import load_config
    from stalerl.training.loop import train

    if args.resume and args.config is None:
        from stalerl.training.rundir import load_run_config

        config = load_run_config(Path(args.resume), args.overrides)  # refuses a damaged config.yaml
    else:
        config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    _print_summary(result)
    if result.crashed_at is not None:
        print(f"stalerl: run crashed at step {result.crashed_at}: {result.crash_reason}. "
              f"Recorded in {RunFiles(result.run_dir).events}; the last good checkpoint is intact.", file=sys.stderr)
        return 3
    return 0


def _print_summary(result) -> None:
    summary = json.loads(RunFiles(result.run_dir).summary.read_text())
    last = result.final_metrics
    rows = [
        ("run directory", str(result.run_dir)),
        ("objective", f"{summary['objective']} {summary['hparams'] or ''}".strip()),
        ("staleness s", summary["staleness"]),
        ("steps done", summary["steps_done"]),
        ("held-out accuracy start", summary["eval_accuracy_start"]),
        ("held-out accuracy final", summary["eval_accuracy_final"]),
        ("held-out accuracy best (step)", f"{_num(summary['eval_accuracy_best'])} ({summary['best_step']})"),
        ("last rollout reward", last.get("rollout/reward_mean")),
        ("last grad norm", last.get("train/grad_norm")),
        ("staleness of last updates", f"{_num(last.get('train/staleness_min'))}..{_num(last.get('train/staleness_max'))}"),
        ("skipped (non-finite) updates", summary["skipped_updates"]),
        ("crashed at step", summary["crashed_at"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "=" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {_num(value)}")
    print("=" * (width + 30))


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cmd_eval(args) -> int:
    from stalerl.evaluation.evaluate import main as eval_main

    return eval_main(args)


def _cmd_report(args) -> int:
    from stalerl.evaluation.report import main as report_main

    return report_main(args)


def _cmd_reproduce(args) -> int:
    from stalerl.studies.reproduce import main as reproduce_main

    return reproduce_main(args)


def _cmd_data(args) -> int:
    from stalerl.data.prepare import main as prepare_main

    return prepare_main(args)


def _cmd_export(args) -> int:
    from stalerl.training.export import export_checkpoint

    out = export_checkpoint(args.run_dir, args.out_dir, step=args.step)
    print(f"wrote {out} (model, tokenizer, README.md)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stalerl", description="Off-policy RL of language models on stale rollouts.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("objectives", help="list the objectives with their defaults")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_objectives)

    p = sub.add_parser("train", help="run the off-policy RL loop (default: the embedded CPU testbed)")
    p.add_argument("--config", help="YAML config file (sections: model, data, rollout, reward, objective, optim, stale, eval) "
                                    "or the name of a shipped config: testbed, prosperity, mispo-mechanism, ac-mispo, minpro")
    p.add_argument("--help-config", nargs="?", const="", metavar="KEY",
                   help="print every config key (or those of section/key KEY) with its type, default and meaning; run nothing")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides in verl's syntax, e.g. objective.name=grpo "
                                                "stale.staleness=0 +objective.hparams.tau=0.05 (docs/OPTIONS.md, Overrides)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: avg@n, maj@n, pass@k")
    _add_eval_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="Markdown report with figures from run directories")
    p.add_argument("run_dirs", nargs="+", help="run directories written by stalerl train")
    p.add_argument("--out", help="output directory (default: <first run>/report)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("reproduce", help="rerun a seed paper's study on the testbed")
    p.add_argument("study", help="prosperity | mispo-mechanism | ac-mispo | minpro | staleness-sweep")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke version (used by the tests)")
    p.add_argument("--scale", default="testbed", choices=["testbed", "paper"], help="testbed (CPU) or the paper's own scale")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per condition")
    p.add_argument("--out", default=None, help="output directory (default: studies/<study>)")
    p.add_argument("--dry-run", action="store_true", help="print the stalerl train command of every run, run nothing")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, in parallel processes sharing the cores (each gets cores // jobs)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every condition")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("data", help="prepare data sets for other trainers")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="verl-format Parquet from a JSONL/Parquet file or a datasets name")
    from stalerl.data.prepare import add_arguments as _add_prepare_args

    _add_prepare_args(p)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("export", help="write a checkpoint as a save_pretrained directory with a model card")
    p.add_argument("run_dir", help="run directory written by stalerl train")
    p.add_argument("out_dir", help="output directory (new or empty)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.set_defaults(func=_cmd_export)
    return parser


def _add_eval_args(p) -> None:
    from stalerl.evaluation.evaluate import add_arguments

    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (argparse alone stops collecting a
    # trailing positional list at the first option)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all(("=" in item or item.startswith("~")) and not item.startswith("-")
                                              for item in extra):  # key=value, +key=value, ~key
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from stalerl.errors import UserError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stalerl: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError) as err:  # what the user gave; any other ValueError is a bug: traceback
        print(f"stalerl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # an I/O failure no check anticipated: still one line, naming the file
        print(f"stalerl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        from stalerl.staleness.async_rollout import AsyncWorkerError

        if not isinstance(err, AsyncWorkerError):
            raise
        print(f"stalerl {args.command}: error: {_one_line(err)}; checkpoints written so far are intact",
              file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
