"""Paired comparisons of study conditions with bootstrap confidence intervals, and three verdicts.

Every condition of a study runs with the same seeds and is evaluated on the same held-out
problems (``eval.problems_seed``), so two conditions are compared *paired*: run k of one
condition against run k of the other (same seed: same starting model, same training prompts,
same evaluation sampling), problem p against problem p. A statistic's 95% confidence interval
comes from a two-way bootstrap that resamples seeds and, where the runs saved per-problem
accuracies (``eval_problems.jsonl``), problems::

    for b in 1..B:   seeds* ~ seeds with replacement,  problems* ~ problems with replacement
                     stat_b = f(A[seeds*, problems*], B[seeds*, problems*])
    CI = [quantile_2.5%(stat_b), quantile_97.5%(stat_b)]

A claim's verdict reads the interval against the value the claim needs:

* ``reproduced``: the whole interval is on the claim's side (e.g. a difference > 0);
* ``contradicted``: the whole interval is on the other side;
* ``inconclusive``: the interval straddles it (the testbed cannot tell at this noise).

``tests/test_studies.py`` checks each claim's verdict function on hand-made results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
OUTCOMES = (REPRODUCED, CONTRADICTED, INCONCLUSIVE)
BOOTSTRAP_SAMPLES = 4000
"""Bootstrap resamples per interval."""
LEVEL = 0.95
"""Confidence level of every interval."""
DEFAULT_SEEDS = 5
"""Seeds per condition for a claim about accuracy (the per-seed spread of the testbed's held-out
accuracy is as large as most gaps being judged; two seeds give no usable interval)."""


@dataclass
class Interval:
    """A statistic and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n_seeds: int
    n_problems: int = 1

    def text(self, pct: bool = True, digits: int = 3) -> str:
        if not np.isfinite(self.estimate):
            return "n/a"
        f = (lambda x: f"{100 * x:+.1f}") if pct else (lambda x: f"{x:.{digits}g}")
        unit = " pt" if pct else ""
        return f"{f(self.estimate)}{unit} [{f(self.low)}, {f(self.high)}]"


NAN_INTERVAL = Interval(float("nan"), float("nan"), float("nan"), 0)


def _matrix(values: Sequence) -> np.ndarray | None:
    """(seeds, problems) from per-seed scalars or per-seed per-problem lists; None if any is missing."""
    rows = []
    for v in values:
        if v is None:
            return None
        row = np.atleast_1d(np.asarray(v, dtype=float))
        if not np.all(np.isfinite(row)):
            return None
        rows.append(row)
    if not rows or len({r.shape for r in rows}) != 1:
        return None
    return np.stack(rows)


def paired_bootstrap(
    a: Sequence,
    b: Sequence | None = None,
    statistic: str = "difference",
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Interval:
    """Bootstrap interval of a statistic of the means of ``a`` and ``b``.

    ``statistic``: ``difference`` mean(a) - mean(b) (``mean(a)`` when ``b`` is None), or
    ``ratio`` mean(a) / mean(b). ``a`` and ``b`` hold one entry per seed, in the same seed order:
    a number, or a list of per-problem values in the same problem order for every seed and
    condition. Seeds and problems are resampled together for both conditions (paired). With one
    seed and per-problem values the interval covers problem noise only; with one seed and one
    number it is a point (low = high). Missing or non-finite entries give an interval of NaN.
    """
    if statistic not in ("difference", "ratio"):
        raise ValueError(f"statistic={statistic!r} must be 'difference' or 'ratio'")
    A = _matrix(a)
    B = None if b is None else _matrix(b)
    if A is None or (b is not None and (B is None or B.shape != A.shape)):
        return NAN_INTERVAL
    n_seeds, n_problems = A.shape
    rng = np.random.default_rng(seed)
    # resampling as multiplicities: weight of each seed / problem in each bootstrap sample
    ws = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=samples)
    wp = rng.multinomial(n_problems, np.full(n_problems, 1 / n_problems), size=samples)
    ws = np.vstack([np.ones(n_seeds), ws])  # row 0: the sample itself
    wp = np.vstack([np.ones(n_problems), wp])
    norm = n_seeds * n_problems

    def means(M):
        return np.einsum("bs,sp,bp->b", ws, M, wp) / norm

    ma = means(A)
    mb = np.zeros_like(ma) if B is None else means(B)
    if statistic == "difference":
        values = ma - mb
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(mb > 0, ma / np.where(mb > 0, mb, 1.0), np.where(ma > 0, np.inf, np.nan))
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(values[1:], [tail, 1 - tail])
    return Interval(float(values[0]), float(low), float(high), n_seeds, n_problems)


# ------------------------------------------------------------------ verdicts from an interval

def above(ci: Interval, threshold: float = 0.0) -> str | None:
    """The claim "statistic > threshold": reproduced if the interval lies above, contradicted if
    below, inconclusive if it contains the threshold; None without data."""
    if not np.isfinite(ci.estimate):
        return None
    if ci.low > threshold:
        return REPRODUCED
    if ci.high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def below(ci: Interval, threshold: float = 0.0) -> str | None:
    """The claim "statistic < threshold" (the mirror of :func:`above`)."""
    if not np.isfinite(ci.estimate):
        return None
    if ci.high < threshold:
        return REPRODUCED
    if ci.low > threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def within(ci: Interval, tolerance: float) -> str | None:
    """The claim "|statistic| <= tolerance": reproduced if the interval lies inside
    [-tolerance, tolerance], contradicted if it lies wholly outside, else inconclusive."""
    if not np.isfinite(ci.estimate):
        return None
    if -tolerance <= ci.low and ci.high <= tolerance:
        return REPRODUCED
    if ci.low > tolerance or ci.high < -tolerance:
        return CONTRADICTED
    return INCONCLUSIVE


def all_of(outcomes: Sequence[str | None]) -> str | None:
    """A claim made of parts: reproduced if every part is, contradicted if any part is,
    otherwise inconclusive; None if a part has no data."""
    if any(o is None for o in outcomes):
        return None
    if all(o == REPRODUCED for o in outcomes):
        return REPRODUCED
    if any(o == CONTRADICTED for o in outcomes):
        return CONTRADICTED
    return INCONCLUSIVE
