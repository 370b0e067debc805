"""Prompt sets for training and evaluation, and the seeded order in which training draws them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stalerl.data.loading import DatasetError
from stalerl.errors import UserError


@dataclass
class Prompt:
    """A formatted prompt and its reference answer."""

    text: str
    answer: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """The row's other fields (verl's ``data_source``, ``extra_info``...), for reward functions."""


class SkipCount(int):
    """The number of skipped rows (an ``int``), with ``reasons``: rows per reason of
    :data:`SKIP_REASONS`."""

    reasons: dict[str, int]

    def __new__(cls, reasons: dict[str, int]) -> "SkipCount":
        out = super().__new__(cls, sum(reasons.values()))
        out.reasons = dict(reasons)
        return out


#: Why a row is skipped (logged as ``data/skipped_prompts_<reason>``).
SKIP_REASONS = {
    "too_long": "longer than data.max_prompt_length tokens",
    "beyond_context": "prompt + max_new_tokens exceed the model's max_position_embeddings",
    "empty_answer": "the reference answer is empty",
    "unknown_tokens": "the prompt encodes to the tokenizer's unknown token only",
}

#: A prompt longer than this many characters per allowed token is skipped as ``too_long``
#: without tokenizing it (a 100k-character row would otherwise be encoded, then padded into an
#: attention mask of that size).
MAX_CHARS_PER_TOKEN = 32


def build_prompts(source: str, *, split: str, size: int | None, tokenizer, data_config, seed: int,
                  max_new_tokens: int | None = None, max_positions: int | None = None) -> tuple[list[Prompt], int]:
    """Prompts from ``testbed`` or a file / ``datasets`` name, formatted with the configured
    template; returns ``(prompts, skipped)``. Rows the model cannot serve are skipped and counted
    per reason (``skipped`` is a :class:`SkipCount`; see :data:`SKIP_REASONS`); when every row is
    skipped it is a :class:`DatasetError`. ``max_positions`` (the model's
    ``max_position_embeddings``) and ``max_new_tokens`` bound prompt + response."""
    if source == "testbed":
        from stalerl.testbed.task import generate_problems

        levels = tuple(data_config.testbed_levels)
        problems = generate_problems(size or 0, split=split, seed=seed, levels=levels)
        rows = [Prompt(p.prompt, p.answer, f"testbed:{split}:{i}") for i, p in enumerate(problems)]
    else:
        from stalerl.data.loading import load_prompts
        from stalerl.data.templates import format_prompt

        loaded = load_prompts(
            source,
            split=split,
            question_field=data_config.question_field,
            answer_field=data_config.answer_field,
            limit=size,
            with_extra=True,
        )
        template = "m2po" if data_config.template == "auto" else data_config.template
        system = getattr(data_config, "system_prompt", None)
        rows = [
            Prompt(
                format_prompt(r["prompt_question"], template, tokenizer=tokenizer, chat=data_config.chat_template,
                              system_prompt=system),
                r["answer"],
                f"{r['source']}:{r['index']}",
                r["extra"],
            )
            for r in loaded
        ]
    if data_config.template not in ("auto",) and source == "testbed":
        from stalerl.data.templates import format_prompt

        rows = [Prompt(format_prompt(_expression(p.text), data_config.template, tokenizer=tokenizer,
                                     chat=data_config.chat_template), p.answer, p.source) for p in rows]
    kept, reasons = _servable(rows, tokenizer, data_config.max_prompt_length, max_new_tokens, max_positions)
    if rows and not kept:
        why = ", ".join(f"{n} {SKIP_REASONS[r]}" for r, n in reasons.items() if n)
        raise DatasetError(f"every prompt of {source!r} was skipped ({why}); nothing is left to "
                           "train or evaluate on")
    return kept, SkipCount(reasons)


def prompt_limits(model, max_new_tokens: int) -> dict[str, int | None]:
    """The ``max_new_tokens`` / ``max_positions`` keywords of :func:`build_prompts` for ``model``."""
    return {"max_new_tokens": max_new_tokens,
            "max_positions": getattr(getattr(model, "config", None), "max_position_embeddings", None)}


def _servable(rows: list[Prompt], tokenizer, max_prompt_length: int, max_new_tokens: int | None,
              max_positions: int | None) -> tuple[list[Prompt], dict[str, int]]:
    """The rows the model can serve, and how many were skipped per reason."""
    reasons = {r: 0 for r in SKIP_REASONS}
    limit = max_prompt_length
    if max_positions and max_new_tokens:
        if max_new_tokens >= max_positions:
            raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt within the model's "
                            f"max_position_embeddings={max_positions}; lower it")
    candidates = []
    for p in rows:
        if not str(p.answer).strip():
            reasons["empty_answer"] += 1
        elif len(p.text) > MAX_CHARS_PER_TOKEN * limit:
            reasons["too_long"] += 1
        else:
            candidates.append(p)
    encoded = tokenizer([p.text for p in candidates], add_special_tokens=False)["input_ids"] if candidates else []
    unk = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for p, ids in zip(candidates, encoded, strict=True):
        if len(ids) > limit:
            reasons["too_long"] += 1
        elif max_positions and max_new_tokens and len(ids) + max_new_tokens > max_positions:
            reasons["beyond_context"] += 1
        elif unk is not None and ids and all(i == unk for i in ids):
            reasons["unknown_tokens"] += 1
        else:
            kept.append(p)
    return kept, reasons


def _expression(prompt_text: str) -> str:
    from stalerl.testbed.task import TESTBED_TEMPLATE

    pre, post = TESTBED_TEMPLATE.split("{expression}")
    return prompt_text[len(pre): len(prompt_text) - len(post)]


class PromptSampler:
    """Draws prompts without replacement in a seeded order, reshuffled every epoch.

    Its state (epoch, position) is part of the checkpoint, so a resumed run sees the same prompts.
    """

    def __init__(self, prompts: list[Prompt], seed: int) -> None:
        if not prompts:
            raise DatasetError("the training prompt set is empty")
        self.prompts = prompts
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def take(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.prompts[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
