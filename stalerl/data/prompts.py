"""Prompt sets for training and evaluation, and the seeded order in which training draws them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prompt:
    """A formatted prompt and its reference answer."""

    text: str
    answer: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """The row's other fields (verl's ``data_source``, ``extra_info``...), for reward functions."""


def build_prompts(source: str, *, split: str, size: int | None, tokenizer, data_config, seed: int) -> tuple[list[Prompt], int]:
    """Prompts from ``testbed`` or a file / ``datasets`` name, formatted with the configured
    template; returns ``(prompts, skipped)`` where prompts longer than ``max_prompt_length``
    tokens are skipped and counted."""
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
    lengths = [len(ids) for ids in tokenizer([p.text for p in rows], add_special_tokens=False)["input_ids"]] if rows else []
    kept = [p for p, n in zip(rows, lengths) if n <= data_config.max_prompt_length]
    if rows and not kept:
        raise ValueError(
            f"every prompt of {source!r} is longer than data.max_prompt_length={data_config.max_prompt_length} tokens"
        )
    return kept, len(rows) - len(kept)


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
            raise ValueError("the training prompt set is empty")
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
