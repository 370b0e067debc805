"""What a real checkpoint on one GPU needs, checked on the CPU: mixed precision that trains
(float32 masters), a stale buffer whose memory follows the tokens, token-budget micro-batches that
give the same loss and gradient as one big batch, and the GPU check script at a tiny size."""

from __future__ import annotations

import warnings

import pytest
import torch

from stalerl import objectives
from stalerl.staleness.buffer import RolloutBatch
from stalerl.training import loop
from stalerl.training.loop import LoopState, load_policy


def _synthetic_batch(vocab: int, n: int = 8, seed: int = 0, prompt_max: int = 6, response_max: int = 10,
                     pad_token_id: int = 0) -> RolloutBatch:
    """``n`` trajectories with prompts of 2..prompt_max and responses of 1..response_max tokens,
    in the generation layout (left-padded prompts, right-padded responses)."""
    g = torch.Generator().manual_seed(seed)
    plen = torch.randint(2, prompt_max + 1, (n,), generator=g)
    rlen = torch.randint(1, response_max + 1, (n,), generator=g)
    L, R = int(plen.max()), int(rlen.max())
    input_ids = torch.full((n, L + R), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(n, L + R, dtype=torch.long)
    response_mask = torch.zeros(n, R, dtype=torch.long)
    old_log_prob = torch.zeros(n, R)
    for i in range(n):
        p, r = int(plen[i]), int(rlen[i])
        input_ids[i, L - p:L + r] = torch.randint(3, vocab, (p + r,), generator=g)
        attention_mask[i, L - p:L + r] = 1
        response_mask[i, :r] = 1
        old_log_prob[i, :r] = -torch.rand(r, generator=g) * 4 - 0.5
    advantages = torch.randn(n, generator=g)
    return RolloutBatch(
        input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
        old_log_prob=old_log_prob, advantages=advantages, rewards=advantages.clone(), policy_version=0,
        pad_token_id=pad_token_id,
    )


# ============================================================================ mixed precision

def _one_update(config, batch: RolloutBatch):
    """Weights before and after one real :func:`loop.update` (float32 copies), and the optimizer."""
    model, _, _ = load_policy(config, progress=False)
    before = torch.cat([p.detach().float().reshape(-1).clone() for p in model.parameters()])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                                  weight_decay=config.optim.weight_decay)
    objective = objectives.build(config.objective.name, **config.objective.hparams)
    loop.update(config, model, optimizer, objective, batch, torch.arange(len(batch)), LoopState())
    after = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    return before, after, model, optimizer


def test_bf16_masters_update_equals_float32_update(make_config):
    """At lr 1e-6 a bf16 run with float32 masters moves the weights as the float32 run does;
    pure bf16 storage (opt-in, with a warning) loses almost all of the update."""
    common = ("optim.lr=1e-6", "objective.name=grpo", "optim.micro_batch_size=4")
    batch = _synthetic_batch(vocab=100, n=8)
    w0, w1, _, _ = _one_update(make_config(*common), batch)
    ref = w1 - w0
    assert ref.abs().max() < 3e-6 and (ref != 0).float().mean() > 0.9  # AdamW's first step: ~lr per weight

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default bf16 path must not warn
        b0, b1, model, optimizer = _one_update(make_config(*common, "model.dtype=bfloat16"), batch)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
               for s in optimizer.state.values())
    assert torch.equal(b0, w0)  # the masters start from the float32 checkpoint itself
    mixed = b1 - b0
    cosine = float(torch.nn.functional.cosine_similarity(mixed, ref, dim=0))
    rel = float((mixed - ref).norm() / ref.norm())
    assert cosine > 0.98 and rel < 0.2, (cosine, rel)  # measured: 0.996 and 0.093

    with pytest.warns(UserWarning, match="master_weights=false"):
        p0, p1, model, _ = _one_update(make_config(*common, "model.dtype=bfloat16", "model.master_weights=false"),
                                       batch)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    pure = p1 - p0
    rel_pure = float((pure - ref).norm() / ref.norm())
    assert rel_pure > 0.9 and (pure != 0).float().mean() < 0.1, rel_pure  # measured: 0.994, 2% of weights moved
