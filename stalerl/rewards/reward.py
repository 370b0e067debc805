"""Rewards of the M2PO paper (boxed answer checked by math-verify) and user reward functions.

The M2PO paper's reward: 1.0 for a correct final answer, 0.1 ("``format_score``") for an answer
that was extracted from ``\\boxed{}`` but is wrong, 0 otherwise. The released M2PO code gives 0.0
instead of 0.1; set ``format_score=0.0`` to reproduce it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from stalerl.errors import RewardError
from stalerl.rewards.boxed import last_boxed
from stalerl.rewards.verifier import MathVerifier
from stalerl.rewards.verifier_pool import import_object

__all__ = ["RewardBatch", "MathReward", "UserReward", "load_reward_fn", "make_reward", "build_reward_fn"]


@dataclass
class RewardBatch:
    """Rewards of a batch of completions.

    Attributes:
        scores: the reward of each completion.
        correct: whether each completion's answer is correct.
        extracted: whether an answer was extracted from each completion.
        counts: how many completions fell in each category. For :class:`MathReward`:
            ``"ok"`` (checked), ``"no_answer"`` (no non-empty ``\\boxed{}``), ``"empty"``
            (empty or all-whitespace completion), ``"timeout"`` and ``"error"`` (the check ran
            past its limit or crashed; scored as a wrong answer). These five add up to the
            batch size. User reward functions report ``{}``.
        answers: the extracted answer of each completion (``None`` when none); used for maj@n.
    """

    scores: list[float]
    correct: list[bool]
    extracted: list[bool]
    counts: dict[str, int] = field(default_factory=dict)
    answers: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def accuracy(self) -> float:
        """Share of correct completions (0.0 for an empty batch)."""
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def mean_score(self) -> float:
        """Mean reward (0.0 for an empty batch)."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """Flat dict for logging: mean score, accuracy, extraction rate and the counts."""
        n = len(self.scores)
        out = {
            f"{prefix}mean": self.mean_score,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}extracted": (sum(self.extracted) / n) if n else 0.0,
        }
        for k, v in self.counts.items():
            out[f"{prefix}count_{k}"] = float(v)
        return out


class MathReward:
    """The M2PO reward: last ``\\boxed{}`` answer checked against the reference with math-verify.

    For each completion: an empty completion scores 0 (counted ``"empty"``); otherwise the
    content of the last ``\\boxed{...}`` is extracted with :func:`last_boxed`. No (or an empty)
    box scores 0 (``"no_answer"``). An extracted answer is checked by a
    :class:`~stalerl.rewards.MathVerifier` (in worker processes, with a timeout): a correct one
    scores ``correct_score`` (1.0), a wrong one ``format_score``. An extracted answer whose check
    timed out or crashed counts as extracted but wrong (``format_score``) and is counted under
    ``"timeout"`` / ``"error"``.

    Args:
        format_score: reward of an extracted but wrong answer; 0.1 in the M2PO paper (default),
            0.0 in the released M2PO code.
        correct_score: reward of a correct answer.
        verifier: an existing :class:`MathVerifier` to share; when ``None`` one is created on
            first use (with ``num_workers``, ``timeout_s``, ``memory_limit_mb``) and closed by
            :meth:`close`.
        num_workers, timeout_s, memory_limit_mb: passed to the verifier this reward creates.

    Example::

        with MathReward(format_score=0.1) as reward:
            batch = reward(["... so \\\\boxed{\\\\frac12}", "\\\\boxed{3}", ""], ["0.5", "4", "1"])
        batch.scores   # [1.0, 0.1, 0.0]
    """

    def __init__(
        self,
        format_score: float = 0.1,
        correct_score: float = 1.0,
        *,
        verifier: MathVerifier | None = None,
        num_workers: int | None = None,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 1024,
    ) -> None:
        if not math.isfinite(format_score) or not math.isfinite(correct_score):
            raise RewardError("format_score and correct_score must be finite")
        self.format_score = float(format_score)
        self.correct_score = float(correct_score)
        self._verifier = verifier
        self._owns_verifier = verifier is None
        self._verifier_kwargs = dict(
            num_workers=num_workers, timeout_s=timeout_s, memory_limit_mb=memory_limit_mb
        )

    @property
    def verifier(self) -> MathVerifier:
        """The verifier in use (started on first access)."""
        if self._verifier is None:
            self._verifier = MathVerifier(**self._verifier_kwargs)
        return self._verifier

    def close(self) -> None:
        """Stop the verifier's workers if this reward created them."""
        if self._owns_verifier and self._verifier is not None:
            self._verifier.close()
            self._verifier = None

    def __enter__(self) -> "MathReward":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __call__(self, completions: Sequence[str], answers: Sequence[Any]) -> RewardBatch:
        """Score ``completions[i]`` against the reference ``answers[i]``.

        Args:
            completions: generated texts (the response only, without the prompt).
            answers: reference answers; non-strings (e.g. ints from JSON) are converted with
                ``str``.

        Returns:
            A :class:`RewardBatch`.

        Raises:
            ValueError: when the two lists differ in length.
        """
        if len(completions) != len(answers):
            raise ValueError(
                f"completions and answers differ in length: {len(completions)} != {len(answers)}"
            )
        n = len(completions)
        counts = {"ok": 0, "no_answer": 0, "empty": 0, "timeout": 0, "error": 0}
        scores = [0.0] * n
        correct = [False] * n
        extracted = [False] * n
        extracted_answers: list[str | None] = [None] * n
        to_check: list[int] = []
        for i, text in enumerate(completions):
            if text is None or not str(text).strip():
                counts["empty"] += 1
                continue
            ans = last_boxed(str(text))
            if ans is None or not ans.strip():
                counts["no_answer"] += 1
                continue
            extracted[i] = True
            extracted_answers[i] = ans.strip()
            to_check.append(i)
        if to_check:
            results = self.verifier.verify_batch(
                [str(answers[i]) for i in to_check], [extracted_answers[i] for i in to_check]
            )
            for i, r in zip(to_check, results, strict=True):
                # A box whose content math-verify cannot parse is still an extracted answer
                # (the paper's format reward is about the box); it is wrong and counted "ok".
                status = r.status if r.status in ("timeout", "error") else "ok"
                counts[status] += 1
                correct[i] = bool(r.correct)
                scores[i] = self.correct_score if r.correct else self.format_score
        return RewardBatch(scores, correct, extracted, counts, extracted_answers)


class UserReward:
    """A user reward function ``fn(completions, answers) -> list[float]`` wrapped to return a
    :class:`RewardBatch`. Built by :func:`load_reward_fn`.

    The function's signature says what it receives (:func:`_call_style`):

    * ``fn(completions, answers)`` (or any two positional names): called positionally, as always;
    * keyword names among ``completions``, ``answers``, ``prompts``, ``extras`` (each row's other
      fields as a dict) and any field of the data rows (``data_source``, ``extra_info``...; one list
      entry per completion), or ``**kwargs`` for all of them: TRL's reward-function convention;
    * a ``solution_str`` parameter: verl's per-sample ``compute_score(data_source, solution_str,
      ground_truth, extra_info)``, called once per completion; it may return a number or a dict
      with ``"score"``.

    The function may also return a :class:`RewardBatch` itself. Otherwise ``correct`` is
    ``score >= correct_threshold`` and ``extracted`` is ``score != 0`` (the function says
    nothing more); ``counts`` is ``{}``.

    Raises (on call):
        ValueError: naming the function's path, if it raises, returns something that is not a
            sequence of numbers, the wrong number of scores, or non-finite scores.
    """

    def __init__(self, fn: Callable[..., Any], path: str, correct_threshold: float = 1.0) -> None:
        self.fn = fn
        self.path = path
        self.correct_threshold = float(correct_threshold)

    def close(self) -> None:
        """Nothing to release (kept for symmetry with :class:`MathReward`)."""

    def __enter__(self) -> "UserReward":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __call__(self, completions: Sequence[str], answers: Sequence[Any], *, prompts: Sequence[str] | None = None,
                 extras: Sequence[dict[str, Any]] | None = None) -> RewardBatch:
        """Call the user function and validate its output; see the class docstring. ``prompts``
        and ``extras`` (one per completion) reach functions that ask for them."""
        n = len(completions)
        if n != len(answers):
            raise ValueError(f"completions and answers differ in length: {n} != {len(answers)}")
        try:
            out = _call_user_fn(self.fn, list(completions), list(answers),
                                list(prompts) if prompts is not None else [""] * n,
                                list(extras) if extras is not None else [{} for _ in range(n)])
        except Exception as exc:
            raise RewardError(f"reward function {self.path!r} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(out, RewardBatch):
            scores_src: Any = out.scores
        else:
            scores_src = out
        if hasattr(scores_src, "tolist"):  # numpy array / torch tensor
            scores_src = scores_src.tolist()
        try:
            scores = [float(s) for s in scores_src]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"reward function {self.path!r} must return a list of numbers, got "
                f"{type(out).__name__}: {exc}"
            ) from exc
        if len(scores) != n:
            raise RewardError(
                f"reward function {self.path!r} returned {len(scores)} scores for {n} completions"
            )
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise RewardError(
                f"reward function {self.path!r} returned non-finite scores at positions {bad[:10]} "
                f"(e.g. {scores[bad[0]]})"
            )
        if isinstance(out, RewardBatch):
            return RewardBatch(scores, list(out.correct), list(out.extracted), dict(out.counts),
                               list(out.answers))
        correct = [s >= self.correct_threshold for s in scores]
        extracted = [s != 0.0 for s in scores]
        return RewardBatch(scores, correct, extracted, {}, [None] * n)


_BATCH_NAMES = ("completions", "answers", "prompts", "extras")


def _call_style(fn: Callable[..., Any], extra_names: set[str]) -> str:
    """``"verl"`` (per sample, ``solution_str``), ``"keywords"`` (TRL-like) or ``"positional"``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "positional"
    if "solution_str" in params:
        return "verl"
    named = [p for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    known = set(_BATCH_NAMES) | extra_names
    if named and all(p.name in known for p in named) and any(p.name in _BATCH_NAMES for p in named):
        return "keywords"
    return "positional"


def _call_user_fn(fn, completions: list[str], answers: list[Any], prompts: list[str], extras: list[dict]) -> Any:
    names = {k for e in extras for k in e}
    style = _call_style(fn, names)
    if style == "positional":
        return fn(completions, answers)
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if style == "verl":
        out = []
        for text, answer, extra in zip(completions, answers, extras, strict=False):
            given = {"solution_str": text, "ground_truth": answer, "data_source": extra.get("data_source"),
                     "extra_info": extra.get("extra_info")}
            score = fn(**{k: v for k, v in given.items() if k in params or takes_all})
            out.append(score["score"] if isinstance(score, dict) else score)
        return out
    given = {"completions": completions, "answers": answers, "prompts": prompts, "extras": extras}
    given.update({k: [e.get(k) for e in extras] for k in names if k not in given})
    return fn(**{k: v for k, v in given.items() if k in params or takes_all})


def load_reward_fn(path: str, *, correct_threshold: float = 1.0) -> UserReward:
    """Import a user reward function and wrap it as a :class:`UserReward`.

    Args:
        path: ``"package.module:function"`` (importable from ``sys.path``) or
            ``"/path/to/file.py:function"``. The function has the signature
            ``fn(completions: list[str], answers: list[str]) -> list[float]`` (a numpy array,
            a tensor or a :class:`RewardBatch` also work), or one of the other signatures
            :class:`UserReward` recognises (TRL-style keywords, verl's ``compute_score``).
        correct_threshold: a score at or above it counts as correct (for accuracy logging).

    Returns:
        A callable ``(completions, answers) -> RewardBatch``.

    Raises:
        ValueError: naming ``path`` when it is malformed, the module or file cannot be
            imported, the attribute is missing, or it is not callable.
    """
    if not isinstance(path, str) or ":" not in path:
        raise RewardError(
            f"reward function path {path!r} must look like 'package.module:function' or "
            "'/path/to/file.py:function'"
        )
    try:
        fn = import_object(path)
    except AttributeError as exc:
        raise RewardError(f"reward function {path!r}: attribute not found ({exc})") from exc
    except (ImportError, SyntaxError, ValueError, OSError) as exc:
        raise RewardError(
            f"reward function {path!r}: cannot import it ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:
        raise RewardError(
            f"reward function {path!r}: importing it raised {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(fn):
        raise RewardError(f"reward function {path!r} is not callable (it is a {type(fn).__name__})")
    return UserReward(fn, path, correct_threshold=correct_threshold)


def make_reward(spec: str = "math", **kwargs: Any) -> MathReward | UserReward:
    """Build a reward from a config string.

    Args:
        spec: ``"math"`` (or ``"m2po"``) for :class:`MathReward`, ``"math_code"`` for
            :class:`MathReward` with ``format_score=0.0`` (the released M2PO code), anything
            else is a path for :func:`load_reward_fn`.
        **kwargs: passed to :class:`MathReward` (ignored keys raise ``TypeError``); for a user
            function only ``correct_threshold`` is accepted.
    """
    if spec in ("math", "m2po"):
        return MathReward(**kwargs)
    if spec == "math_code":
        kwargs.setdefault("format_score", 0.0)
        return MathReward(**kwargs)
    return load_reward_fn(spec, **kwargs)


def build_reward_fn(config: Any) -> MathReward | UserReward:
    """The run's reward function from its ``reward`` config section
    (:class:`stalerl.training.config.RewardConfig`): the user's function when ``reward.function``
    is set, else :class:`MathReward` with the section's ``format_score``, ``num_workers``,
    ``timeout_s`` and ``memory_limit_mb``. The training loop and the rollout worker both build
    theirs here."""
    if config.function:
        return load_reward_fn(config.function)
    return MathReward(format_score=config.format_score, num_workers=config.num_workers, timeout_s=config.timeout_s,
                      memory_limit_mb=config.memory_limit_mb)
