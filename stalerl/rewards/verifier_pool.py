"""A pool of check processes with a hard per-task deadline, a memory cap and respawn.

This module is the process mechanics of :class:`stalerl.rewards.verifier.MathVerifier`; what a
check *means* (statuses, the fast path, counts) lives there. A worker is a plain
``python verifier_pool.py`` subprocess that loads one check function by ``"module:function"`` or
``"/path/file.py:function"`` and answers tasks over its stdin/stdout as length-prefixed pickles:

    parent -> worker   (task_id, args) ... None (stop)
    worker -> parent   ("ready", pid), then ("result", task_id, ("returned", value))
                                          or ("result", task_id, ("raised", exception type name))

The parent measures each task's wall time from the moment it is sent; a worker past the deadline
is SIGKILLed and replaced, and the task's outcome is ``("timeout", None)``. A worker that dies
(segfault, OOM kill, ``os._exit``) gives ``("crashed", None)`` and is replaced. Each worker caps
its address space with ``RLIMIT_AS`` after it has imported its check, so a runaway computation
ends in ``MemoryError`` (``("raised", "MemoryError")``) instead of swapping the host.

Why not a library pool. ``pebble.ProcessPool`` (5.x) has the per-task timeout that kills and
replaces a hung worker, and an ``initializer`` could set the rlimit; ``loky`` has no per-task
timeout at all (a hung task blocks its worker). Both start workers through ``multiprocessing``:
"fork" from a trainer that already runs torch threads is unsafe, and "spawn"/"forkserver"
re-import the caller's ``__main__`` and unpickle the check by reference, which imports
``stalerl`` and therefore torch in every worker, on every respawn (seconds and hundreds of MB
each, under an address-space cap that then has to allow torch). pebble also hands tasks out
through one pipe shared by all workers under a cross-process lock, so a worker the OOM killer
ends while it holds that lock (a short window, but a real one) leaves the lock taken. A plain
subprocess per worker with its own pipe pair avoids all three, and a respawn costs a bare Python
start plus the check's imports (about half a second for math-verify); it costs the code below. So the mechanics stay here, in a module of
their own, written against nothing but the standard library.

POSIX only (``resource`` and ``select`` on pipes). Import only the standard library here: this
file is also the workers' entry point.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

__all__ = ["WorkerPool", "check_spec", "import_object"]

_HEADER = struct.Struct("<I")


# ---------------------------------------------------------------------------------------------
# Pipe protocol.
# ---------------------------------------------------------------------------------------------


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = _HEADER.pack(len(data)) + data
    view = memoryview(buf)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _recv(fd: int) -> Any:
    """Read one message; raise EOFError when the other side closed the pipe."""
    header = _read_exact(fd, _HEADER.size)
    (size,) = _HEADER.unpack(header)
    return pickle.loads(_read_exact(fd, size))


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def import_object(spec: str) -> Any:
    """Import ``"package.module:attr"`` or ``"/path/to/file.py:attr"`` and return the attribute.

    Raises ``ImportError``/``AttributeError``/``ValueError`` with the underlying cause.
    """
    if ":" not in spec:
        raise ValueError(f"expected 'module:attr' or '/path/file.py:attr', got {spec!r}")
    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise ValueError(f"expected 'module:attr' or '/path/file.py:attr', got {spec!r}")
    if mod_part.endswith(".py") or os.sep in mod_part or "/" in mod_part:
        path = os.path.abspath(os.path.expanduser(mod_part))
        if not os.path.isfile(path):
            raise ImportError(f"no such file: {path}")
        name = "_stalerl_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load a Python module from {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    else:
        module = importlib.import_module(mod_part)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_spec(fn: Callable[..., Any] | str) -> str:
    """The ``"module:function"`` / ``"/path/file.py:function"`` string a worker imports ``fn`` by."""
    if isinstance(fn, str):
        return fn
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError("_check_fn must be a module-level function or a 'module:function' string")
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise ValueError("_check_fn defined in an interactive __main__ cannot run in a worker")
        return f"{os.path.abspath(path)}:{qualname}"
    return f"{module}:{qualname}"


# ---------------------------------------------------------------------------------------------
# The worker side.
# ---------------------------------------------------------------------------------------------


def _set_memory_limit(memory_limit_mb: int | None) -> None:
    if not memory_limit_mb:
        return
    import resource

    limit = int(memory_limit_mb) * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the parent dies (best effort).

    PR_SET_PDEATHSIG fires when the *thread* that started the worker exits, so the parent only
    asks for it when it starts workers from its main thread (``STALERL_VERIFY_PDEATHSIG=1``).
    """
    if not sys.platform.startswith("linux") or os.environ.get("STALERL_VERIFY_PDEATHSIG") != "1":
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker (``python verifier_pool.py <memory_mb> <inner_timeout> <check> <warm_up>``).

    The check is called as ``check(*args, inner_timeout)``. With ``warm_up`` = ``"1"`` it is
    called once on ``("1", "1")`` before the memory limit and "ready", so that the first timed
    task does not pay for lazy imports.
    """
    # The protocol owns the original stdout; anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    in_fd = sys.stdin.fileno()

    memory_limit_mb = int(argv[0])
    inner_timeout = int(argv[1])
    check = import_object(argv[2])
    _die_with_parent()
    if argv[3] == "1":
        try:
            check("1", "1", inner_timeout)
        except Exception:
            pass
    _set_memory_limit(memory_limit_mb)
    _send(out_fd, ("ready", os.getpid()))

    while True:
        try:
            msg = _recv(in_fd)
        except EOFError:
            return 0
        if msg is None:
            return 0
        task_id, args = msg
        try:
            outcome: tuple[str, Any] = ("returned", check(*args, inner_timeout))
        except BaseException as exc:  # noqa: BLE001  (a check's own timeout may be a BaseException)
            outcome = ("raised", type(exc).__name__)
        try:
            _send(out_fd, ("result", task_id, outcome))
        except (pickle.PicklingError, TypeError, AttributeError):
            _send(out_fd, ("result", task_id, ("raised", "PicklingError")))
        except (BrokenPipeError, OSError):
            return 0


# ---------------------------------------------------------------------------------------------
# The parent side.
# ---------------------------------------------------------------------------------------------


class _Worker:
    """One worker subprocess and its state (``starting``, ``idle``, ``busy`` or ``dead``)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            bufsize=0,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd = self.proc.stdin.fileno()
        self.out_fd = self.proc.stdout.fileno()
        self.state = "starting"
        self.started_at = time.monotonic()
        self.task: int | None = None
        self.deadline = 0.0

    def send_task(self, task_id: int, args: tuple, timeout_s: float) -> bool:
        try:
            _send(self.in_fd, (task_id, args))
        except (BrokenPipeError, OSError):
            return False
        self.state = "busy"
        self.task = task_id
        self.deadline = time.monotonic() + timeout_s
        return True

    def kill(self) -> None:
        self.state = "dead"
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def shutdown(self) -> None:
        if self.state != "dead":
            try:
                _send(self.in_fd, None)
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class WorkerPool:
    """``num_workers`` check processes; :meth:`run` spreads tasks over them with a deadline each.

    Args:
        check: ``"module:function"`` or ``"/path/file.py:function"``, imported by each worker.
        num_workers: worker processes (>= 1).
        timeout_s: wall-clock deadline of one task, from the moment it is sent to a worker.
        inner_timeout_s: the last argument every check call receives (the check's own budget).
        memory_limit_mb: ``RLIMIT_AS`` of each worker in MiB, 0 for none.
        startup_timeout_s: how long a worker may take to become ready.
        env: the workers' environment.
        warm_up: call the check once on ``("1", "1")`` in each worker before it is ready.

    Raises:
        RuntimeError: a worker did not become ready (the caller closes nothing: the pool is
            closed before the error propagates).
    """

    def __init__(
        self,
        check: str,
        *,
        num_workers: int,
        timeout_s: float,
        inner_timeout_s: int,
        memory_limit_mb: int,
        startup_timeout_s: float,
        env: dict[str, str],
        warm_up: bool = False,
    ) -> None:
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.cmd = [
            sys.executable,
            os.path.abspath(__file__),
            str(int(memory_limit_mb)),
            str(int(inner_timeout_s)),
            check,
            "1" if warm_up else "0",
        ]
        self._env = env
        #: Workers replaced after a timeout or a crash, over the pool's lifetime.
        self.respawns = 0
        self.workers: list[_Worker] = []
        try:
            for _ in range(int(num_workers)):
                self.workers.append(self._new_worker())
            self._wait_started()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop all workers (safe to call twice)."""
        for w in self.workers:
            w.shutdown()
        self.workers = []

    def run(self, tasks: Sequence[tuple]) -> list[tuple[str, Any]]:
        """Run ``check(*task, inner_timeout_s)`` for every task, in parallel over the workers.

        Returns:
            One outcome per task, in order: ``("returned", value)``, ``("raised", type name)``,
            ``("timeout", None)`` (killed at the deadline) or ``("crashed", None)`` (the worker
            died); the worker of the last two is replaced.

        Raises:
            RuntimeError: a replacement worker did not become ready.
        """
        outcomes: list[tuple[str, Any] | None] = [None] * len(tasks)
        queue: deque[int] = deque(range(len(tasks)))
        while True:
            # Hand out work to idle workers.
            for w in list(self.workers):
                while w.state == "idle" and queue:
                    i = queue.popleft()
                    if not w.send_task(i, tuple(tasks[i]), self.timeout_s):
                        queue.appendleft(i)
                        self._respawn(w)
                        break
            active = [w for w in self.workers if w.state in ("busy", "starting")]
            if not any(w.state == "busy" for w in active) and not queue:
                return outcomes  # type: ignore[return-value]
            now = time.monotonic()
            wait_s = 0.5
            for w in active:
                if w.state == "busy":
                    wait_s = min(wait_s, max(0.0, w.deadline - now))
                elif now - w.started_at > self.startup_timeout_s:
                    raise self._startup_failed(w, f"not ready after {self.startup_timeout_s:.0f} s")
            readable, _, _ = select.select([w.out_fd for w in active], [], [], wait_s)
            for w in active:
                if w.out_fd in readable:
                    self._handle_message(w, outcomes)
            now = time.monotonic()
            for w in list(self.workers):
                if w.state == "busy" and now >= w.deadline:
                    outcomes[w.task] = ("timeout", None)
                    self._respawn(w)

    # -- internals ------------------------------------------------------------------------------

    def _startup_failed(self, w: _Worker, why: str) -> RuntimeError:
        rc = w.proc.poll()
        return RuntimeError(
            f"math-verify worker failed to start ({why}; exit code {rc}). Command: "
            f"{' '.join(self.cmd)!s}. Is math-verify installed in {sys.executable}? "
            "The worker's stderr above has the details."
        )

    def _handle_message(self, w: _Worker, outcomes: list) -> None:
        """Read one message from ``w``; on EOF mark its task as crashed and respawn it."""
        try:
            msg = _recv(w.out_fd)
        except Exception:  # EOF, a broken pipe, or a reply this process cannot unpickle
            if w.state == "starting":
                err = self._startup_failed(w, "exited before it was ready")
                w.kill()
                raise err from None
            if w.state == "busy" and w.task is not None:
                outcomes[w.task] = ("crashed", None)
            self._respawn(w)
            return
        if msg[0] == "ready":
            w.state = "idle"
        elif msg[0] == "result" and w.state == "busy" and msg[1] == w.task:
            outcomes[w.task] = msg[2]
            w.state = "idle"
            w.task = None

    def _new_worker(self) -> _Worker:
        env = dict(self._env)
        main = threading.current_thread() is threading.main_thread()
        env["STALERL_VERIFY_PDEATHSIG"] = "1" if main else "0"
        return _Worker(self.cmd, env)

    def _respawn(self, w: _Worker) -> None:
        w.kill()
        idx = self.workers.index(w)
        self.workers[idx] = self._new_worker()
        self.respawns += 1

    def _wait_started(self) -> None:
        while any(w.state == "starting" for w in self.workers):
            starting = [w for w in self.workers if w.state == "starting"]
            now = time.monotonic()
            for w in starting:
                if now - w.started_at > self.startup_timeout_s:
                    raise self._startup_failed(w, f"not ready after {self.startup_timeout_s:.0f} s")
            readable, _, _ = select.select([w.out_fd for w in starting], [], [], 0.5)
            for w in starting:
                if w.out_fd in readable:
                    self._handle_message(w, [])


if __name__ == "__main__":
    # Worker mode. Drop this file's own directory from sys.path so that sibling modules
    # (boxed.py, reward.py, ...) cannot shadow anything.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _here:
        sys.path.pop(0)
    sys.exit(_worker_main(sys.argv[1:]))
