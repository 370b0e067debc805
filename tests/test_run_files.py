"""The run directory's layout is spelled once (stalerl/run_files.py); old metric names read as new."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from stalerl import run_files
from stalerl.errors import UserError
from stalerl.run_files import (METRIC_ALIASES, CheckpointFiles, ReportFiles, RunFiles, read_events, read_jsonl,
                               read_steps, read_updates, run_summary)

PACKAGE = Path(run_files.__file__).resolve().parent
METRICS_MD = PACKAGE.parent / "docs" / "METRICS.md"

#: Every file name of the layout (those with a suffix or a leading dot: a bare word such as
#: ``report`` or ``buffer`` is also a CLI command or a state key), and the directory names that
#: only ever name a directory.
FILE_NAMES = sorted({v for k, v in vars(run_files).items() if k.isupper() and isinstance(v, str) and "." in v}
                    | set(ReportFiles.FIGURES.values()))
DIR_NAMES = {run_files.CHECKPOINTS, run_files.STEP_PREFIX, run_files.STEP_PREFIX + "*", run_files.WANDB_RUN_ID}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (and attribute
    docstrings: a bare string statement)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def spelled_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every layout file name written in a string of ``path``'s code (docstrings
    and comments may name files: they are read, not opened)."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docs:
            continue
        for name in FILE_NAMES:
            if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", node.value):
                found.append((node.lineno, name))
        if node.value in DIR_NAMES:
            found.append((node.lineno, node.value))
    return found


def test_layout_names_are_the_module_constants():
    assert {"config.yaml", "metrics.jsonl", "updates.jsonl", "events.jsonl", "summary.json", "state.pt",
            ".stalerl.lock", "curves.png", "report.md"} <= set(FILE_NAMES)


def test_spelled_names_finds_code_strings_not_docstrings(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""Writes metrics.jsonl."""\n\ndef f(d):\n    """Reads summary.json."""\n'
                      '    return d / "metrics.jsonl", f"{d}/summary.json", "checkpoints", "my_summary.json"\n')
    assert sorted(spelled_names(source)) == [(5, "checkpoints"), (5, "metrics.jsonl"), (5, "summary.json")]


def test_no_module_but_run_files_spells_a_run_file_name():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "run_files.py" and path.parent == PACKAGE:
            continue
        found = spelled_names(path)
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}


def test_run_files_paths(tmp_path):
    files = RunFiles(tmp_path)
    assert files.metrics == tmp_path / "metrics.jsonl" and files.events == tmp_path / "events.jsonl"
    assert files.lock == tmp_path / ".stalerl.lock" and files.checkpoints == tmp_path / "checkpoints"
    assert files.events in files.logs and files.summary not in files.logs
    step = CheckpointFiles(files.checkpoints / CheckpointFiles.name(12))
    assert step.root.name == "step_000012" and CheckpointFiles.step_of(step.root) == 12
    assert step.state == step.root / "state.pt" and step.config.name == "stalerl_config.yaml"
    assert ReportFiles(tmp_path).figure("learning") == tmp_path / "learning.png"


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_old_runs_read_with_todays_names_and_their_events(tmp_path):
    # a run directory as stalerl wrote it before the renames: events inside metrics.jsonl
    _write(tmp_path / "metrics.jsonl", [
        {"step": 0, "eval/accuracy": 0.25},
        {"event": "async_worker_start", "pid": 7, "step": 0},
        {"step": 1, "time/step": 2.5, "rollout/extracted": 0.5, "actor/traj_accept_rate": 0.75},
        {"event": "crash", "step": 2, "reason": "NaN", "updates": 3},
    ])
    _write(tmp_path / "updates.jsonl", [{"step": 1, "update": 0, "actor/pg_clipfrac_low": 0.1,
                                        "actor/pg_clipfrac_high": 0.2, "actor/pg_clipfrac_lower": 0.05}])
    steps = read_steps(tmp_path)
    assert steps == [{"step": 0, "eval/accuracy": 0.25},
                     {"step": 1, "timing_s/step": 2.5, "rollout/extracted_frac": 0.5, "actor/traj_accept_frac": 0.75}]
    # verl's dual-clip name is not one of the renamed sides
    assert read_updates(tmp_path) == [{"step": 1, "update": 0, "actor/clipped_below_frac": 0.1,
                                       "actor/clipped_above_frac": 0.2, "actor/pg_clipfrac_lower": 0.05}]
    _write(tmp_path / "events.jsonl", [{"event": "async_worker_start", "pid": 8, "step": 1}])
    assert [(e["event"], e["step"]) for e in read_events(tmp_path)] == [
        ("async_worker_start", 0), ("crash", 2), ("async_worker_start", 1)]


def test_every_alias_target_is_in_the_metrics_table_and_no_old_name_is():
    from test_metrics_table import KEYS

    assert set(METRIC_ALIASES.values()) <= set(KEYS)
    assert not set(METRIC_ALIASES) & set(KEYS)
    renames = dict(re.findall(r"^\| `([^`]+)` → `([^`]+)` \|", METRICS_MD.read_text(), flags=re.M))
    assert renames == METRIC_ALIASES


def test_read_jsonl_names_a_damaged_line_or_skips_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": \n{"step": 2}\n{"st')
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2: malformed JSON"):
        read_jsonl(path)
    assert read_jsonl(path, skip_damaged=True) == [{"step": 0}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_run_summary_by_hand():
    config = {"objective": {"name": "m2po", "hparams": {"tau": 0.04}}, "stale": {"staleness": 4}}
    steps = [{"step": 0, "eval/accuracy": 0.2}, {"step": 1, "train/skipped_updates_total": 0.0},
             {"step": 2, "eval/accuracy": 0.5, "train/skipped_updates_total": 1.0},
             {"step": 3, "eval/accuracy": 0.5}, {"step": 4, "eval/accuracy": 0.4}]
    summary = run_summary(config, steps, model="testbed")
    assert summary == {"objective": "m2po", "hparams": {"tau": 0.04}, "staleness": 4, "model": "testbed",
                       "steps_done": 4, "crashed_at": None, "crash_reason": None, "eval_accuracy_start": 0.2,
                       "eval_accuracy_final": 0.4, "eval_accuracy_best": 0.5, "best_step": 2, "skipped_updates": 1.0}
    crashed = run_summary({}, [], steps_done=3, crashed_at=4, crash_reason="NaN")
    assert (crashed["steps_done"], crashed["crashed_at"], crashed["eval_accuracy_best"], crashed["objective"]) == \
        (3, 4, None, None)


def test_study_statistics_read_an_old_run_by_todays_names(tmp_path):
    from stalerl.studies.reproduce import run_stats

    _write(tmp_path / "metrics.jsonl", [
        {"step": 0, "eval/accuracy": 0.5},
        {"step": 1, "actor/pg_clipfrac": 0.1, "actor/traj_accept_rate": 0.6, "eval/accuracy": 0.25},
        {"step": 2, "actor/pg_clipfrac": 0.3, "actor/traj_accept_rate": 0.8, "eval/accuracy": 0.75},
        {"event": "crash", "step": 3, "reason": "NaN", "updates": 4},
    ])
    _write(tmp_path / "updates.jsonl", [
        {"step": 1, "update": 0, "train/grad_norm": 1.0, "actor/traj_accept_rate": 0.5, "actor/m2": 0.1},
        {"step": 1, "update": 1, "train/grad_norm": 3.0, "actor/traj_accept_rate": 0.7, "actor/m2": 0.3},
        {"step": 2, "update": 2, "train/grad_norm": 2.0, "actor/traj_accept_rate": 0.9, "actor/m2": 0.5},
    ])
    (tmp_path / "summary.json").write_text(json.dumps({"crashed_at": 3, "steps_done": 2}))
    stats = run_stats(tmp_path)
    assert stats["accept_mean"] == pytest.approx(0.7)  # (0.6 + 0.8) / 2, under its old name
    assert stats["clipfrac_mean"] == pytest.approx(0.2)
    assert stats["grad_norm_mean"] == pytest.approx(2.0)
    # acceptance and M2 rise together exactly (0.5, 0.7, 0.9 against 0.1, 0.3, 0.5): Pearson 1
    assert stats["accept_m2_pearson"] == pytest.approx(1.0)
    assert (stats["eval_start"], stats["eval_final"], stats["eval_best"]) == (0.5, 0.75, 0.75)
    assert (stats["crashed_at"], stats["steps_done"]) == (3, 2)
