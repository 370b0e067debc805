"""Atomic checkpoints: model weights as safetensors (``save_pretrained``) plus the loop's state.

Layout of a run directory's ``checkpoints/``::

    step_000010/            model.safetensors, config.json, tokenizer files, state.pt
    latest                  the name of the newest complete checkpoint

A checkpoint is written into a temporary directory and renamed into place, and ``latest`` is
replaced atomically afterwards, so a kill at any moment leaves the previous checkpoint usable.
``state.pt`` holds the optimizer, the stale buffer, the objective's state, the RNG states and the
counters (a pickle of our own objects: load only checkpoints you wrote).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(ckpt_root: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` to it, keep the newest ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "state.pt")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = ckpt_root / f".latest.tmp-{os.getpid()}"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, ckpt_root / "latest")
    _prune(ckpt_root, keep)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        path = ckpt_root / pointer.read_text().strip()
        if (path / "state.pt").is_file():
            return path
    complete = sorted(p for p in ckpt_root.glob("step_*") if (p / "state.pt").is_file())
    return complete[-1] if complete else None


def load_state(path: Path) -> dict[str, Any]:
    """The loop state saved with a checkpoint."""
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)


def _prune(ckpt_root: Path, keep: int) -> None:
    complete = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in complete[: max(0, len(complete) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
