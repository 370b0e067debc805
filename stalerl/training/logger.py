"""Metrics output of a run: ``metrics.jsonl`` (one record per step), ``updates.jsonl`` (one
record per optimizer update), ``diagnostics.jsonl`` (per-update trajectory/token samples for
:mod:`stalerl.evaluation.diagnostics`), ``eval_problems.jsonl`` (per evaluation, the accuracy of
each held-out problem, in a fixed problem order: what paired statistics resample), ``events.jsonl``
(what happens besides steps: a crash, the async rollout worker's start), and the
trackers of the ``logger`` option: TensorBoard events and Weights & Biases (offline with
``WANDB_MODE=offline``: the run is written under ``<run_dir>/wandb`` and can be uploaded later with
``wandb sync``). Trackers get each step's record with the same names and step as ``metrics.jsonl``.

Metric namespaces are stable: ``rollout/`` (the batch generated this step by the current
policy), ``train/`` (the consumed, possibly stale data and the updates on it), ``actor/`` (the
objective's metrics, verl's names), ``eval/`` (held-out evaluation), ``timing_s/`` and ``perf/``
(docs/METRICS.md). The paths come from :class:`stalerl.run_files.RunFiles`.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
import warnings
from pathlib import Path
from typing import Any

from stalerl.errors import OutputError
from stalerl.run_files import RunFiles, read_jsonl
from stalerl.training.rundir import atomic_write_text, io_reason

__all__ = ["EVAL_PROBLEMS_KEY", "RunLogger", "make_run_logger", "read_jsonl", "trackers"]
log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


EVAL_PROBLEMS_KEY = "eval/problem_accuracy"
"""Key of a step record holding the per-problem accuracies; written to ``eval_problems.jsonl``."""


class RunLogger:
    """Appends JSON lines and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None,
                 wandb_project: str | None = None, wandb_config: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.files = RunFiles(run_dir)
        self._wandb = _start_wandb(run_dir, wandb_project, wandb_config) if wandb_project else None
        if resume_step is not None:
            self._truncate(resume_step)
        try:
            self._files = {path.name: open(path, "a") for path in self.files.logs}
        except OSError as err:
            raise OutputError(f"could not open the run's logs in {run_dir}: {io_reason(err)}") from None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.files.tensorboard))
            except Exception as err:  # tensorboard missing or broken: keep the JSON logs
                warnings.warn(f"stalerl: TensorBoard disabled ({err}); the JSON logs are kept", stacklevel=2)

    def _truncate(self, step: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be redone). Each file
        is rewritten through a new file and a rename, so a kill meanwhile keeps the whole history."""
        for path in self.files.logs:
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= step and record.get("event") != "crash":
                    kept.append(line)
            atomic_write_text(path, "".join(k + "\n" for k in kept), f"the {path.name} history up to step {step}")

    def log_step(self, step: int, metrics: dict[str, Any]) -> None:
        metrics = dict(metrics)
        problems = metrics.pop(EVAL_PROBLEMS_KEY, None)
        if problems is not None:
            self._write(self.files.eval_problems, {"step": step, "accuracy": problems})
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._write(self.files.metrics, record)
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))
                             and not isinstance(v, bool) and math.isfinite(v)}, step=step)

    def log_update(self, record: dict[str, Any]) -> None:
        self._write(self.files.updates, {k: _clean(v) for k, v in record.items()})

    def log_diagnostics(self, record: dict[str, Any]) -> None:
        self._write(self.files.diagnostics, record)

    def log_event(self, record: dict[str, Any]) -> None:
        """An event (``{"event": name, "step": ..., ...}``) into ``events.jsonl``."""
        self._write(self.files.events, record)

    def _write(self, path: Path, record: dict[str, Any]) -> None:
        handle = self._files[path.name]
        try:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        except OSError as err:  # a full disk, a file-size limit: one line naming the file
            what = f"step {record['step']}" if "step" in record else "a record"
            raise OutputError(f"could not append {what} to {path}: {io_reason(err)}") from None

    def close(self) -> None:
        for handle in self._files.values():
            try:
                handle.close()
            except OSError:  # the buffered tail could not be written: already reported by _write
                pass
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def trackers(config) -> list[str]:
    """The trackers a config asks for: ``logger``, or ``[tensorboard]`` if ``tensorboard`` when unset."""
    if config.logger is not None:
        return list(config.logger)
    return ["tensorboard"] if config.tensorboard else []


def make_run_logger(run_dir: Path, config, resume_step: int | None = None) -> RunLogger:
    """The :class:`RunLogger` of ``stalerl train`` with the trackers of ``config.logger``."""
    import dataclasses

    chosen = trackers(config)
    return RunLogger(run_dir, tensorboard="tensorboard" in chosen, resume_step=resume_step,
                     wandb_project=config.wandb_project if "wandb" in chosen else None,
                     wandb_config=dataclasses.asdict(config))


def _start_wandb(run_dir: Path, project: str, config: dict[str, Any] | None):
    """A W&B run for ``run_dir`` (resumed with the same id after ``--resume``), or None with a
    warning when wandb cannot start."""
    id_file = RunFiles(run_dir).wandb_run_id
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    try:
        import wandb

        run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", dir=str(run_dir),
                         config=config)
    except Exception as err:  # no wandb, no login while online...: keep the JSON logs
        warnings.warn(f"W&B logging disabled ({type(err).__name__}: {err}); set WANDB_MODE=offline to log "
                      "without a network", stacklevel=3)
        return None
    id_file.write_text(run_id)
    log.info("W&B run %s (%s)", run_id, getattr(run.settings, "mode", "?"))
    return run
