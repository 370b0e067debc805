"""The files of a run directory, each name spelled once here, and how a run is read back.

Every writer (the training loop, :mod:`stalerl.training.logger`, :mod:`stalerl.training.checkpoint`,
:mod:`stalerl.training.rundir`) and every reader (``stalerl report``, ``stalerl export``, the
studies) takes its paths from :class:`RunFiles` and :class:`CheckpointFiles`;
``tests/test_run_files.py`` fails when a file name is spelled anywhere else in the package::

    <run_dir>/
        config.yaml            the run's configuration, written atomically before the first step
        metrics.jsonl          one record per training step (step 0: before any update)
        updates.jsonl          one record per optimizer update
        diagnostics.jsonl      per update, the samples the report's diagnostics read
        eval_problems.jsonl    per evaluation, the accuracy of each held-out problem
        events.jsonl           what happened besides steps: ``crash``, ``async_worker_start``
        summary.json           the run's outcome (:func:`run_summary`), written at its end
        curves.png             learning curves (``plots=true``)
        tensorboard/           TensorBoard event files (``logger``)
        wandb/, wandb_run_id   W&B's files and the run id a resume continues
        checkpoints/           step_000010/, ..., latest (the checkpoint layout below)
        report/                ``stalerl report``'s default output (report.md, report.json, figures)
        .stalerl.lock          the writer's lock, holding its pid

    checkpoints/step_000010/   the model (save_pretrained), state.pt, stalerl_config.yaml,
                               buffer/ (buffer.safetensors, buffer.json), manifest.json

Reading a run applies :data:`METRIC_ALIASES`, so the metric names of runs written before a rename
(docs/METRICS.md, "Renamed keys") read as today's; the events that older runs wrote into
``metrics.jsonl`` are read as events. Only the standard library is imported: this module sits
below the training loop and the report alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from stalerl.errors import UserError

__all__ = ["RunFiles", "CheckpointFiles", "ReportFiles", "METRIC_ALIASES", "canonical", "read_jsonl",
           "read_steps", "read_updates", "read_events", "run_summary", "eval_summary",
           "CONFIG", "METRICS", "UPDATES", "DIAGNOSTICS", "EVAL_PROBLEMS", "EVENTS", "SUMMARY", "CURVES",
           "TENSORBOARD", "WANDB_RUN_ID", "CHECKPOINTS", "REPORT", "LOCK", "CHECKPOINT_STATE", "CHECKPOINT_CONFIG",
           "CHECKPOINT_MANIFEST", "CHECKPOINT_BUFFER", "BUFFER_TENSORS", "BUFFER_META", "LATEST", "STEP_PREFIX",
           "REPORT_MD", "REPORT_JSON"]

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
UPDATES = "updates.jsonl"
DIAGNOSTICS = "diagnostics.jsonl"
EVAL_PROBLEMS = "eval_problems.jsonl"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
WANDB_RUN_ID = "wandb_run_id"
CHECKPOINTS = "checkpoints"
REPORT = "report"
LOCK = ".stalerl.lock"

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_CONFIG = "stalerl_config.yaml"
CHECKPOINT_MANIFEST = "manifest.json"
CHECKPOINT_BUFFER = "buffer"
BUFFER_TENSORS = "buffer.safetensors"
BUFFER_META = "buffer.json"
LATEST = "latest"
STEP_PREFIX = "step_"

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


# ============================================================================ the layout

@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory: ``RunFiles(run_dir).metrics`` is its ``metrics.jsonl``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def updates(self) -> Path:
        return self.root / UPDATES

    @property
    def diagnostics(self) -> Path:
        return self.root / DIAGNOSTICS

    @property
    def eval_problems(self) -> Path:
        return self.root / EVAL_PROBLEMS

    @property
    def events(self) -> Path:
        return self.root / EVENTS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def curves(self) -> Path:
        return self.root / CURVES

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def wandb_run_id(self) -> Path:
        return self.root / WANDB_RUN_ID

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def logs(self) -> tuple[Path, ...]:
        """The JSON-lines logs, appended during the run and cut back to the checkpoint on resume."""
        return self.metrics, self.updates, self.diagnostics, self.eval_problems, self.events

    @property
    def markers(self) -> tuple[Path, ...]:
        """What shows that the directory holds a run's history (``rundir.is_run``)."""
        return self.metrics, self.events, self.checkpoints


@dataclass(frozen=True)
class CheckpointFiles:
    """The paths inside one checkpoint directory (``checkpoints/step_000010``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @staticmethod
    def name(step: int) -> str:
        """The directory name of the checkpoint of ``step``: ``step_000010``."""
        return f"{STEP_PREFIX}{step:06d}"

    @staticmethod
    def step_of(path: Path) -> int:
        """The step of a checkpoint directory (the inverse of :meth:`name`)."""
        return int(Path(path).name[len(STEP_PREFIX):])

    @staticmethod
    def all_in(checkpoints: Path) -> list[Path]:
        """The checkpoint directories (finished or not) under ``checkpoints/``, oldest first."""
        return sorted(Path(checkpoints).glob(f"{STEP_PREFIX}*"))

    @staticmethod
    def latest_pointer(checkpoints: Path) -> Path:
        """The file naming the newest complete checkpoint."""
        return Path(checkpoints) / LATEST

    @staticmethod
    def temporaries() -> tuple[str, ...]:
        """Glob patterns of what interrupted writes leave in a run or checkpoints directory
        (checkpoints, the ``latest`` pointer, atomic rewrites: ``.<name>.tmp-<pid>``)."""
        return f".{STEP_PREFIX}*.tmp-*", f".{LATEST}.tmp-*", ".*.tmp-*"

    @property
    def state(self) -> Path:
        return self.root / CHECKPOINT_STATE

    @property
    def config(self) -> Path:
        return self.root / CHECKPOINT_CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / CHECKPOINT_MANIFEST

    @property
    def buffer(self) -> Path:
        return self.root / CHECKPOINT_BUFFER


@dataclass(frozen=True)
class ReportFiles:
    """What ``stalerl report`` writes into its output directory."""

    root: Path

    #: The report's figures by their key in ``report.json`` (``figures``).
    FIGURES = {"learning": "learning.png", "dynamics": "dynamics.png", "entropy": "entropy_vs_ratio.png",
               "log_rho": "log_rho.png", "accept_m2": "accept_vs_m2.png"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def markdown(self) -> Path:
        return self.root / REPORT_MD

    @property
    def json(self) -> Path:
        return self.root / REPORT_JSON

    def figure(self, key: str) -> Path:
        return self.root / self.FIGURES[key]


# ============================================================================ metric names

#: Old metric name -> today's, applied to every record read back from a run (docs/METRICS.md,
#: "Renamed keys"): runs written before a rename keep reading in ``stalerl report``, the studies'
#: statistics and the figures.
METRIC_ALIASES: dict[str, str] = {
    "actor/pg_clipfrac_low": "actor/clipped_below_frac",
    "actor/pg_clipfrac_high": "actor/clipped_above_frac",
    "actor/traj_accept_rate": "actor/traj_accept_frac",
    "actor/token_accept_rate": "actor/token_accept_frac",
    "rollout/extracted": "rollout/extracted_frac",
    "time/generate": "timing_s/gen",
    "time/score": "timing_s/reward",
    "time/behaviour_logprob": "timing_s/old_log_prob",
    "time/train": "timing_s/update_actor",
    "time/step": "timing_s/step",
    "time/wait_rollout": "timing_s/wait_rollout",
}


def canonical(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with its old metric names replaced by today's (:data:`METRIC_ALIASES`)."""
    return {METRIC_ALIASES.get(key, key): value for key, value in record.items()}


# ============================================================================ reading a run

def read_jsonl(path: Path, *, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (missing file -> empty list). A last line cut short by a kill or
    a full disk is ignored; a damaged line before it is a :class:`UserError` naming the file and
    line, or skipped with ``skip_damaged`` (the report reads what it can)."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if skip_damaged or (number == len(lines) and not text.endswith("\n")):
                continue  # a torn last record
            raise UserError(f"{path}, line {number}: malformed JSON ({err.msg} at column {err.colno})") from None
    return records


def read_steps(run_dir: Path, *, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The step records of ``metrics.jsonl`` under today's metric names (events left out: runs
    written before ``events.jsonl`` existed kept them there)."""
    records = read_jsonl(RunFiles(run_dir).metrics, skip_damaged=skip_damaged)
    return [canonical(r) for r in records if "event" not in r and "step" in r]


def read_updates(run_dir: Path, *, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The per-update records of ``updates.jsonl`` under today's metric names."""
    return [canonical(r) for r in read_jsonl(RunFiles(run_dir).updates, skip_damaged=skip_damaged)]


def read_events(run_dir: Path, *, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The event records of a run: ``events.jsonl``, after those an older run wrote into
    ``metrics.jsonl``."""
    files = RunFiles(run_dir)
    legacy = [r for r in read_jsonl(files.metrics, skip_damaged=skip_damaged) if "event" in r]
    return legacy + read_jsonl(files.events, skip_damaged=skip_damaged)


# ============================================================================ the run summary

def eval_summary(steps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Held-out accuracy (``eval/accuracy``) at the first and the last evaluation, and the best one
    with its step (the first maximum); None where the run never evaluated."""
    evals = [(r["step"], r["eval/accuracy"]) for r in steps
             if isinstance(r.get("eval/accuracy"), (int, float)) and not isinstance(r.get("eval/accuracy"), bool)]
    best = max(evals, key=lambda e: e[1]) if evals else (None, None)
    return {
        "eval_accuracy_start": evals[0][1] if evals else None,
        "eval_accuracy_final": evals[-1][1] if evals else None,
        "eval_accuracy_best": best[1],
        "best_step": best[0],
    }


def run_summary(config: Mapping[str, Any], steps: list[Mapping[str, Any]], *, model: str | None = None,
                steps_done: int | None = None, crashed_at: int | None = None,
                crash_reason: str | None = None) -> dict[str, Any]:
    """The outcome of a run: what ``summary.json`` holds and the report's table shows.

    ``config`` is the run's configuration as a dict (``config.yaml``), ``steps`` its step records
    (:func:`read_steps`). ``steps_done`` defaults to the last step logged; ``skipped_updates`` is
    the last ``train/skipped_updates_total`` logged."""
    objective = config.get("objective") or {}
    skipped = next((r["train/skipped_updates_total"] for r in reversed(steps)
                    if r.get("train/skipped_updates_total") is not None), None)
    return {
        "objective": objective.get("name"),
        "hparams": objective.get("hparams") or {},
        "staleness": (config.get("stale") or {}).get("staleness"),
        "model": model,
        "steps_done": max((r["step"] for r in steps), default=0) if steps_done is None else steps_done,
        "crashed_at": crashed_at,
        "crash_reason": crash_reason,
        **eval_summary(steps),
        "skipped_updates": skipped,
    }
