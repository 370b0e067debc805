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

This module is the policy: what a check runs (:func:`math_verify_check`), what its outcome
scores (statuses, the fast path) and the counts. The process mechanics (the pipe protocol,
deadlines, the memory cap, respawn) are :mod:`stalerl.rewards.verifier_pool`, whose docstring
also says why they are not handed to ``pebble`` or ``loky``. The workers are plain
``python verifier_pool.py`` subprocesses that load this file by path for
:func:`math_verify_check`, talking length-prefixed pickles over their stdin/stdout. Unlike ``multiprocessing`` "spawn" they do not re-import the caller's
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

import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from stalerl.rewards.verifier_pool import WorkerPool

__all__ = ["MathVerifier", "VerifyResult", "STATUSES", "wrap_for_parse", "math_verify_check", "integer_verdict"]

#: The possible values of :attr:`VerifyResult.status`.
STATUSES = ("ok", "no_answer", "timeout", "error")


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
    import logging

    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    logging.getLogger("math_verify").setLevel(logging.ERROR)
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
        # Imported here, not at the top: a worker loads this file by path for its check and
        # must not import the stalerl package (and with it torch).
        from stalerl.rewards.verifier_pool import WorkerPool, check_spec
        self._integers_here = _check_fn is None  # math-verify's verdict on integers needs no worker
        from stalerl.runtime import single_thread_env

        env = single_thread_env()  # a check needs one thread; no numeric library may start a pool
        # Let a user check function resolve the same modules as this process.
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._lock = threading.Lock()
        self._closed = False
        #: Counters over the verifier's lifetime: checks per status, respawned workers.
        self.stats: dict[str, int] = {s: 0 for s in STATUSES}
        self.stats["respawns"] = 0
        self.stats["fast_path"] = 0
        self._pool: WorkerPool | None = None
        self._pool = WorkerPool(
            check_spec(_check_fn) if _check_fn is not None else f"{os.path.abspath(__file__)}:math_verify_check",
            num_workers=self.num_workers,
            timeout_s=self.timeout_s,
            inner_timeout_s=max(1, int(0.8 * self.timeout_s)),
            memory_limit_mb=self.memory_limit_mb,
            startup_timeout_s=self.startup_timeout_s,
            env=env,
            warm_up=_check_fn is None,  # so the first timed check does not pay for sympy's imports
        )

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
        if getattr(self, "_pool", None) is not None:
            self._pool.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

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
        to_check: list[int] = []
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
                to_check.append(i)
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            outcomes = self._pool.run([(str(golds[i]), str(preds[i])) for i in to_check])
            for i, outcome in zip(to_check, outcomes, strict=True):
                results[i] = _result_of(outcome)
            self.stats["respawns"] = self._pool.respawns
            self.stats["fast_path"] += n_fast
            for r in results:
                assert r is not None
                self.stats[r.status] += 1
        return results  # type: ignore[return-value]


def _result_of(outcome: tuple[str, Any]) -> VerifyResult:
    """Score one worker outcome (see :meth:`stalerl.rewards.verifier_pool.WorkerPool.run`).

    A check past the deadline is a ``"timeout"``, and so is math-verify's own
    ``TimeoutException`` escaping the check; a crashed worker, a ``MemoryError`` under the
    address-space cap, any other exception or a malformed reply is an ``"error"``. Anything but
    ``"ok"`` scores ``correct=False``.
    """
    kind, value = outcome
    if kind == "timeout" or (kind == "raised" and value == "TimeoutException"):
        return VerifyResult(False, False, "timeout")
    if kind != "returned":
        return VerifyResult(False, False, "error")
    try:
        correct, extracted, status = bool(value[0]), bool(value[1]), str(value[2])
    except (TypeError, IndexError, KeyError):
        return VerifyResult(False, False, "error")
    if status not in STATUSES:
        status = "error"
    return VerifyResult(correct and status == "ok", extracted, status)
