"""Threads per process, chosen once at start from the cores this process may run on.

torch's default is one intra-op thread per core of the machine, whatever else runs there, and
its OpenMP threads wait for each other at the end of every parallel operation by spinning. When
another process holds one of those cores, the spinning threads burn the time the working thread
needs: on 2 cores, beside one busy process, a short testbed run took 6x as long as alone
(docs/PERFORMANCE.md, "Threads"). So every stalerl process sets its thread count itself::

    threads = runtime.threads                     when set (the user's choice, per process)
            = split_cores(cores, processes)[i]    otherwise
    cores   = runtime.cores                       when set
            = $OMP_NUM_THREADS                    when set in the environment
            = len(os.sched_getaffinity(0))        otherwise (the cores this process may run on)

``processes`` counts the stalerl torch processes that run at the same time on those cores: 1 for
a sync run, 2 for an async run (trainer, rollout worker; the trainer, index 0, gets the odd core).
``$OMP_NUM_THREADS`` is read as the cores the run may use: a scheduler that sets it to the cores
it granted (SLURM's ``--cpus-per-task``) gets a run that stays inside them, and the common
``OMP_NUM_THREADS=1`` gives every process one thread. ``stalerl reproduce --jobs J`` gives each
of its J parallel runs ``runtime.cores = cores // J``. The verifier's worker processes do not
import torch and get one thread each (:func:`single_thread_env`); they work while the process
that called them waits, so they are not counted in ``processes``.

This module imports only the standard library at top level (torch lazily in :func:`set_threads`),
so that every layer of the package, and the verifier's torch-free workers, can use it.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Mapping, MutableMapping

__all__ = [
    "THREAD_ENV_VARS",
    "available_cores",
    "choose_threads",
    "run_cores",
    "env_threads",
    "passive_waits",
    "set_threads",
    "single_thread_env",
    "split_cores",
]

logger = logging.getLogger(__name__)

#: Environment variables that size the thread pools of OpenMP, MKL and OpenBLAS in a new process.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The number of cores this process may run on: its CPU affinity mask (``taskset``, cgroup
    cpusets), or ``os.cpu_count()`` where the platform has no affinity call."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def env_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """``$OMP_NUM_THREADS`` as a positive integer, or None when it is unset or empty.

    OpenMP allows a list for nested levels (``"4,2"``); the first entry is the outer level's.
    A value that is not a positive integer is ignored with a warning.
    """
    raw = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    first = raw.split(",")[0].strip()
    if first.isdigit() and int(first) >= 1:
        return int(first)
    warnings.warn(f"OMP_NUM_THREADS={raw!r} is not a positive integer; choosing the threads from the "
                  "free cores instead", stacklevel=2)
    return None


def split_cores(cores: int, parts: int) -> list[int]:
    """``cores`` divided among ``parts`` processes, at least one each; the first ones get the
    remainder: ``split_cores(3, 2) == [2, 1]``, ``split_cores(2, 4) == [1, 1, 1, 1]``."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(max(1, int(cores)), parts)
    return [max(1, base + (1 if i < extra else 0)) for i in range(parts)]


def run_cores(cores: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The cores a run may use: ``cores`` (``runtime.cores``) when given, else
    ``$OMP_NUM_THREADS`` when set, else :func:`available_cores`."""
    if cores is not None:
        return max(1, int(cores))
    from_env = env_threads(environ)
    return from_env if from_env is not None else available_cores()


def choose_threads(*, processes: int = 1, index: int = 0, threads: int | None = None,
                   cores: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Intra-op threads of process ``index`` out of ``processes`` sharing the run's cores (see the
    module docstring).

    Args:
        processes: stalerl torch processes running at the same time on the run's cores.
        index: which of them this is (0: the trainer, 1: the async rollout worker).
        threads: the user's per-process choice (``runtime.threads``); wins over everything.
        cores: the cores the run may use (``runtime.cores``); default :func:`run_cores`.
        environ: the environment to read ``OMP_NUM_THREADS`` from; default ``os.environ``.

    Returns:
        A thread count >= 1.
    """
    if not 0 <= index < processes:
        raise ValueError(f"index must lie in [0, {processes}), got {index}")
    if threads is not None:
        return max(1, int(threads))
    return split_cores(run_cores(cores, environ), processes)[index]


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (and, once per process, its inter-op threads) to ``threads``.

    torch allows the inter-op pool to be sized only before it starts; later calls leave it as it
    is (it runs only ``torch.jit.fork`` work, none of stalerl's). Returns ``threads``.
    """
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already set in this process, or the pool has started: it keeps its size
    logger.info("torch threads: %d intra-op (%d cores available)", threads, available_cores())
    return threads


def single_thread_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) for a child process that computes on one
    thread: every variable of :data:`THREAD_ENV_VARS` set to ``1``."""
    env = dict(os.environ if environ is None else environ)
    env.update({name: "1" for name in THREAD_ENV_VARS})
    return env


def passive_waits(environ: MutableMapping[str, str] | None = None) -> bool:
    """Have OpenMP threads sleep as soon as they wait (``OMP_WAIT_POLICY=PASSIVE``), unless the
    user chose a wait (``OMP_WAIT_POLICY`` or libgomp's ``GOMP_SPINCOUNT`` already set).

    By default libgomp (torch's OpenMP on Linux) spins about 3 ms before a waiting thread sleeps,
    which on a shared core takes the time slice of the thread being waited for. The OpenMP
    runtime reads the variable once, when it loads (``import torch``), so ``stalerl/__init__.py``
    calls this before importing torch; child processes inherit it. Intel OpenMP reads the same
    variable (as ``KMP_BLOCKTIME=0``).

    Args:
        environ: the environment to change; default ``os.environ``.

    Returns:
        Whether the variable was set.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
