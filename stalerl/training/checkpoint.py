"""Atomic checkpoints: model weights as safetensors (``save_pretrained``) plus the loop's state.

Layout of a run directory's ``checkpoints/``::

    step_000010/            model.safetensors, config.json, tokenizer files, state.pt,
                            buffer/buffer.safetensors + buffer/buffer.json (the stale buffer)
                            stalerl_config.yaml (the run's config), manifest.json (file sizes)
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

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from stalerl.errors import CheckpointError, OutputError
from stalerl.run_files import BUFFER_META, CheckpointFiles
from stalerl.staleness.buffer import read_buffer_state
from stalerl.training.rundir import io_reason


def save_checkpoint(ckpt_root: Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 2,
                    buffer=None) -> Path:
    """Write ``step_<step>`` atomically, point ``latest`` to it, keep the newest ``keep``.
    ``buffer`` (a :class:`~stalerl.staleness.buffer.StaleBuffer`) is written under ``buffer/``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = CheckpointFiles.name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        files = CheckpointFiles(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if buffer is not None:
            buffer.save(files.buffer)
            _fsync_dir(files.buffer)
        torch.save(state, files.state)
        if "config" in state:  # the run's configuration, readable without unpickling state.pt
            files.config.write_text(yaml.safe_dump(state["config"], sort_keys=False))
        _write_manifest(tmp)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = CheckpointFiles.latest_pointer(ckpt_root)
        pointer_tmp = ckpt_root / f".{pointer.name}.tmp-{os.getpid()}"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, pointer)
    except Exception as err:
        # torch.save reports a full disk or a file-size limit as a bare RuntimeError, safetensors
        # as its own SafetensorError
        if not isinstance(err, OSError) and type(err) is not RuntimeError and type(err).__name__ != "SafetensorError":
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(ckpt_root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise OutputError(f"could not write checkpoint {final}: {io_reason(err)}; {kept}") from None
    _prune(ckpt_root, keep)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint (one with ``state.pt``), or None. Resume uses
    :func:`newest_intact`, which also checks the files are whole."""
    pointer = CheckpointFiles.latest_pointer(ckpt_root)
    if pointer.is_file():
        path = ckpt_root / pointer.read_text(errors="replace").strip()
        if CheckpointFiles(path).state.is_file():
            return path
    complete = [p for p in CheckpointFiles.all_in(ckpt_root) if CheckpointFiles(p).state.is_file()]
    return complete[-1] if complete else None


def newest_intact(ckpt_root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes :func:`checkpoint_problem`, and the newer ones that do not
    (each with what is wrong). A directory without ``state.pt`` was never finished and is ignored."""
    damaged = []
    for path in reversed([p for p in CheckpointFiles.all_in(ckpt_root) if CheckpointFiles(p).state.is_file()]):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint directory (a missing or truncated file), or None.

    Sizes are checked against ``manifest.json`` (written last, before the rename); without one
    (an older checkpoint) the weights' safetensors header and ``state.pt``'s zip directory are
    checked, which catches truncation."""
    files = CheckpointFiles(path)
    manifest = files.manifest
    if manifest.is_file():
        try:
            sizes = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return f"{manifest.name} is unreadable"
        for name, size in sizes.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, {size} were written"
    for weights in path.glob("*.safetensors"):
        problem = _safetensors_problem(weights)
        if problem:
            return f"{weights.name} {problem}"
    if not zipfile.is_zipfile(files.state):
        return f"{files.state.name} is truncated or not a torch checkpoint"
    return None


def _safetensors_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                return "has no valid header"
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return "has no valid header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    size = path.stat().st_size
    return None if size >= need else f"is truncated ({size} of {need} bytes)"


def checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The configuration the checkpoint was made with (None for a checkpoint that has none)."""
    saved = CheckpointFiles(path).config
    if saved.is_file():
        try:
            data = yaml.safe_load(saved.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise CheckpointError(f"{saved} cannot be read: {' '.join(str(err).split())}") from None
        return data if isinstance(data, dict) else None
    return load_state(path).get("config")


def load_state(path: Path) -> dict[str, Any]:
    """The loop state saved with a checkpoint (the stale buffer's state under ``"buffer"``)."""
    files = CheckpointFiles(path)
    try:
        state = torch.load(files.state, map_location="cpu", weights_only=False)
        if (files.buffer / BUFFER_META).is_file():
            state["buffer"] = read_buffer_state(files.buffer)
        return state
    except Exception as err:  # a truncated or damaged pickle: name the file, not torch's internals
        raise CheckpointError(f"{files.state} cannot be loaded ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]})") from None


def load_model(path: str | Path, what: str, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(path)`` with its failures as one :class:`CheckpointError`
    naming ``what`` (``model.path='...'``, ``checkpoint .../step_000002``): truncated or corrupt
    weights, a ``config.json`` that does not match them (shapes differ, or weights are missing and
    would silently be initialised at random)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the failure is reported below in one line, not as a load report
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as err:  # transformers, safetensors and huggingface_hub each have their own types
        text = " ".join(str(err).split())
        if "mismatch" in text:
            reason = "its config.json does not match the weights (tensor shapes differ)"
        elif type(err).__name__ == "SafetensorError" or "deserializ" in text:
            reason = f"the weights are truncated or corrupt ({text[:160]})"
        else:
            reason = f"{type(err).__name__}: {text[:300]}"
        raise CheckpointError(f"{what} could not be loaded: {reason}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in info.get("missing_keys", []) if k not in tied and not k.startswith("lm_head")]
    if missing or info.get("mismatched_keys"):
        names = missing or [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]
        raise CheckpointError(f"{what} could not be loaded: its config.json does not match the weights "
                              f"({len(names)} tensor(s) missing or of another shape, e.g. {names[0]})")
    return model


def _prune(ckpt_root: Path, keep: int) -> None:
    complete = [p for p in CheckpointFiles.all_in(ckpt_root) if p.is_dir()]
    for old in complete[: max(0, len(complete) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(path: Path) -> None:
    sizes = {f.relative_to(path).as_posix(): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    CheckpointFiles(path).manifest.write_text(json.dumps(sizes, indent=1))


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
