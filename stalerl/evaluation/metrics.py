"""Evaluation metrics over n samples per problem: pass@k, avg@n, maj@n.

* pass@k is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which ``c`` are
  correct, ``pass@k = 1 - C(n-c, k) / C(n, k)``, computed stably as
  ``1 - prod(1 - k / arange(n-c+1, n+1))`` (1.0 when ``n - c < k``), averaged over problems.
* avg@n is the mean correctness over the n samples (the M2PO protocol's "pass@1 (avg@16)" for
  AIME, avg@4 elsewhere), averaged over problems.
* maj@n scores a problem correct when the most frequent extracted answer among its n samples
  is correct.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "pass_at_k",
    "pass_at_k_array",
    "avg_at_n",
    "majority_vote",
    "maj_at_n",
    "default_ks",
    "summarize",
]


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples with ``c`` correct.

    ``1 - C(n-c, k) / C(n, k)``, the probability that at least one of ``k`` samples drawn
    without replacement from the ``n`` is correct; computed as
    ``1 - prod(1 - k / arange(n-c+1, n+1))`` and 1.0 when ``n - c < k``.

    Args:
        n: number of samples (>= 1).
        c: number of correct samples (0 <= c <= n).
        k: the k of pass@k (1 <= k <= n).

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: for negative or non-integer arguments, ``k == 0``, ``k > n`` or ``c > n``.

    Example:
        >>> pass_at_k(4, 1, 1)
        0.25
        >>> pass_at_k(4, 1, 4)
        1.0
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if k == 0:
        raise ValueError("k must be >= 1")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of samples n={n}")
    if c > n:
        raise ValueError(f"c={c} correct samples is more than n={n} samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_array(n: int | Sequence[int] | np.ndarray, c_array: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Vectorised :func:`pass_at_k` over problems.

    Args:
        n: samples per problem, a scalar (the usual case) or one value per problem.
        c_array: correct samples per problem.
        k: the k of pass@k.

    Returns:
        A float64 array of the shape of ``c_array`` with each problem's pass@k (average it for
        the benchmark's pass@k). Values equal :func:`pass_at_k` exactly.

    Raises:
        ValueError: as :func:`pass_at_k`, for any element.
    """
    c = np.asarray(c_array)
    if c.size and not np.issubdtype(c.dtype, np.integer):
        if np.issubdtype(c.dtype, np.bool_) or not np.all(np.equal(np.mod(c, 1), 0)):
            raise ValueError("c_array must hold integer counts")
        c = c.astype(np.int64)
    n_arr = np.asarray(n)
    if n_arr.ndim == 0:
        nn = _check_int("n", n_arr.item() if np.issubdtype(n_arr.dtype, np.integer) else n)
        k = _check_int("k", k)
        if k == 0 or k > nn:
            raise ValueError(f"k must satisfy 1 <= k <= n, got k={k}, n={nn}")
        if c.size and (c.min() < 0 or c.max() > nn):
            raise ValueError(f"every c must satisfy 0 <= c <= n={nn}")
        table = np.array([pass_at_k(nn, ci, k) for ci in range(nn + 1)], dtype=np.float64)
        return table[c.astype(np.int64)] if c.size else np.zeros(c.shape, dtype=np.float64)
    n_b, c_b = np.broadcast_arrays(n_arr, c)
    out = np.empty(c_b.shape, dtype=np.float64)
    for idx in np.ndindex(c_b.shape):
        out[idx] = pass_at_k(int(n_b[idx]), int(c_b[idx]), k)
    return out


def _as_rows(correct: Any) -> list[np.ndarray]:
    """Per-problem boolean arrays from a 2-D array or a (possibly ragged) list of lists."""
    if isinstance(correct, np.ndarray):
        if correct.ndim != 2:
            raise ValueError(f"correctness must be 2-D (problems, samples), got shape {correct.shape}")
        return [np.asarray(r, dtype=bool) for r in correct]
    rows = [np.asarray(r, dtype=bool).reshape(-1) for r in correct]
    return rows


def avg_at_n(correct: Any) -> float:
    """avg@n: mean correctness over each problem's samples, averaged over problems.

    Args:
        correct: boolean (or 0/1) array of shape ``(problems, n)``, or a list of per-problem
            lists (ragged allowed: each problem is averaged over its own samples).

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: when there are no problems or a problem has no samples.
    """
    rows = _as_rows(correct)
    if not rows:
        raise ValueError("avg_at_n needs at least one problem")
    if any(r.size == 0 for r in rows):
        raise ValueError("every problem needs at least one sample")
    return float(np.mean([r.mean() for r in rows]))


def majority_vote(
    answers: Sequence[str | None], key: Callable[[str], Any] | None = None
) -> int | None:
    """Index of the sample carrying the majority answer of one problem.

    Answers are compared after ``key`` (default: ``str.strip``). ``None`` answers never vote.
    Ties are broken by first occurrence: among the most frequent answers, the one that appears
    first wins, and the index returned is that answer's first sample.

    Args:
        answers: the extracted answer of each sample (``None`` when none).
        key: normalisation applied before counting.

    Returns:
        The index of the first sample with the majority answer, or ``None`` when no sample
        has an answer.
    """
    key = key or (lambda s: s.strip())
    first: dict[Any, int] = {}
    counts: Counter = Counter()
    for i, a in enumerate(answers):
        if a is None:
            continue
        kk = key(str(a))
        counts[kk] += 1
        first.setdefault(kk, i)
    if not counts:
        return None
    best = max(counts.values())
    # dicts keep insertion order: the first key reaching ``best`` is the earliest answer
    winner = next(kk for kk in first if counts[kk] == best)
    return first[winner]


def maj_at_n(
    answers: Sequence[Sequence[str | None]],
    correct: Any,
    *,
    key: Callable[[str], Any] | None = None,
) -> float:
    """maj@n: share of problems whose majority answer is correct.

    Args:
        answers: per problem, the extracted answer of each sample (``None`` when none).
        correct: either a per-sample correctness matrix parallel to ``answers`` (the majority
            answer's correctness is that of its first sample), or a function
            ``correct(problem_index, answer) -> bool`` (e.g. a verifier call against the gold).
        key: answer normalisation for voting (default ``str.strip``; answers that differ after
            it are different votes, e.g. ``"1/2"`` and ``"\\\\frac12"``).

    Returns:
        A float in [0, 1]. A problem with no answer at all counts as wrong.

    Raises:
        ValueError: when there are no problems or the matrix does not match ``answers``.
    """
    if len(answers) == 0:
        raise ValueError("maj_at_n needs at least one problem")
    fn = correct if callable(correct) else None
    rows = None if fn is not None else _as_rows(correct)
    if rows is not None:
        if len(rows) != len(answers):
            raise ValueError(f"{len(answers)} problems of answers but {len(rows)} of correctness")
    hits = 0
    for p, ans in enumerate(answers):
        idx = majority_vote(ans, key)
        if idx is None:
            continue
        if fn is not None:
            hits += bool(fn(p, ans[idx]))
        else:
            assert rows is not None
            if rows[p].size != len(ans):
                raise ValueError(
                    f"problem {p}: {len(ans)} answers but {rows[p].size} correctness values"
                )
            hits += bool(rows[p][idx])
    return hits / len(answers)


def default_ks(n: int) -> list[int]:
    """The k of the pass@k curve: 1, 2, 4, ... up to ``n``."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def summarize(
    correct: Any,
    answers: Sequence[Sequence[str | None]] | None = None,
    ks: Sequence[int] | None = None,
) -> dict[str, float]:
    """All metrics of one benchmark from its correctness matrix.

    Args:
        correct: boolean array ``(problems, n)`` (every problem has the same n).
        answers: per problem, the extracted answers (for maj@n); optional.
        ks: the k of pass@k; default ``1, 2, 4, ... <= n``.

    Returns:
        ``{"num_problems": P, "n": n, "avg@{n}": ..., "maj@{n}": ... (when answers are given),
        "pass@{k}": ... for each k}``; e.g. for n=16 the keys ``avg@16``, ``pass@1``, ...,
        ``pass@16``. ``pass@1`` equals ``avg@{n}``.

    Raises:
        ValueError: for an empty or ragged matrix, or a k outside ``1..n``.
    """
    mat = np.asarray(correct)
    if mat.dtype == object or mat.ndim != 2:
        raise ValueError(
            "summarize needs a rectangular (problems, n) correctness matrix; "
            f"got shape {getattr(mat, 'shape', None)}"
        )
    mat = mat.astype(bool)
    num_problems, n = mat.shape
    if num_problems == 0 or n == 0:
        raise ValueError(f"empty correctness matrix of shape {mat.shape}")
    ks = list(ks) if ks is not None else default_ks(n)
    for k in ks:
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"pass@k needs 1 <= k <= n={n}, got k={k!r}")
    out: dict[str, float] = {"num_problems": num_problems, "n": n, f"avg@{n}": avg_at_n(mat)}
    if answers is not None:
        out[f"maj@{n}"] = maj_at_n(answers, mat)
    c = mat.sum(axis=1)
    for k in ks:
        out[f"pass@{int(k)}"] = float(pass_at_k_array(n, c, int(k)).mean())
    return out
