"""A run directory's life cycle: checked before anything is written, one writer at a time, atomic
rewrites, leftovers of interrupted writes cleaned.

:func:`prepare` decides, without writing anything, where a run goes and what it resumes from:

* a new run (no ``--resume``) refuses a directory that already holds a run (records in
  ``metrics.jsonl`` or ``events.jsonl``, or ``checkpoints/``; :class:`stalerl.run_files.RunFiles`
  names them): it would append a second history and overwrite the
  checkpoints;
* ``--resume`` takes the newest *intact* checkpoint (a damaged newer one is named and skipped), and
  refuses a configuration that differs from the one saved inside that checkpoint in anything but
  the keys of :data:`RESUMABLE`; a run interrupted before its first checkpoint starts over cleanly;
* every output location is checked writable (:func:`check_writable`).

:class:`RunLock` then makes the process the directory's only writer (``fcntl.flock`` on
``.stalerl.lock``, which holds the writer's pid; the kernel drops the lock when the process dies,
so the lock of a dead process is taken over, with a message). :func:`start` writes ``config.yaml``
atomically (:func:`atomic_write_text`: a new file, fsync, ``os.replace``) and removes the temporary
files that interrupted checkpoints and log rewrites left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from stalerl.errors import OutputError, RunDirError, RunLockedError
from stalerl.run_files import LOCK, CheckpointFiles, RunFiles

__all__ = ["RESUMABLE", "LOCK_NAME", "RunLock", "atomic_write_text", "check_writable", "prepare", "start",
           "load_run_config", "is_run", "io_reason", "make_dir", "warn_unused_staleness"]

log = logging.getLogger(__name__)

LOCK_NAME = LOCK

#: Keys that ``--resume`` may change: how long the run goes on and how it reports, never what it
#: computes (a key ending in ``.`` covers a whole section).
RESUMABLE = ("steps", "run_dir", "checkpoint_every", "keep_checkpoints", "tensorboard", "plots", "progress",
             "eval.every", "model.device", "reward.num_workers", "runtime.")

#: Temporary names of interrupted writes inside a run directory (checkpoints, pointer, rewrites).
TEMP_PATTERNS = CheckpointFiles.temporaries()


# ============================================================================ atomic writes and I/O errors

def io_reason(err: BaseException) -> str:
    """An I/O failure in a few words (``No space left on device``, ``File too large``)."""
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno)
    text = " ".join(str(err).split())
    found = re.search(r"os error (\d+)", text)  # safetensors' Rust I/O errors
    if found:
        return os.strerror(int(found.group(1)))
    if "unexpected pos" in text or "file write failed" in text:  # torch.save on a full disk / size limit
        return f"the write failed ({text[:120]}); is the disk full or a file-size limit reached?"
    return text[:200]


def atomic_write_text(path: Path, text: str, what: str) -> None:
    """Replace ``path`` by ``text`` through a new file and a rename: a kill at any moment leaves
    either the old or the new content. ``what`` names the content in the error message."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"could not write {what} to {path}: {io_reason(err)}") from None


def check_writable(path: Path, what: str) -> None:
    """Refuse an output directory that cannot be created or written, before any work is done.

    ``path`` need not exist; its nearest existing ancestor must be a writable directory. The test
    creates and removes a probe file (permission bits alone say nothing under root or on a
    read-only mount)."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise OutputError(f"{what} {path} {where}; choose a directory path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stalerl-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {path} is not writable ({existing}: {io_reason(err)}); "
                          "choose another location or fix its permissions") from None


# ============================================================================ one writer per run directory

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive lock on a run directory for its writer: ``with RunLock(run_dir): ...``.

    The lock is ``fcntl.flock`` on ``run_dir/.stalerl.lock``; the file holds the writer's pid while
    it runs and is emptied on release. The kernel releases a flock when its process dies (even by
    SIGKILL), so a lock file that still names a pid while the lock is free belongs to a dead
    process: it is taken over with a message. A second writer is refused with
    :class:`RunLockedError` naming the holder's pid."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunFiles(self.run_dir).lock
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"could not create the lock file {self.path}: {io_reason(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"could not lock {self.path}: {io_reason(err)}") from None
            who = f"process {holder}" if holder else "another process"
            raise RunLockedError(f"run directory {self.run_dir} is in use by {who} (lock {self.path}); "
                                 "wait for it to finish or stop it, then retry") from None
        previous = _read_pid(fd)
        if previous and previous != os.getpid() and not _pid_alive(previous):
            log.warning("stalerl: run directory %s was locked by process %d, which is no longer running; "
                        "taking the lock over", self.run_dir, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# ============================================================================ deciding what a run does

def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run's history: logged records or checkpoints. (A
    ``config.yaml`` beside empty logs is a start that failed during setup, a bad dataset row say:
    nothing is lost by starting again there.)"""
    return any(_holds_history(path) for path in RunFiles(run_dir).markers)


def _holds_history(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def load_run_config(run_dir: Path, overrides: list[str] | None = None):
    """The configuration of the run in ``run_dir`` (its ``config.yaml``) with ``overrides``.

    An empty, unreadable or damaged ``config.yaml`` is refused: it is never replaced by defaults.
    """
    from stalerl.training.config import ConfigError, load_config

    run_dir = Path(run_dir)
    saved = RunFiles(run_dir).config
    if not saved.is_file():
        raise RunDirError(f"--resume {str(run_dir)!r}: no {saved.name} in that directory (is it a run directory?)")
    try:
        text = saved.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"--resume {str(run_dir)!r}: {saved} cannot be read ({err})") from None
    if not text.strip():
        raise RunDirError(f"--resume {str(run_dir)!r}: {saved} is empty; the run's configuration is lost there "
                          f"(each checkpoint keeps a copy in {CheckpointFiles(run_dir).config.name}: copy it back to "
                          f"{saved.name})")
    try:
        return load_config(saved, overrides, resolved=True)  # written resolved: a ${ in it is literal
    except ConfigError as err:
        raise RunDirError(f"--resume {str(run_dir)!r}: {err}") from None


def prepare(config, resume: str | Path | None, default_dir: Path) -> tuple[Path, Path | None, bool]:
    """Where the run goes and which checkpoint it continues, checked before anything is written.

    Returns ``(run_dir, resume_from, restart)``: ``resume_from`` is the newest intact checkpoint
    (None for a new run); ``restart`` is True when ``--resume`` found no checkpoint yet, so the
    run starts over and its partial logs are dropped."""
    from stalerl.training import checkpoint as ckpt

    run_dir = Path(resume) if resume else Path(config.run_dir) if config.run_dir else default_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"run directory {run_dir} is a file; choose a directory path")
    if not resume:
        if is_run(run_dir):
            found = next(path.name for path in RunFiles(run_dir).markers if _holds_history(path))
            raise RunDirError(f"run_dir={str(run_dir)!r} already holds a run ({found}); continue it with "
                              f"`stalerl train --resume {run_dir}` or choose a new run_dir")
        check_writable(run_dir, "run directory")
        return run_dir, None, False
    files = RunFiles(run_dir)
    if not files.config.is_file() and not is_run(run_dir):
        raise RunDirError(f"--resume {str(run_dir)!r}: not a run directory (no {files.config.name}, logs or "
                          f"{files.checkpoints.name})")
    check_writable(files.checkpoints, "checkpoint directory")
    resume_from, damaged = ckpt.newest_intact(files.checkpoints)
    for path, problem in damaged:
        if resume_from is None:
            raise RunDirError(f"--resume {str(run_dir)!r}: checkpoint {path} is damaged ({problem}) and no "
                              "older intact checkpoint is left; start a new run")
        log.warning("stalerl: checkpoint %s is damaged (%s); resuming from %s instead", path, problem, resume_from)
    if resume_from is None:
        log.warning("stalerl: %s has no checkpoint yet; the run starts over from step 0", run_dir)
        return run_dir, None, True
    _check_resume_config(config, ckpt.checkpoint_config(resume_from), resume_from)
    return run_dir, resume_from, False


def _check_resume_config(config, saved: dict[str, Any] | None, checkpoint: Path) -> None:
    """Refuse a resumed configuration that differs from the checkpoint's beyond :data:`RESUMABLE`."""
    from stalerl.training.config import to_dict

    if saved is None:
        return
    for key, old, new in _differences(saved, to_dict(config)):
        if key in RESUMABLE or any(key.startswith(p) for p in RESUMABLE if p.endswith(".")):
            continue
        raise RunDirError(
            f"{key}={new!r}: checkpoint {checkpoint} was made with {key}={old!r}, and a resumed run keeps its "
            f"configuration (it may change only {', '.join(RESUMABLE)}); start a new run to change {key}"
        )


def _differences(old: Any, new: Any, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict) and not prefix.endswith("hparams."):
        for key in sorted(set(old) | set(new)):
            if key in old and key in new:
                yield from _differences(old[key], new[key], f"{prefix}{key}.")
            elif key in new:  # a key the checkpoint's version of stalerl did not have
                continue
            else:
                yield f"{prefix}{key}", old[key], None
        return
    if old != new:
        yield prefix.rstrip("."), old, new


def make_dir(run_dir: Path) -> None:
    """Create the (already checked) run directory, so that it can hold its lock."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"could not create the run directory {run_dir}: {io_reason(err)}") from None


def start(run_dir: Path, config, *, new: bool, restart: bool) -> None:
    """Under the lock: write ``config.yaml`` atomically, clean leftovers of interrupted writes, and
    for a restart drop the logs of the attempt that never reached a checkpoint. A new run checks
    again that no other process started a run here between :func:`prepare` and the lock."""
    from stalerl.training.config import to_dict

    if new and is_run(run_dir):
        raise RunDirError(f"run_dir={str(run_dir)!r} already holds a run (started by another process just now); "
                          "choose a new run_dir")
    clean_temporaries(run_dir)
    files = RunFiles(run_dir)
    if restart:
        for path in (*files.logs, files.summary):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(files.tensorboard, ignore_errors=True)
    atomic_write_text(files.config, yaml.safe_dump(to_dict(config), sort_keys=False), "the run's config")


def clean_temporaries(run_dir: Path) -> None:
    """Remove what interrupted writes left (the caller holds the run's lock, so no live writer
    owns them)."""
    for parent in (run_dir, RunFiles(run_dir).checkpoints):
        if not parent.is_dir():
            continue
        for pattern in TEMP_PATTERNS:
            for path in parent.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


def warn_unused_staleness(config) -> None:
    """Warn when the staleness reaches beyond the run: only the batches a step consumes are made."""
    s, m, steps = config.stale.staleness, config.optim.mini_batches, config.steps
    if s > (steps - 1) * m:
        warnings.warn(
            f"stale.staleness={s} reaches beyond the run (steps={steps} x optim.mini_batches={m} updates): every "
            f"update trains on data of the initial policy; only the {steps} generation batch(es) the run consumes "
            "are generated (a resume with more steps makes its later batches with a newer policy)", stacklevel=3)
