"""Metrics output of a run: ``metrics.jsonl`` (one record per step), ``updates.jsonl`` (one
record per optimizer update), ``diagnostics.jsonl`` (per-update trajectory/token samples for
:mod:`stalerl.evaluation.diagnostics`), ``eval_problems.jsonl`` (per evaluation, the accuracy of
each held-out problem, in a fixed problem order: what paired statistics resample) and
TensorBoard events.

Metric namespaces are stable: ``rollout/`` (the batch generated this step by the current
policy), ``train/`` (the consumed, possibly stale data and the updates on it), ``actor/`` (the
objective's metrics, verl's names), ``eval/`` (held-out evaluation), ``time/`` and ``perf/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


EVAL_PROBLEMS_KEY = "eval/problem_accuracy"
"""Key of a step record holding the per-problem accuracies; written to ``eval_problems.jsonl``."""


class RunLogger:
    """Appends JSON lines and mirrors scalars to TensorBoard."""

    FILES = ("metrics.jsonl", "updates.jsonl", "diagnostics.jsonl", "eval_problems.jsonl")

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        if resume_step is not None:
            self._truncate(resume_step)
        self._files = {name: open(run_dir / name, "a") for name in self.FILES}
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as err:  # tensorboard missing or broken: keep the JSON logs
                print(f"stalerl: TensorBoard disabled ({err})")

    def _truncate(self, step: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be redone)."""
        for name in self.FILES:
            path = self.run_dir / name
            if not path.exists():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= step and record.get("event") != "crash":
                    kept.append(line)
            path.write_text("".join(k + "\n" for k in kept))

    def log_step(self, step: int, metrics: dict[str, Any]) -> None:
        metrics = dict(metrics)
        problems = metrics.pop(EVAL_PROBLEMS_KEY, None)
        if problems is not None:
            self._write("eval_problems.jsonl", {"step": step, "accuracy": problems})
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._write("metrics.jsonl", record)
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def log_update(self, record: dict[str, Any]) -> None:
        self._write("updates.jsonl", {k: _clean(v) for k, v in record.items()})

    def log_diagnostics(self, record: dict[str, Any]) -> None:
        self._write("diagnostics.jsonl", record)

    def log_event(self, record: dict[str, Any]) -> None:
        self._write("metrics.jsonl", record)

    def _write(self, name: str, record: dict[str, Any]) -> None:
        handle = self._files[name]
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (missing file -> empty list)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
