"""Unbiased pass@k (the MinPRO paper's metric) from verl's validation dump.

verl reports ``val-core/<source>/acc/mean@n`` (avg@n, exact) and ``best@k/mean`` (a bootstrap
estimate with replacement, not the unbiased pass@k of Chen et al. 2021). With
``trainer.validation_data_dir=DIR`` verl writes ``DIR/<step>.jsonl`` (one line per sample:
``input``, ``output``, ``gts``, ``score``, ``step``); this module groups the samples by prompt and
applies :func:`stalerl.evaluation.metrics.pass_at_k` (``1 - C(n-c, k) / C(n, k)``), a sample being
correct when its ``acc`` is 1 (written by :mod:`stalerl.rewards.verl_score`) or, without ``acc``,
when its score reaches ``correct_threshold`` (wrong-but-boxed answers score 0.1).
"""

from __future__ import annotations

import json
from collections import defaultdict

from stalerl.evaluation.metrics import default_ks, pass_at_k

__all__ = ["pass_at_k_from_dump"]


def pass_at_k_from_dump(path: str, ks: list[int] | None = None, correct_threshold: float = 1.0) -> dict[str, float]:
    """``{"pass@k": mean over prompts, ..., "n": samples per prompt, "problems": count}`` of one dump file."""
    correct: dict[str, list[bool]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ok = float(row["acc"]) >= 1.0 if "acc" in row else float(row["score"]) >= correct_threshold
                correct[str(row["input"])].append(ok)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {number}: not a verl validation sample ({err})") from None
    if not correct:
        raise ValueError(f"{path}: no samples")
    sizes = {len(v) for v in correct.values()}
    if len(sizes) != 1:
        raise ValueError(f"{path}: prompts have different sample counts {sorted(sizes)}; pass@k needs the same n")
    n = sizes.pop()
    out: dict[str, float] = {}
    for k in ks or default_ks(n):
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(v), k) for v in correct.values()) / len(correct)
    out["n"], out["problems"] = float(n), float(len(correct))
    return out
