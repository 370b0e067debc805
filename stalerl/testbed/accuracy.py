"""Measuring a testbed model: sampled accuracy on problems, and the ``\\boxed{}`` answer matcher."""

from __future__ import annotations

import re

from stalerl.testbed.task import Problem

__all__ = ["extract_boxed", "sample_accuracy"]

_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (stripped), or ``None``.

    A simple matcher for the testbed (no nested braces); the full ``math-verify`` reward
    lives in :mod:`stalerl.rewards`.
    """
    found = _BOXED_RE.findall(text)
    return found[-1].strip() if found else None


def sample_accuracy(
    model,
    tokenizer,
    problems: list[Problem],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    return_details: bool = False,
):
    """Fraction of ``problems`` whose sampled completion's last ``\\boxed{}`` equals the answer.

    Uses ``model.generate`` with left padding and the KV cache; ``temperature > 0``
    samples (pure temperature sampling: ``top_k=0``, ``top_p=1``), ``temperature == 0``
    decodes greedily. Sampling is seeded by ``seed`` inside ``torch.random.fork_rng``, so
    the caller's global RNG state is untouched. The answer is compared as a string to
    :attr:`Problem.answer` (accepts any object with ``prompt`` and ``answer`` attributes,
    or dict rows with those keys).

    Returns:
        The accuracy in ``[0, 1]`` (``0.0`` for no problems); with
        ``return_details=True``, ``(accuracy, completions)``.
    """
    import torch

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rows = [
        (p["prompt"], str(p["answer"])) if isinstance(p, dict) else (p.prompt, str(p.answer))
        for p in problems
    ]
    if not rows:
        return (0.0, []) if return_details else 0.0
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    completions: list[str] = []
    correct = 0
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        gen_kwargs.update(do_sample=False)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                enc = tokenizer(
                    [r[0] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False
                )
                out = model.generate(**enc, **gen_kwargs)
                texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for (_, answer), text in zip(chunk, texts, strict=True):
                    completions.append(text)
                    correct += extract_boxed(text) == answer
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    acc = correct / len(rows)
    return (acc, completions) if return_details else acc


