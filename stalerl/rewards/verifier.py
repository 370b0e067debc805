"""Answer checking with ``math-verify``, isolated in worker processes.

``math_verify.parse`` and ``math_verify.verify`` bound their own run time with
``signal.alarm``: that only works on the main thread of a process (off it they raise), and with
the timeouts disabled some inputs can run forever or exhaust memory. :class:`MathVerifier`
therefore runs every check in a pool of separate worker processes, where the check *is* on the
main thread, and adds a hard limit on top:

* the parent measures each check's wall time and kills a worker that exceeds ``timeout_s``
  (the check scores ``correct=False, status="timeout"``; a fresh worker replaces the old one and
  the batch goes on);
* each worker caps its address space with ``RLIMIT_AS`` (``memory_limit_mb``), so a runaway
  sympy expression ends in a ``MemoryError`` (``status="error"``) instead of swapping the host;
* a worker that crashes (segfault, OOM kill, ...) scores its check ``status="error"`` and is
  replaced.

The workers are plain ``python verifier.py`` subprocesses talking length-prefixed pickles over
their stdin/stdout. Unlike ``multiprocessing`` "spawn" they do not re-import the caller's
``__main__`` script (so a training script without an ``if __name__ == "__main__"`` guard is
fine) and they do not import ``stalerl`` or ``torch``: a worker starts in about half a second and
uses some 100 MB. For that reason this module imports only the standard library at top level.
A check is single-threaded Python (sympy), so each worker runs on one OS thread, with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set to 1 in its environment
(:func:`stalerl.runtime.single_thread_env`) in case a user check function loads a numeric
library; ``tests/test_rewards.py::test_verifier_worker_runs_one_thread_without_torch`` checks
both inside a worker.

POSIX only (``resource`` and ``select`` on pipes).
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["MathVerifier", "VerifyResult", "STATUSES", "wrap_for_parse", "math_verify_check", "integer_verdict"]

#: The possible values of :attr:`VerifyResult.status`.
STATUSES = ("ok", "no_answer", "timeout", "error")

_HEADER = struct.Struct("<I")


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one predicted answer against its gold answer.

    Attributes:
        correct: the prediction is mathematically equivalent to the gold answer.
        extracted: math-verify found an answer in the prediction (``False`` for ``None``,
            empty or unparsable predictions).
        status: ``"ok"`` (the check ran to the end; ``correct`` says the verdict),
            ``"no_answer"`` (nothing to check: ``None``/empty prediction, or math-verify
            extracted nothing from it), ``"timeout"`` (the check ran past the time limit) or
            ``"error"`` (the worker crashed, ran out of memory, or the gold answer itself could
            not be parsed). Anything but ``"ok"`` has ``correct=False``.
    """

    correct: bool
    extracted: bool
    status: str


# ---------------------------------------------------------------------------------------------
# The check itself (runs inside a worker).
# ---------------------------------------------------------------------------------------------

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


_INTEGER = re.compile(r"[+-]?[0-9]{1,15}")


def integer_verdict(gold: str, pred: str) -> bool | None:
    """math-verify's verdict on two plain integer literals, without a worker: equal exactly when
    their values are (``007`` = ``7``, ``+5`` = ``5``, ``-0`` = ``0``, ``12`` != ``13``, as
    math-verify decides; ``tests/test_rewards.py::test_integer_fast_path_agrees_with_math_verify``).
    None when either is anything else (decimals, LaTeX, more than 15 digits): math-verify decides.
    The testbed's answers are integers, so most of its checks end here."""
    g, p = gold.strip(), pred.strip()
    if _INTEGER.fullmatch(g) and _INTEGER.fullmatch(p):
        return int(g) == int(p)
    return None


def wrap_for_parse(text: str) -> str:
    """Prepare an answer string for ``math_verify.parse``.

    ``math_verify.parse`` with its default extraction config only finds LaTeX inside math
    delimiters or a ``\\boxed{}``: a bare ``\\frac12`` gives nothing, a bare ``0.5`` is parsed as
    a plain expression. So a string that has no ``\\boxed``/``\\fbox``, no unescaped ``$`` and no
    ``\\(``/``\\[`` is wrapped as ``\\boxed{...}``; strings that already carry delimiters (a
    whole completion, ``$x^2$``) are passed through unchanged, and math-verify picks the answer
    out of them (``\\boxed`` has priority).

    Args:
        text: a gold answer, an extracted answer, or a completion.

    Returns:
        The stripped string, wrapped in ``\\boxed{}`` when it had no delimiters.
    """
    s = text.strip()
    if (
        "\\boxed" in s
        or "\\fbox" in s
        or "\\(" in s
        or "\\[" in s
        or _UNESCAPED_DOLLAR.search(s) is not None
    ):
        return s
    return "\\boxed{" + s + "}"


def math_verify_check(gold: str, pred: str, timeout_s: int) -> tuple[bool, bool, str]:
    """Check ``pred`` against ``gold`` with math-verify; meant to run on a worker's main thread.

    Both strings go through :func:`wrap_for_parse` and ``math_verify.parse``; then
    ``math_verify.verify(gold, pred)`` (gold first: verify is not symmetric). math-verify's own
    ``signal.alarm`` timeouts are set to ``timeout_s`` seconds.

    Args:
        gold: the reference answer.
        pred: the predicted answer (or a completion containing it).
        timeout_s: math-verify's per-call timeout in whole seconds (at least 1).

    Returns:
        ``(correct, extracted, status)`` with status as in :class:`VerifyResult`.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timeout_s = max(1, int(timeout_s))

    def _parse(text: str) -> list:
        try:
            return parse(wrap_for_parse(text), parsing_timeout=timeout_s, raise_on_error=True)
        except TimeoutException:
            raise
        except Exception:  # unparsable LaTeX: nothing extracted
            return []

    try:
        p = _parse(pred)
        if not p:
            return (False, False, "no_answer")
        g = _parse(gold)
        if not g:
            return (False, True, "error")
        try:
            ok = verify(g, p, timeout_seconds=timeout_s, raise_on_error=True)
        except TimeoutException:
            raise
        except Exception:
            # One candidate pair failed; let math-verify score the remaining pairs as usual.
            ok = verify(g, p, timeout_seconds=timeout_s, raise_on_error=False)
        return (bool(ok), True, "ok")
    except TimeoutException:
        return (False, False, "timeout")


# ---------------------------------------------------------------------------------------------
# Pipe protocol and worker entry point.
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


def _import_object(spec: str) -> Any:
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
    """Entry point of a worker process (``python verifier.py <memory_mb> <inner_timeout> [check]``)."""
    # The protocol owns the original stdout; anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    in_fd = sys.stdin.fileno()

    memory_limit_mb = int(argv[0])
    inner_timeout = int(argv[1])
    check_spec = argv[2] if len(argv) > 2 and argv[2] else None

    _die_with_parent()
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    if check_spec is None:
        import math_verify  # noqa: F401  (import before the memory limit, and before "ready")

        check: Callable[..., Any] = math_verify_check
        # Warm up sympy / latex2sympy so the first timed check does not pay for lazy imports.
        try:
            math_verify_check("1", "1", inner_timeout)
        except Exception:
            pass
    else:
        check = _import_object(check_spec)
    _set_memory_limit(memory_limit_mb)
    _send(out_fd, ("ready", os.getpid()))

    while True:
        try:
            msg = _recv(in_fd)
        except EOFError:
            return 0
        if msg is None:
            return 0
        task_id, gold, pred = msg
        try:
            res = check(gold, pred, inner_timeout)
            if isinstance(res, VerifyResult) or hasattr(res, "status"):
                res = (bool(res.correct), bool(res.extracted), str(res.status))
            else:
                res = (bool(res[0]), bool(res[1]), str(res[2]))
        except MemoryError:
            res = (False, False, "error")
        except BaseException as exc:  # noqa: BLE001  (a TimeoutException is a BaseException)
            status = "timeout" if type(exc).__name__ == "TimeoutException" else "error"
            res = (False, False, status)
        try:
            _send(out_fd, ("result", task_id, res))
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

    def send_task(self, task_id: int, gold: str, pred: str, timeout_s: float) -> bool:
        try:
            _send(self.in_fd, (task_id, gold, pred))
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


def _check_spec(check_fn: Callable[..., Any] | str | None) -> str:
    if check_fn is None:
        return ""
    if isinstance(check_fn, str):
        return check_fn
    module = getattr(check_fn, "__module__", None)
    qualname = getattr(check_fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError("_check_fn must be a module-level function or a 'module:function' string")
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if not path:
            raise ValueError("_check_fn defined in an interactive __main__ cannot run in a worker")
        return f"{os.path.abspath(path)}:{qualname}"
    return f"{module}:{qualname}"


class MathVerifier:
    """A pool of math-verify worker processes with a hard per-check timeout and memory cap.

    Use it as a context manager (or call :meth:`close`)::

        with MathVerifier(timeout_s=5) as v:
            results = v.verify_batch(["1/2", "11"], ["\\\\frac{1}{2}", "12"])
        [r.correct for r in results]   # [True, False]

    Args:
        num_workers: worker processes; default ``min(2, os.cpu_count())``.
        timeout_s: wall-clock limit of one check, measured by the parent from the moment the
            check is sent to a worker. A worker past it is killed and replaced and the check
            scores ``status="timeout"``. math-verify's own signal timeouts inside the worker are
            set a little lower (``max(1, int(0.8 * timeout_s))`` seconds) so that most slow
            checks end without a respawn.
        memory_limit_mb: ``RLIMIT_AS`` (address-space cap) of each worker, in MiB, set after
            the worker has imported math-verify; ``None`` or 0 disables it. A check that needs
            more ends with ``MemoryError`` and scores ``status="error"``.
        startup_timeout_s: how long a worker may take to start (import math-verify) before the
            verifier gives up with ``RuntimeError``.
        _check_fn: testing hook. A module-level function or a ``"module:function"`` /
            ``"/path/file.py:function"`` string that replaces :func:`math_verify_check` in the
            workers; called as ``fn(gold, pred, inner_timeout_s)`` and returning
            ``(correct, extracted, status)``.

    Notes:
        **Fast path.** When ``pred.strip() == gold.strip()`` the check is answered in the
        parent as correct (``status="ok"``) without a worker. **No answer.** ``None`` or an
        all-whitespace prediction is answered ``status="no_answer"`` without a worker.
        Predictions are otherwise passed through :func:`wrap_for_parse`: an extracted answer
        such as ``\\frac{1}{2}`` is checked as ``\\boxed{\\frac{1}{2}}``, a full completion is
        searched by math-verify.

        The verifier is thread-safe (batches are serialised by a lock) but not fork-safe: create
        it in the process that uses it.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 1024,
        *,
        startup_timeout_s: float = 120.0,
        _check_fn: Callable[..., Any] | str | None = None,
    ) -> None:
        if num_workers is None:
            num_workers = min(2, os.cpu_count() or 1)
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s or timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if memory_limit_mb is not None and memory_limit_mb < 0:
            raise ValueError(f"memory_limit_mb must be >= 0 or None, got {memory_limit_mb}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = int(memory_limit_mb or 0)
        self.startup_timeout_s = float(startup_timeout_s)
        self._integers_here = _check_fn is None  # math-verify's verdict on integers needs no worker
        inner = max(1, int(0.8 * self.timeout_s))
        self._cmd = [
            sys.executable,
            os.path.abspath(__file__),
            str(self.memory_limit_mb),
            str(inner),
            _check_spec(_check_fn),
        ]
        from stalerl.runtime import single_thread_env

        env = single_thread_env()  # a check needs one thread; no numeric library may start a pool
        # Let a user check function resolve the same modules as this process.
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._env = env
        self._lock = threading.Lock()
        self._closed = False
        #: Counters over the verifier's lifetime: checks per status, respawned workers.
        self.stats: dict[str, int] = {s: 0 for s in STATUSES}
        self.stats["respawns"] = 0
        self.stats["fast_path"] = 0
        self._workers: list[_Worker] = []
        try:
            for _ in range(self.num_workers):
                self._workers.append(self._new_worker())
            self._wait_started()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers. Safe to call twice; the verifier cannot be used afterwards."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for w in getattr(self, "_workers", []):
            w.shutdown()
        self._workers = []

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- internals ------------------------------------------------------------------------------

    def _startup_failed(self, w: _Worker, why: str) -> RuntimeError:
        rc = w.proc.poll()
        return RuntimeError(
            f"math-verify worker failed to start ({why}; exit code {rc}). Command: "
            f"{' '.join(self._cmd)!s}. Is math-verify installed in {sys.executable}? "
            "The worker's stderr above has the details."
        )

    def _handle_message(self, w: _Worker, results: list) -> None:
        """Read one message from ``w``; on EOF mark its task as an error and respawn it."""
        try:
            msg = _recv(w.out_fd)
        except (EOFError, OSError, pickle.UnpicklingError):
            if w.state == "starting":
                err = self._startup_failed(w, "exited before it was ready")
                w.kill()
                raise err from None
            if w.state == "busy" and w.task is not None:
                results[w.task] = VerifyResult(False, False, "error")
            self._respawn(w)
            return
        if msg[0] == "ready":
            w.state = "idle"
        elif msg[0] == "result" and w.state == "busy" and msg[1] == w.task:
            correct, extracted, status = msg[2]
            if status not in STATUSES:
                status = "error"
            if status != "ok":
                correct = False
            results[w.task] = VerifyResult(bool(correct), bool(extracted), status)
            w.state = "idle"
            w.task = None

    def _new_worker(self) -> _Worker:
        env = dict(self._env)
        main = threading.current_thread() is threading.main_thread()
        env["STALERL_VERIFY_PDEATHSIG"] = "1" if main else "0"
        return _Worker(self._cmd, env)

    def _respawn(self, w: _Worker) -> None:
        w.kill()
        idx = self._workers.index(w)
        self._workers[idx] = self._new_worker()
        self.stats["respawns"] += 1

    def _wait_started(self) -> None:
        while any(w.state == "starting" for w in self._workers):
            starting = [w for w in self._workers if w.state == "starting"]
            now = time.monotonic()
            for w in starting:
                if now - w.started_at > self.startup_timeout_s:
                    raise self._startup_failed(w, f"not ready after {self.startup_timeout_s:.0f} s")
            readable, _, _ = select.select([w.out_fd for w in starting], [], [], 0.5)
            for w in starting:
                if w.out_fd in readable:
                    self._handle_message(w, [])

    # -- public API -----------------------------------------------------------------------------

    def verify(self, gold: str, pred: str | None) -> VerifyResult:
        """Check one prediction; see :meth:`verify_batch`."""
        return self.verify_batch([gold], [pred])[0]

    def verify_batch(self, golds: Sequence[str], preds: Sequence[str | None]) -> list[VerifyResult]:
        """Check ``preds[i]`` against ``golds[i]`` for every ``i``, in parallel over the workers.

        A check that runs past ``timeout_s`` or crashes its worker scores ``correct=False`` with
        status ``"timeout"`` / ``"error"``; the other checks of the batch are unaffected.

        Args:
            golds: reference answers (strings; numbers are converted with ``str``).
            preds: predicted answers, usually the content of the last ``\\boxed{}`` (see
                :func:`stalerl.rewards.last_boxed`), or ``None`` when nothing was extracted.
                A string with math delimiters (a whole completion) is also accepted.

        Returns:
            One :class:`VerifyResult` per item, in order.

        Raises:
            ValueError: when the two lists differ in length.
            RuntimeError: when the verifier is closed or a worker cannot be (re)started.
        """
        if len(golds) != len(preds):
            raise ValueError(f"golds and preds differ in length: {len(golds)} != {len(preds)}")
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        results: list[VerifyResult | None] = [None] * len(golds)
        queue: deque[int] = deque()
        n_fast = 0
        for i, (g, p) in enumerate(zip(golds, preds, strict=True)):
            g = "" if g is None else str(g)
            if p is None or not str(p).strip():
                results[i] = VerifyResult(False, False, "no_answer")
            elif str(p).strip() == g.strip():
                results[i] = VerifyResult(True, True, "ok")
                n_fast += 1
            elif self._integers_here and (same := integer_verdict(g, str(p))) is not None:
                results[i] = VerifyResult(same, True, "ok")
                n_fast += 1
            else:
                queue.append(i)
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            self._run(queue, [str(g) for g in golds], [str(p) for p in preds], results)
            self.stats["fast_path"] += n_fast
            for r in results:
                assert r is not None
                self.stats[r.status] += 1
        return results  # type: ignore[return-value]

    def _run(self, queue: deque, golds: list[str], preds: list[str], results: list) -> None:
        while True:
            # Hand out work to idle workers.
            for w in list(self._workers):
                while w.state == "idle" and queue:
                    i = queue.popleft()
                    if not w.send_task(i, golds[i], preds[i], self.timeout_s):
                        queue.appendleft(i)
                        self._respawn(w)
                        break
            active = [w for w in self._workers if w.state in ("busy", "starting")]
            if not any(w.state == "busy" for w in active) and not queue:
                return
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
                    self._handle_message(w, results)
            now = time.monotonic()
            for w in list(self._workers):
                if w.state == "busy" and now >= w.deadline:
                    results[w.task] = VerifyResult(False, False, "timeout")
                    self._respawn(w)


if __name__ == "__main__":
    # Worker mode. Drop this file's own directory from sys.path so that sibling modules
    # (boxed.py, reward.py, ...) cannot shadow anything.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == _here:
        sys.path.pop(0)
    sys.exit(_worker_main(sys.argv[1:]))
