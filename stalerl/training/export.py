"""``stalerl export RUN_DIR --step N OUT_DIR``: a checkpoint as a plain ``save_pretrained`` directory.

The output holds the model (safetensors) and the tokenizer, written by transformers'
``save_pretrained``, and a ``README.md`` model card with the run's config (``config.yaml``) and
results (``summary.json`` and the step's record of ``metrics.jsonl``). It holds nothing of
stalerl's own (no ``state.pt``), so ``AutoModelForCausalLM.from_pretrained(OUT_DIR)``, vLLM's
``LLM(OUT_DIR)`` or ``huggingface-cli upload`` take it as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stalerl.errors import UserError
from stalerl.run_files import CheckpointFiles, RunFiles, read_steps
from stalerl.training import checkpoint as ckpt

__all__ = ["ExportError", "find_checkpoint", "export_checkpoint"]


class ExportError(UserError):
    """The run directory or the requested step has no checkpoint to export."""


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The checkpoint of ``step`` in ``run_dir`` (the newest complete one when ``step`` is None)."""
    root = RunFiles(run_dir).checkpoints
    if not Path(run_dir).is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    if step is None:
        found = ckpt.latest_checkpoint(root)
        if found is None:
            raise ExportError(f"{run_dir}: no complete checkpoint under {root}")
        return found
    path = root / CheckpointFiles.name(step)
    if not (path / "config.json").is_file():
        have = [CheckpointFiles.step_of(p) for p in CheckpointFiles.all_in(root) if (p / "config.json").is_file()]
        raise ExportError(f"{run_dir}: no checkpoint of step {step}; checkpoints kept: {have or 'none'} "
                          "(keep_checkpoints and checkpoint_every decide which steps are kept)")
    return path


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Write the checkpoint of ``step`` (default: the newest) of ``run_dir`` to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    source = find_checkpoint(run_dir, step)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; choose a new output directory")
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    exported_step = CheckpointFiles.step_of(source)
    (out_dir / "README.md").write_text(model_card(run_dir, exported_step))
    return out_dir


def model_card(run_dir: Path, step: int) -> str:
    """The Markdown model card: the run's results at ``step`` and its full config."""
    files = RunFiles(run_dir)
    config = files.config.read_text() if files.config.is_file() else f"(no {files.config.name})\n"
    summary: dict[str, Any] = {}
    if files.summary.is_file():
        summary = json.loads(files.summary.read_text())
    record = next((r for r in read_steps(run_dir) if r.get("step") == step), {})
    shown = {k: v for k, v in record.items() if k.startswith(("eval/", "rollout/reward", "rollout/accuracy"))}
    lines = [
        "---",
        "library_name: transformers",
        "tags: [stalerl, reinforcement-learning]",
        "---",
        "",
        f"# {run_dir.name} (step {step})",
        "",
        f"Trained with stalerl (`stalerl train`): objective `{summary.get('objective', '?')}`, "
        f"staleness {summary.get('staleness', '?')}, from `{summary.get('model', '?')}`. "
        f"Exported from `{run_dir}` at step {step}.",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, (dict, list))]
    lines += [f"| step {step}: {k} | {v} |" for k, v in sorted(shown.items())]
    lines += ["", "## Training config", "", "```yaml", config.rstrip("\n"), "```", ""]
    return "\n".join(lines)
