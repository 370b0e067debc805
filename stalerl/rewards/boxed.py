"""Extraction of the final ``\\boxed{...}`` answer from a model completion.

The M2PO prompt asks for the final answer "in ``\\boxed{}`` tags"; the reward reads the *last*
boxed expression of the completion, with brace matching so nested braces such as
``\\boxed{\\frac{1}{2}}`` come out whole.
"""

from __future__ import annotations

import re

__all__ = ["last_boxed"]

# ``\boxed`` or ``\fbox`` not followed by another letter (``\boxedfoo`` is another macro).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == "{"``; None when unbalanced.

    Escaped braces (``\\{`` and ``\\}``) do not count toward the nesting depth.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (``\{``, ``\}``, ``\\``)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Rules:

    * Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; escaped braces
      ``\\{``/``\\}`` inside are kept and do not affect the matching.
    * Only the *last* occurrence counts. If that one is unbalanced (for instance a completion
      cut off by the length limit, ``... \\boxed{\\frac{1}{2``), the result is ``None`` even when
      an earlier box was complete: the model did not finish its final answer.
    * The space form ``\\boxed 5`` (TeX's single-argument form without braces) gives the text after
      the space up to the next ``$``, newline or end of text, stripped, with a trailing period
      removed (``"\\boxed 5."`` gives ``"5"``).
    * ``\\boxed{}`` gives ``""`` (callers decide whether an empty answer counts as extracted;
      :class:`stalerl.rewards.MathReward` does not count it).

    Args:
        text: the completion text.

    Returns:
        The boxed content without the surrounding braces, or ``None`` when there is no box or
        the last one is unbalanced.

    Examples:
        >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}")
        '\\\\frac{1}{2}'
        >>> last_boxed(r"answer: \\boxed 42$")
        '42'
        >>> last_boxed("no box") is None
        True
    """
    if not isinstance(text, str) or not text:
        return None
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    i = m.end()
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        return _braced(text, j)
    if j > i and j < n:
        # Space form: ``\boxed 5`` -- up to ``$``, newline or the end.
        rest = text[j:]
        stop = len(rest)
        for sep in ("$", "\n"):
            k = rest.find(sep)
            if k != -1:
                stop = min(stop, k)
        content = rest[:stop].strip()
        if content.endswith("."):
            content = content[:-1].rstrip()
        return content if content else None
    return None
