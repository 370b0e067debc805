"""A procedurally generated, verifiable multi-step arithmetic task.

This is the task of the embedded CPU testbed. Every problem is a
small integer expression such as ``(12+4)*3-15``; its answer is the exact integer value and
its worked solution reduces the expression one operation at a time, in the order a person
would (parentheses first, then ``*`` left to right, then ``+``/``-`` left to right)::

    >>> p = generate_problems(1, seed=0, levels=(2,))[0]
    >>> p.prompt
    'Q: 19-9*3=? A: '
    >>> p.solution
    '9*3=27. 19-27=-8. \\\\boxed{-8}'

Difficulty levels:

* level 1 -- two operands, one operator (``a+b``, ``a-b``, ``a*b``);
* level 2 -- three operands, two operators, operator precedence matters;
* level 3 -- four operands, three operators and one pair of parentheses.

Operands of ``+``/``-`` are 1-2 digit numbers (1..:data:`MAX_OPERAND` = 20) and the
numbers written next to a ``*`` are single digits (2..:data:`MAX_FACTOR` = 9; a
parenthesised group can still be a larger factor, as in ``(12+4)*3``), so the numbers
stay small enough for a tiny character-level model to learn the task partially within a
couple of CPU minutes. Intermediate values and answers may
be negative (``3-8=-5``); answers are integers written as strings (``"-5"``).

Splits: a problem belongs to the held-out split (``"test"``) when a SHA-256 hash of its
expression falls in the lowest ``HELDOUT_FRACTION`` of the hash range, otherwise to
``"train"``. The split is therefore a property of the problem text alone: no held-out
problem can ever appear in a training set, whatever the seeds or the levels requested.

The prompt format :data:`TESTBED_TEMPLATE` is deliberately short (character-level models
cannot afford the ~250-character M2PO template); :meth:`Problem.to_row` gives the
``{"prompt", "answer"}`` row format that the rest of stalerl consumes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

from stalerl.testbed.solution import evaluate_expression, solution_steps, worked_solution

__all__ = [
    "Problem",
    "TESTBED_TEMPLATE",
    "LEVELS",
    "SPLITS",
    "HELDOUT_FRACTION",
    "generate_problems",
    "problem_split",
    "make_problem",
    "evaluate_expression",
    "worked_solution",
]

#: The testbed prompt template; ``{expression}`` is the arithmetic expression.
#: The model's completion is the worked solution, ending in ``\boxed{ANSWER}`` and EOS.
TESTBED_TEMPLATE = "Q: {expression}=? A: "

#: Difficulty levels that :func:`generate_problems` understands.
LEVELS = (1, 2, 3)

#: Canonical split names. ``"eval"``, ``"heldout"``, ``"held_out"`` and ``"validation"``
#: are accepted as aliases of ``"test"``.
SPLITS = ("train", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "test": "test",
    "eval": "test",
    "heldout": "test",
    "held_out": "test",
    "held-out": "test",
    "validation": "test",
}

#: Largest operand of ``+``/``-`` (operands are drawn from 1..MAX_OPERAND).
MAX_OPERAND = 20

#: Largest factor of ``*`` (factors are drawn from 2..MAX_FACTOR).
MAX_FACTOR = 9

#: Fraction of the problem space (by hash of the expression) that is held out.
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Problem:
    """One testbed problem.

    Attributes:
        prompt: the model input, :data:`TESTBED_TEMPLATE` filled with the expression
            (e.g. ``"Q: 3+4*2=? A: "``).
        answer: the exact integer value of the expression, as a string (e.g. ``"11"``,
            ``"-5"``).
        solution: a short worked solution ending in ``\\boxed{ANSWER}``
            (e.g. ``"4*2=8. 3+8=11. \\boxed{11}"``), used for the supervised warm start.
            It does not include the EOS token.
        level: the difficulty level (1, 2 or 3).
    """

    prompt: str
    answer: str
    solution: str
    level: int

    @property
    def expression(self) -> str:
        """The bare arithmetic expression of the prompt (e.g. ``"3+4*2"``)."""
        pre, post = TESTBED_TEMPLATE.split("{expression}")
        return self.prompt[len(pre) : len(self.prompt) - len(post)]

    def to_row(self) -> dict:
        """The row format the rest of stalerl uses: ``{"prompt": ..., "answer": ...}``.

        ``level`` is included as an extra key (``data_source``-style metadata); consumers
        that only read ``prompt`` and ``answer`` can ignore it.
        """
        return {"prompt": self.prompt, "answer": self.answer, "level": self.level}

    def to_dict(self) -> dict:
        """All fields as a plain dict (JSON-serialisable)."""
        return asdict(self)


def make_problem(expression: str, level: int = 0) -> Problem:
    """Build a :class:`Problem` from an expression string (e.g. ``"(3+4)*2"``)."""
    value, steps = solution_steps(expression)
    return Problem(
        prompt=TESTBED_TEMPLATE.format(expression=expression),
        answer=str(value),
        solution=" ".join(steps + [f"\\boxed{{{value}}}"]),
        level=level,
    )


def problem_split(expression: str) -> str:
    """The split (``"train"`` or ``"test"``) an expression belongs to, by hash of its text."""
    h = int.from_bytes(hashlib.sha256(expression.encode("utf-8")).digest()[:8], "big")
    return "test" if h < HELDOUT_FRACTION * 2**64 else "train"


# ----------------------------------------------------------------------------------------
# Random expressions.
# ----------------------------------------------------------------------------------------


def _random_expression(rng: random.Random, level: int) -> str:
    n_ops = {1: 1, 2: 2, 3: 3}[level]
    ops = [rng.choice("+-*") for _ in range(n_ops)]
    # at most one multiplication above level 1 keeps values small
    if level > 1 and ops.count("*") > 1:
        keep = rng.choice([i for i, o in enumerate(ops) if o == "*"])
        ops = [o if (o != "*" or i == keep) else rng.choice("+-") for i, o in enumerate(ops)]
    nums = [rng.randint(1, MAX_OPERAND) for _ in range(n_ops + 1)]
    if level == 3:
        # parenthesise two or three adjacent operands
        width = rng.choice((2, 3))
        start = rng.randint(0, n_ops + 1 - width)
        group = (start, start + width - 1)
    else:
        group = None
    # factors of "*" are single digits; a parenthesised factor must be a +/- group
    for i, o in enumerate(ops):
        if o == "*":
            for k in (i, i + 1):
                nums[k] = rng.randint(2, MAX_FACTOR)
    parts: list[str] = []
    for k, v in enumerate(nums):
        s = str(v)
        if group is not None and k == group[0]:
            s = "(" + s
        if group is not None and k == group[1]:
            s = s + ")"
        parts.append(s)
        if k < n_ops:
            parts.append(ops[k])
    expr = "".join(parts)
    if group is not None:
        # a parenthesised group that is multiplied must have small value: bound it
        value_ok = abs(evaluate_expression(expr)) <= 999
        if not value_ok:
            return _random_expression(rng, level)
    return expr


def _canonical_split(split: str) -> str:
    key = str(split).lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(
            f"unknown split {split!r}; expected one of {SPLITS} "
            f"(aliases of 'test': eval, heldout, held_out, validation)"
        )
    return _SPLIT_ALIASES[key]


def generate_problems(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    levels: tuple[int, ...] = (1, 2, 3),
    unique: bool | None = None,
) -> list[Problem]:
    """Generate ``n`` problems of the given split, deterministically.

    The result depends only on ``(n, split, seed, levels, unique)`` (Python's
    ``random.Random`` seeded by a string, no global state). Problem ``i`` has level
    ``levels[i % len(levels)]``, so the level mix is exact. Only expressions whose hash
    puts them in ``split`` are kept (see :func:`problem_split`), so train and held-out
    sets are disjoint for any seeds.

    Args:
        n: number of problems (``>= 0``).
        split: ``"train"`` or ``"test"`` (aliases ``"eval"``, ``"heldout"``,
            ``"validation"``).
        seed: generator seed.
        levels: difficulty levels to draw from, each in :data:`LEVELS`.
        unique: ``None`` (default): no expression repeats within the list as long as its
            level has unseen problems left; a level whose problem space is exhausted
            (level 1 has about 700 train and 170 held-out problems) then repeats its
            problems, so any ``n`` can be served. ``True``: strictly no repeats
            (``ValueError`` when impossible). ``False``: independent draws, repeats
            allowed (useful for long supervised streams).

    Raises:
        ValueError: for ``n < 0``, an unknown split or level, or when ``unique=True`` asks
            for more distinct problems than the levels can provide.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    split = _canonical_split(split)
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must not be empty")
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"unknown level(s) {bad}; expected values in {LEVELS}")
    rng = random.Random(f"stalerl-testbed|{split}|{seed}|{','.join(map(str, levels))}")
    out: list[Problem] = []
    seen: set[str] = set()
    exhausted: set[int] = set()  # levels that repeat (unique=None only)
    dup_streak = {lv: 0 for lv in levels}
    while len(out) < n:
        level = levels[len(out) % len(levels)]
        expr = _random_expression(rng, level)
        if problem_split(expr) != split:
            continue
        if unique is not False and level not in exhausted and expr in seen:
            dup_streak[level] += 1
            if dup_streak[level] > 2000:  # no unseen problem in 2000 in-split draws
                if unique:
                    raise ValueError(
                        f"could not find {n} distinct {split} problems at levels {levels} "
                        f"(level {level} is exhausted after {len(out)}); ask for fewer or "
                        f"pass unique=None or unique=False"
                    )
                exhausted.add(level)
            continue
        dup_streak[level] = 0
        seen.add(expr)
        out.append(make_problem(expr, level))
    return out
