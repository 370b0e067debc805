"""stalerl inside TRL 1.16.0 (``stalerl.integrations.trl.StaleRLGRPOTrainer``, docs/INTEGRATIONS.md).

A tiny offline setup (character WordLevel tokenizer, 2-layer Qwen3 of width 32, a toy reward):

* training runs for every objective with ``steps_per_generation=2`` (so TRL keeps the behaviour
  policy's ``old_per_token_logps`` and the second step trains on stale data): finite loss, stalerl's
  metrics in ``trainer._metrics``; the objective state is checkpointed;
* on one fixed batch, ``objective="grpo"`` equals TRL's own ``loss_type="dapo"`` (token-mean) and
  ``"grpo"`` (seq-mean-token-mean), and ``objective="cispo"`` equals TRL's ``cispo`` (stalerl
  ``epsilon_high`` = TRL ``epsilon_high`` − 1), in value and gradient, under gradient accumulation.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is a test dependency (pip install stalerl[test])")
datasets = pytest.importorskip("datasets")

from stalerl import objectives  # noqa: E402
from stalerl.integrations.trl import STATE_FILE, StaleRLGRPOConfig, StaleRLGRPOTrainer  # noqa: E402

CHARS = list("0123456789+-=? abcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def tiny_model(vocab_size: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return Qwen3ForCausalLM(cfg)


def dataset():
    return datasets.Dataset.from_list([{"prompt": f"{a}+{b}="} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)] * 2])


def reward_digits(completions, **kwargs):
    """Toy reward: the share of digits in the completion (varies, so advantages are non-zero)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                steps_per_generation=2, gradient_accumulation_steps=1, max_completion_length=8, max_steps=2,
                learning_rate=5e-3, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
                temperature=1.0, seed=0, disable_tqdm=True)
    base.update(kw)
    return StaleRLGRPOConfig(**base)


TRAIN_KWARGS = {"mispo": {"traj_low": 0.9, "traj_high": 1.1}, "ac_mispo": {"warmup_train_steps": 2},
                "mispo_random_traj": {"traj_low": 0.9, "traj_high": 1.1}}
FAST = ("grpo", "m2po")


@pytest.mark.parametrize("name", [
    n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in objectives.available() if n != "tis"
])
def test_trains_with_every_objective(name, tokenizer, tmp_path):
    trainer = StaleRLGRPOTrainer(
        model=tiny_model(len(tokenizer)), reward_funcs=reward_digits, train_dataset=dataset(),
        processing_class=tokenizer, args=config(tmp_path, objective=name, objective_kwargs=TRAIN_KWARGS.get(name)),
    )
    assert trainer.objective.name == name
    seen = {}
    original = trainer._compute_loss

    def spy(model, inputs):
        seen.setdefault("old", []).append("old_per_token_logps" in inputs)
        loss = original(model, inputs)
        seen.setdefault("loss", []).append(loss.item())
        assert set(trainer._metrics["train"]) >= {"actor/ppo_kl", "actor/pg_clipfrac", "entropy"}
        return loss

    trainer._compute_loss = spy
    trainer.train()
    assert all(seen["old"]), "TRL did not keep the behaviour log-probs (no staleness)"
    assert len(seen["loss"]) == 2 and all(math.isfinite(x) for x in seen["loss"])
    # trainer._metrics["train"] is emptied at every log (logging_steps=1): read what it held from the logs
    logs = [entry for entry in trainer.state.log_history if "policy_loss" in entry]
    assert len(logs) == 2
    metrics = {k: [entry[k] for entry in logs] for k in logs[1] if all(k in entry for entry in logs)}
    for key in ("actor/ppo_kl", "actor/pg_clipfrac", "actor/m2", "entropy", "policy_loss"):
        assert key in metrics and all(math.isfinite(v) for v in metrics[key]), key
    assert metrics["actor/m2"][0] == 0.0 and metrics["actor/m2"][1] > 0.0  # step 2 trains on stale data
    if name == "m2po":
        assert "actor/m2_after" in metrics
    if name == "m2po_capped":
        assert "actor/m2_cap" in metrics
    if "mispo" in name:
        assert "actor/token_accept_frac" in metrics
    if name == "ac_mispo":
        assert trainer.objective.state_dict()["step"] == 2 and "actor/traj_bound" in metrics


def test_tis_needs_rollout_log_probs(tokenizer, tmp_path):
    """Without vLLM TRL has no inference-engine log-probs, which ``tis`` requires."""
    trainer = StaleRLGRPOTrainer(model=tiny_model(len(tokenizer)), reward_funcs=reward_digits,
                                 train_dataset=dataset(), processing_class=tokenizer,
                                 args=config(tmp_path), objective="tis")
    with pytest.raises(ValueError, match="rollout_log_prob"):
        trainer.train()


def test_objective_state_is_checkpointed(tokenizer, tmp_path):
    args = config(tmp_path, objective="ac_mispo", objective_kwargs='{"warmup_train_steps": 2}', save_strategy="steps",
                  save_steps=2, save_only_model=False)
    trainer = StaleRLGRPOTrainer(model=tiny_model(len(tokenizer)), reward_funcs=reward_digits,
                                 train_dataset=dataset(), processing_class=tokenizer, args=args)
    trainer.train()
    saved = torch.load(os.path.join(tmp_path, "checkpoint-2", STATE_FILE), weights_only=False)
    assert saved["objective"] == "ac_mispo" and saved["state"] == trainer.objective.state_dict()
    fresh = StaleRLGRPOTrainer(model=tiny_model(len(tokenizer)), reward_funcs=reward_digits,
                               train_dataset=dataset(), processing_class=tokenizer, args=args)
    fresh._load_rng_state(os.path.join(tmp_path, "checkpoint-2"))
    assert fresh.objective.state_dict() == saved["state"]


def test_refuses_unsupported_trl_options(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="importance_sampling_level"):
        StaleRLGRPOTrainer(model=tiny_model(len(tokenizer)), reward_funcs=reward_digits, train_dataset=dataset(),
                           processing_class=tokenizer, args=config(tmp_path, importance_sampling_level="sequence"))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        StaleRLGRPOTrainer(model=tiny_model(len(tokenizer)), reward_funcs=reward_digits, train_dataset=dataset(),
                           processing_class=tokenizer, args=config(tmp_path), objective="m2po",
                           objective_kwargs={"taux": 1})


# ----------------------------------------------------------------------------- same loss as TRL's
def fixed_inputs(tokenizer, seed=0, b=6, t=7):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, len(tokenizer), (b, 4), generator=g)
    completion_ids = torch.randint(3, len(tokenizer), (b, t), generator=g)
    completion_mask = torch.ones(b, t, dtype=torch.long)
    for i in range(b):
        completion_mask[i, t - 1 - (i % 4):] = 0  # ragged lengths
    return {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.randn(b, generator=g),
        "num_items_in_batch": completion_mask.sum() * 3,  # a generation batch of 3 micro-batches
    }


def loss_and_grad(trainer, inputs):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer._compute_loss(model, inputs)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


@pytest.mark.parametrize("trl_loss,stalerl_name,hparams", [
    ("dapo", "grpo", {"epsilon_low": 0.2, "epsilon_high": 0.28}),
    ("bnpo", "grpo", {"epsilon_low": 0.2, "epsilon_high": 0.28}),
    ("grpo", "grpo", {"epsilon_low": 0.2, "epsilon_high": 0.28, "loss_agg_mode": "seq-mean-token-mean"}),
    ("cispo", "cispo", {"epsilon_low": 1.0, "epsilon_high": 5.0 - 1.0}),
])
def test_same_loss_as_trl(trl_loss, stalerl_name, hparams, tokenizer, tmp_path):
    ga, spg = 3, 3
    common = dict(gradient_accumulation_steps=ga, steps_per_generation=spg, epsilon=0.2,
                  epsilon_high=5.0 if trl_loss == "cispo" else 0.28)
    model = tiny_model(len(tokenizer))
    reference = trl.GRPOTrainer(model=model, reward_funcs=reward_digits, train_dataset=dataset(),
                                processing_class=tokenizer,
                                args=trl.GRPOConfig(**_grpo_kwargs(tmp_path), **common, loss_type=trl_loss))
    ours = StaleRLGRPOTrainer(model=model, reward_funcs=reward_digits, train_dataset=dataset(),
                              processing_class=tokenizer, args=StaleRLGRPOConfig(**_grpo_kwargs(tmp_path), **common),
                              objective=stalerl_name, objective_kwargs=hparams)
    inputs = fixed_inputs(tokenizer)
    with torch.no_grad():  # behaviour log-probs: the current ones, perturbed (stale data)
        current, _, _ = reference._get_per_token_logps_and_entropies(
            model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1))
    g = torch.Generator().manual_seed(1)
    inputs["old_per_token_logps"] = current + 0.4 * torch.randn(current.shape, generator=g)
    for trainer in (reference, ours):
        trainer.current_gradient_accumulation_steps = ga
    ours._step = ga - 1  # the last call of an accumulation window: the step's metrics are logged
    ref_loss, ref_grad = loss_and_grad(reference, inputs)
    got_loss, got_grad = loss_and_grad(ours, inputs)
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert len(ours._metrics["train"]["actor/pg_clipfrac"]) == 1 and "entropy" in ours._metrics["train"]


def _grpo_kwargs(tmp_path):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=3,
                max_completion_length=7, use_cpu=True, report_to=[], save_strategy="no", seed=0)


def test_metrics_pool_over_the_accumulation_window(tokenizer, tmp_path):
    # two micro-batches of an accumulation window log what one call on both logs: one value each
    model = tiny_model(len(tokenizer))

    def trainer(ga):
        t = StaleRLGRPOTrainer(model=model, reward_funcs=reward_digits, train_dataset=dataset(),
                               processing_class=tokenizer, objective="mispo",
                               objective_kwargs={"traj_low": 0.9, "traj_high": 1.1},
                               args=StaleRLGRPOConfig(**_grpo_kwargs(tmp_path), gradient_accumulation_steps=ga,
                                                      steps_per_generation=ga))
        t.current_gradient_accumulation_steps = ga
        return t

    inputs = fixed_inputs(tokenizer, b=6)
    whole, split = trainer(1), trainer(2)
    with torch.no_grad():  # stale behaviour log-probs: the current ones, perturbed
        current, _, _ = whole._get_per_token_logps_and_entropies(
            model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1))
    g = torch.Generator().manual_seed(2)
    shift = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.5]).unsqueeze(-1)  # rows 1, 3, 5: rho = e^-0.5, rejected
    inputs["old_per_token_logps"] = current + shift + 0.05 * torch.randn(current.shape, generator=g)
    loss_and_grad(whole, inputs)
    for k, rows in enumerate((slice(0, 2), slice(2, 6))):
        part = {key: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for key, v in inputs.items()}
        split._step = k
        loss_and_grad(split, part)
    assert 0 < whole._metrics["train"]["actor/traj_accept_frac"][0] < 1
    for key in ("actor/ratio_max", "actor/pg_clipfrac", "actor/traj_accept_frac", "actor/accepted_log_ratio_std"):
        assert len(split._metrics["train"][key]) == 1
        assert split._metrics["train"][key][0] == pytest.approx(whole._metrics["train"][key][0], rel=1e-5, abs=1e-7), key
