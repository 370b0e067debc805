"""The supervised data of the testbed's warm start: problems with sampled worked solutions, encoded.

Each training problem's completion is one of its valid worked solutions, drawn by
:func:`stalerl.testbed.solution.sampled_solution` (order of independent reductions and of the
operands of ``+`` and ``*``), followed by EOS; the loss covers the completion only. The draws are
seeded by the warm start's seed, so the data and the warm start stay deterministic.
"""

from __future__ import annotations

import random
from dataclasses import replace

from stalerl.testbed.solution import sampled_solution
from stalerl.testbed.task import Problem, generate_problems

__all__ = ["encode_batch", "training_problems"]


def training_problems(n: int, *, seed: int, levels: tuple[int, ...], solutions: str = "sampled") -> list[Problem]:
    """``n`` train problems (repeats allowed) whose ``solution`` is a sampled worked solution
    (``solutions="sampled"``) or the canonical one (``"canonical"``)."""
    if solutions not in ("sampled", "canonical"):
        raise ValueError(f"solutions must be 'sampled' or 'canonical', got {solutions!r}")
    problems = generate_problems(n, split="train", seed=seed, levels=levels, unique=False)
    if solutions == "canonical":
        return problems
    rng = random.Random(f"stalerl-warmstart-solutions|{seed}")
    return [replace(p, solution=sampled_solution(p.expression, rng)) for p in problems]


def encode_batch(tokenizer, problems: list[Problem], max_len: int):
    """Right-padded ``input_ids``, ``attention_mask`` and completion-only ``labels``."""
    import torch

    seqs, labels = [], []
    for p in problems:
        pi = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        ci = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (pi + ci)[:max_len]
        lab = ([-100] * len(pi) + ci)[:max_len]
        seqs.append(ids)
        labels.append(lab)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    lab_t = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        lab_t[i, : len(lab)] = torch.tensor(lab)
    return input_ids, attn, lab_t


