"""Worked solutions of testbed expressions: the canonical one, and sampled ones with choices.

A worked solution reduces the expression one operation at a time, writing each step as
``a op b=c.``, and ends in ``\\boxed{value}``. :func:`worked_solution` writes the canonical order
(innermost parentheses first, then ``*`` left to right, then ``+``/``-`` left to right)::

    >>> worked_solution("3*4-(5+6)")
    '5+6=11. 3*4=12. 12-11=1. \\\\boxed{1}'

:func:`sampled_solution` writes one of the other valid solutions, drawn with a ``random.Random``:

* **order**: any reduction that is ready may go next: an innermost parenthesised group (its own
  operations in the canonical order), a ``*`` between two numbers, or the leftmost ``+``/``-``
  between two numbers when neither number belongs to a ``*``; in ``3*4-(5+6)`` both ``3*4`` and
  ``5+6`` are ready, so either comes first;
* **operand order**: a ``+`` or ``*`` step may write its operands either way round (``4*3=12.``).

Each choice is uniform, so the supervised warm start (:mod:`stalerl.testbed.warmstart_data`)
teaches a policy that is uncertain exactly there: about ln 2 = 0.69 nats at the first token of
a step with two openings, the high-entropy "forking" tokens that the M2PO paper (Sec. 4) finds
carry the learning signal and get clipped under staleness. Every sampled solution is still
verifiable: each step is exact arithmetic and the boxed value is the expression's value.
"""

from __future__ import annotations

import random

__all__ = ["evaluate_expression", "sampled_solution", "solution_steps", "worked_solution"]


def _tokenize(expr: str) -> list:
    out: list = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isdigit():
            j = i
            while j < len(expr) and expr[j].isdigit():
                j += 1
            out.append(int(expr[i:j]))
            i = j
        elif c in "+-*()":
            out.append(c)
            i += 1
        elif c == " ":
            i += 1
        else:
            raise ValueError(f"unexpected character {c!r} in expression {expr!r}")
    return out


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def _reduce_flat(toks: list, steps: list[str]) -> int:
    """Reduce a parenthesis-free token list, recording each step."""
    toks = list(toks)
    for ops in ("*", "+-"):
        i = 1
        while i < len(toks):
            if isinstance(toks[i], str) and toks[i] in ops:
                a, op, b = toks[i - 1], toks[i], toks[i + 1]
                v = _apply(a, op, b)
                steps.append(f"{a}{op}{b}={v}.")
                toks[i - 1 : i + 2] = [v]
            else:
                i += 2
    if len(toks) != 1:
        raise ValueError("malformed expression")
    return toks[0]


def solution_steps(expr: str) -> tuple[int, list[str]]:
    """The value of ``expr`` and the canonical steps (``"a op b=c."``) of its worked solution."""
    toks = _tokenize(expr)
    steps: list[str] = []
    while "(" in toks:
        # innermost parenthesis: the last "(" before the first ")"
        close = toks.index(")")
        open_ = max(i for i in range(close) if toks[i] == "(")
        v = _reduce_flat(toks[open_ + 1 : close], steps)
        toks[open_ : close + 1] = [v]
    return _reduce_flat(toks, steps), steps


def evaluate_expression(expr: str) -> int:
    """The exact integer value of a testbed expression (``+``, ``-``, ``*``, parentheses).

    Raises:
        ValueError: for characters or structure outside that grammar.
    """
    return solution_steps(expr)[0]


def worked_solution(expr: str) -> str:
    """The worked solution of ``expr``: one ``a op b=c.`` step per operation, then
    ``\\boxed{value}``. A bare number has no steps (just the box)."""
    value, steps = solution_steps(expr)
    return " ".join(steps + [f"\\boxed{{{value}}}"])




def sampled_solution(expr: str, rng: random.Random, swap: float = 0.5) -> str:
    """A worked solution of ``expr`` with the order of ready reductions drawn uniformly and each
    ``+``/``*`` step's operands swapped with probability ``swap`` (module docstring)."""
    toks = _tokenize(expr)
    steps: list[str] = []
    while len(toks) > 1:
        i = rng.choice(_ready(toks))
        a, op, b = toks[i - 1], toks[i], toks[i + 1]
        v = _apply(a, op, b)
        if op in "+*" and rng.random() < swap:
            a, b = b, a
        steps.append(f"{a}{op}{b}={v}.")
        toks[i - 1 : i + 2] = [v]
        toks = _unwrap(toks)
    if len(toks) != 1 or not isinstance(toks[0], int):
        raise ValueError(f"malformed expression {expr!r}")
    return " ".join(steps + [f"\\boxed{{{toks[0]}}}"])


def _unwrap(toks: list) -> list:
    """Drop the parentheses around a lone number: ``( 7 )`` -> ``7``."""
    i = 0
    while i + 2 < len(toks):
        if toks[i] == "(" and isinstance(toks[i + 1], int) and toks[i + 2] == ")":
            toks = toks[:i] + [toks[i + 1]] + toks[i + 3 :]
        else:
            i += 1
    return toks


def _ready(toks: list) -> list[int]:
    """Indices of the operators that may be reduced next (module docstring, "order")."""
    ready = []
    depth, first_additive = [], None
    level = 0
    for t in toks:
        level -= t == ")"
        depth.append(level)
        level += t == "("
    # innermost groups: "(" ... ")" without another "(" inside; their first "*", else first "+"/"-"
    for i, t in enumerate(toks):
        if t != "(":
            continue
        j = i + 1
        while toks[j] not in ("(", ")"):
            j += 1
        if toks[j] == ")":
            inner = [k for k in range(i + 1, j) if toks[k] in ("*", "+", "-")]
            mult = [k for k in inner if toks[k] == "*"]
            if inner:
                ready.append((mult or inner)[0])
    for k, t in enumerate(toks):
        if depth[k] != 0 or t not in ("*", "+", "-"):
            continue
        numbers = isinstance(toks[k - 1], int) and isinstance(toks[k + 1], int)
        if t == "*":
            ready += [k] if numbers else []
            continue
        if first_additive is None:
            first_additive = k
            bound = (k >= 2 and toks[k - 2] == "*") or (k + 2 < len(toks) and toks[k + 2] == "*")
            ready += [k] if numbers and not bound else []
    if not ready:
        raise ValueError("malformed expression: no operation can be reduced")
    return ready
