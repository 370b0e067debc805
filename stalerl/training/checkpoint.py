"""Atomic checkpoints: model weights as safetensors (``save_pretrained``) plus the loop's state.

Layout of a run directory's ``checkpoints/``::

    step_000010/            model.safetensors, config.json, tokenizer files, state.pt,
                            buffer/buffer.safetensors + buffer/buffer.json (the stale buffer)
    latest                  the name of the newest complete checkpoint

A checkpoint is written into a temporary directory and renamed into place, and ``latest`` is
replaced atomically afterwards, so a kill at any moment leaves the previous checkpoint usable.
``state.pt`` holds the optimizer, the objective's state, the RNG states and the counters (a pickle
of our own objects: load only checkpoints you wrote). The stale buffer, the bulk of the state, is
not pickled: its tensors are a safetensors file and its metadata JSON
(:meth:`stalerl.staleness.buffer.StaleBuffer.save`); :func:`load_state` returns it under
``"buffer"``. With mixed precision the weights saved are the float32 masters, so resume is exact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from stalerl.staleness.buffer import read_buffer_state


def save_checkpoint(ckpt_root: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 2,
                    buffer=None) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` to it, keep the newest ``keep``.
    ``buffer`` (a :class:`~stalerl.staleness.buffer.StaleBuffer`) is written under ``buffer/``."""
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
    if buffer is not None:
        buffer.save(tmp / "buffer")
        _fsync_dir(tmp / "buffer")
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
    """The loop state saved with a checkpoint (the stale buffer's state under ``"buffer"``)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if (path / "buffer" / "buffer.json").is_file():
        state["buffer"] = read_buffer_state(path / "buffer")
    return state


def _prune(ckpt_root: Path, keep: int) -> None:
    complete = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in complete[: max(0, len(complete) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
