"""What a real checkpoint on one GPU needs, checked on the CPU: mixed precision that trains
(float32 masters), a stale buffer whose memory follows the tokens, token-budget micro-batches that
give the same loss and gradient as one big batch, and the GPU check script at a tiny size."""

from __future__ import annotations

import warnings

import pytest
import torch

from stalerl import objectives
from stalerl.rollout.batch import RolloutBatch
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


def test_chunked_head_under_autocast_runs_in_bf16_and_gives_float32_master_gradients():
    """Over float32 masters under bf16 autocast the output layer's matmuls run in bf16 (the
    log-probs differ from float32 by bf16 rounding, not more) and the master gets a float32
    gradient close to the float32 one."""
    from stalerl.models.logprobs import token_log_probs_from_hidden

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 32, generator=g)
    targets = torch.randint(0, 50, (6,), generator=g)
    grads, outs = [], []
    for amp in (False, True):
        weight = (0.2 * torch.randn(50, 32, generator=torch.Generator().manual_seed(1))).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logp, ent = token_log_probs_from_hidden(hidden, weight, targets, chunk_size=4)
        assert logp.dtype == torch.float32 and ent.dtype == torch.float32
        (logp.sum() + 0.1 * ent.sum()).backward()
        assert weight.grad.dtype == torch.float32
        grads.append(weight.grad)
        outs.append(logp.detach())
    assert not torch.equal(outs[0], outs[1])  # the bf16 path was taken
    assert torch.allclose(outs[0], outs[1], atol=0.05)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 0.02


def test_generation_samples_from_a_compute_dtype_copy_of_the_masters(make_config):
    from stalerl.models import precision

    config = make_config("model.dtype=bfloat16")
    model, _, _ = load_policy(config, progress=False)
    model.generation_config.min_new_tokens = 3
    rng = torch.get_rng_state()
    copy = precision.generation_model(model, config.model)
    assert torch.equal(torch.get_rng_state(), rng)  # building it draws no random numbers
    assert copy is not model and all(p.dtype == torch.bfloat16 for p in copy.parameters())
    masters = dict(model.named_parameters())
    assert all(torch.equal(p, masters[n].to(torch.bfloat16)) for n, p in copy.named_parameters())
    assert copy.generation_config.min_new_tokens == 3 and not copy.training
    fp32 = make_config()
    plain, _, _ = load_policy(fp32, progress=False)
    assert precision.generation_model(plain, fp32.model) is plain
    # a model already in its compute dtype is used as it is (pure bf16 storage, the async worker's copy)
    assert precision.generation_model(copy, config.model) is copy


def test_a_bf16_run_trains_and_checkpoints_float32_masters(make_config):
    from safetensors.torch import load_file

    from stalerl.training import checkpoint as ckpt
    from stalerl.training.loop import train

    result = train(make_config("steps=1", "stale.staleness=0", "model.dtype=bfloat16", "data.eval_size=0"))
    assert result.crashed_at is None and result.steps_done == 1
    weights = load_file(ckpt.latest_checkpoint(result.run_dir / "checkpoints") / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())


# ============================================================================ the stale buffer's memory

def test_stored_batch_bytes_per_token_do_not_depend_on_padding():
    """4 B per prompt token, 8 B per response token (+4 B with the sampler's log-probs), 16 B per
    trajectory; padding one row of a batch to 10x the others' length costs nothing."""
    short = _synthetic_batch(vocab=100, n=6, seed=1, response_max=8)
    P, R = int(short.prompt_lengths.sum()), int(short.response_lengths.sum())
    assert short.nbytes == 4 * P + 8 * R + 16 * 6
    ids, att, resp, olp = short.input_ids, short.attention_mask, short.response_mask, short.old_log_prob
    pad = 80  # the same trajectories in a layout padded to 80 more response columns
    padded = RolloutBatch(
        input_ids=torch.cat([ids, torch.zeros(6, pad, dtype=torch.long)], 1),
        attention_mask=torch.cat([att, torch.zeros(6, pad, dtype=torch.long)], 1),
        response_mask=torch.cat([resp, torch.zeros(6, pad, dtype=torch.long)], 1),
        old_log_prob=torch.cat([olp, torch.zeros(6, pad)], 1),
        advantages=short.advantages, rewards=short.rewards, policy_version=0,
        rollout_log_prob=torch.cat([olp, torch.zeros(6, pad)], 1),
    )
    assert padded.nbytes == short.nbytes + 4 * R  # only the sampler's log-probs were added
    assert torch.equal(padded.input_ids, ids) and torch.equal(padded.old_log_prob, olp)
    # the padded layout it replaces: int64 ids + two int64 masks + float32 log-probs per position
    padded_layout = ids.numel() * 8 * 2 + resp.numel() * (8 + 4)
    assert short.nbytes < padded_layout


def test_micro_batch_rebuilds_the_generation_layout_trimmed_to_its_rows():
    batch = _synthetic_batch(vocab=100, n=8, seed=2, pad_token_id=7)
    full = {"input_ids": batch.input_ids, "response_mask": batch.response_mask, "old_log_prob": batch.old_log_prob}
    assert (full["input_ids"][batch.attention_mask == 0] == 7).all()
    rows = torch.tensor([5, 1])
    micro = batch.micro_batch(rows)
    L, R = int(batch.prompt_lengths[rows].max()), int(batch.response_lengths[rows].max())
    assert micro["input_ids"].shape == (2, L + R) and micro["response_mask"].shape == (2, R)
    Lfull = full["input_ids"].shape[1] - full["response_mask"].shape[1]
    # the same real tokens at the same places relative to the prompt/response boundary
    assert torch.equal(micro["input_ids"][:, :L + R], full["input_ids"][rows, Lfull - L:Lfull + R])
    assert torch.equal(micro["old_log_prob"], full["old_log_prob"][rows, :R])


def test_checkpointed_buffer_is_safetensors_and_json_and_round_trips_exactly(tmp_path, tiny_testbed):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from stalerl.staleness.buffer import StaleBuffer
    from stalerl.training import checkpoint as ckpt

    buf = StaleBuffer(4, 2)
    for seed in range(3):
        b = _synthetic_batch(vocab=100, n=4, seed=seed, pad_token_id=3)
        b.rollout_log_prob_flat = b.old_log_prob_flat - 0.125 if seed == 1 else None
        b.policy_version = seed
        b.info = {"rollout/accuracy": 1 / 3, "rollout/batch_index": float(seed)}
        buf.push(b)
    model = AutoModelForCausalLM.from_pretrained(tiny_testbed)
    path = ckpt.save_checkpoint(tmp_path, 1, model, None, {"loop": {"step": 1}}, buffer=buf)
    assert sorted(p.name for p in (path / "buffer").iterdir()) == ["buffer.json", "buffer.safetensors"]
    assert load_file(str(path / "buffer" / "buffer.safetensors"))["0.tokens"].dtype == torch.int32
    raw = torch.load(path / "state.pt", weights_only=False)
    assert "buffer" not in raw  # not pickled
    restored = StaleBuffer(4, 2)
    restored.load_state_dict(ckpt.load_state(path)["buffer"])
    assert len(restored) == 3
    for a, b in zip(buf.queue, restored.queue, strict=True):
        assert a.policy_version == b.policy_version and a.info == b.info and a.pad_token_id == b.pad_token_id
        for name in RolloutBatch._TENSORS:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or (x.dtype == y.dtype and torch.equal(x, y)), name


# ============================================================================ token-budget micro-batches

class _RecordLoss:
    """The objective, summing the loss of every micro-batch call."""

    def __init__(self, objective) -> None:
        self.objective, self.loss = objective, 0.0

    def __call__(self, *args, **kwargs):
        out = self.objective(*args, **kwargs)
        self.loss += float(out.loss.detach())
        return out

    def __getattr__(self, name):
        return getattr(self.objective, name)


class _RecordGrad:
    """An optimizer that keeps the gradient instead of stepping."""

    def __init__(self, model) -> None:
        self.model, self.grad = model, None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.grad = torch.cat([p.grad.reshape(-1).clone() for p in self.model.parameters() if p.grad is not None])


def _loss_and_grad(config, model, batch, rows, name, hparams):
    objective = _RecordLoss(objectives.build(name, **hparams))
    optimizer = _RecordGrad(model)
    loop.update(config, model, optimizer, objective, batch, rows, LoopState())
    return objective.loss, optimizer.grad


@pytest.mark.parametrize("name,hparams", [
    ("m2po", {}),
    ("grpo", {}),
    ("mispo_random_traj", {"traj_low": 0.98, "traj_high": 1.02}),  # a band some trajectories fall in
    ("grpo", {"loss_agg_mode": "seq-mean-token-mean"}),
])
def test_token_budget_micro_batches_give_the_loss_and_gradient_of_one_big_batch(make_config, name, hparams):
    budget = 40
    budgeted = make_config("optim.grad_clip=1e9", f"optim.max_tokens_per_micro_batch={budget}")
    whole = make_config("optim.grad_clip=1e9", "optim.micro_batch_size=16")
    model, _, _ = load_policy(whole, progress=False)
    batch = _synthetic_batch(vocab=100, n=12, seed=3, prompt_max=6, response_max=14)
    with torch.no_grad():  # behaviour log-probs near the policy's, so ratios are near 1 (as after generation)
        lp, _ = loop._current_log_prob(model, batch.micro_batch(torch.arange(12)), whole, with_grad=False)
        batch.old_log_prob_flat = (lp + 0.05 * torch.randn_like(lp))[batch.response_mask.bool()]
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    micros = loop._micro_batches(batch, rows, budgeted)
    assert len(micros) >= 3 and sorted(torch.cat(micros).tolist()) == list(range(12))
    for m in micros:
        size = len(m) * int(batch.prompt_lengths[m].max() + batch.response_lengths[m].max())
        assert size <= budget or len(m) == 1
    loss_micro, grad_micro = _loss_and_grad(budgeted, model, batch, rows, name, hparams)
    loss_one, grad_one = _loss_and_grad(whole, model, batch, torch.cat(micros), name, hparams)
    assert loss_micro == pytest.approx(loss_one, rel=1e-5, abs=1e-7)
    assert torch.allclose(grad_micro, grad_one, rtol=1e-4, atol=1e-7)
    assert grad_one.abs().max() > 1e-4 and abs(loss_one) > 1e-6  # a real loss and gradient


# ============================================================================ async snapshots

def test_async_snapshot_is_sent_in_the_compute_dtype(tiny_testbed):
    """float32 masters go to a bf16 worker as bf16: 2 B per parameter, the values rounded once."""
    from transformers import AutoModelForCausalLM

    from stalerl.staleness.async_rollout import pack_state_dict, unpack_state_dict

    model = AutoModelForCausalLM.from_pretrained(tiny_testbed, dtype=torch.float32)
    state = model.state_dict()
    packed = pack_state_dict(model, torch.bfloat16)
    assert set(packed["flats"]) == {"torch.bfloat16"}
    numel = sum(t.numel() for t in state.values())
    assert sum(f.numel() * f.element_size() for f in packed["flats"].values()) == 2 * numel
    unpacked = unpack_state_dict(packed)
    assert all(torch.equal(unpacked[k], v.to(torch.bfloat16)) for k, v in state.items())
    same = unpack_state_dict(pack_state_dict(model))  # no dtype: the weights as they are
    assert all(same[k].dtype == torch.float32 and torch.equal(same[k], v) for k, v in state.items())


# ============================================================================ benchmarks/gpu_check.py

def test_gpu_check_runs_on_a_cpu_at_a_tiny_size(one_thread, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    summary = gpu_check.main(["--tiny", "--steps", "2", "--prompts", "2", "--group-size", "2",
                              "--mini-batches", "1", "--max-new-tokens", "8", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "N = 0.1M parameters" in out and "mean over steps 2..2" in out and "peak RSS" in out
    for key in ("generation_tokens_per_s", "training_tokens_per_s", "training_mfu", "generation_mfu",
                "peak_memory_gb"):
        assert summary[key] > 0, key
    assert 1 <= summary["response_length_mean"] <= 8


def test_readme_one_gpu_command_is_a_valid_config():
    import re
    import shlex
    from pathlib import Path

    from stalerl.training.config import load_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Train a real checkpoint on one GPU", 1)[1]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    args = shlex.split(command)
    assert args[:2] == ["stalerl", "train"]
    config = load_config(None, args[2:])
    assert (config.model.dtype, config.model.master_weights, config.optim.lr) == ("bfloat16", True, 1e-6)
    assert config.optim.max_tokens_per_micro_batch == 32768 and config.model.gradient_checkpointing
