"""stalerl's objectives inside TRL 1.16.0's ``GRPOTrainer``::

    from stalerl.integrations.trl import StaleRLGRPOConfig, StaleRLGRPOTrainer

    args = StaleRLGRPOConfig(output_dir="out", objective="m2po", objective_kwargs={"tau": 0.04},
                             steps_per_generation=4)
    trainer = StaleRLGRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset)

``objective``/``objective_kwargs`` may also be given to the trainer's constructor (they override the
config's). Everything else is TRL's: generation, rewards, group advantages, vLLM, logging.

**Where staleness comes from.** TRL generates ``steps_per_generation`` × ``num_iterations``
micro-batches' worth of completions at once and trains on them over the following steps. When
``gradient_accumulation_steps`` is not a multiple of ``steps_per_generation × num_iterations``,
TRL stores the generating model's log-probs as ``inputs["old_per_token_logps"]``: those are the
behaviour policy's log-probs, and a micro-batch consumed k optimizer steps after its generation has
staleness k. Example: ``gradient_accumulation_steps=1, steps_per_generation=4`` gives staleness
0, 1, 2, 3. Otherwise (on-policy) ``old_per_token_logps`` is absent and the current log-probs,
detached, stand in (ratio 1). With vLLM, ``inputs["sampling_per_token_logps"]`` (the inference
engine's log-probs) become the objectives' ``rollout_log_prob`` (``tis``, ``reference="rollout"``).

**Loss normalisation** follows TRL's loss types, chosen by the objective's ``loss_agg_mode``:

* ``token-mean`` (default of every objective but gspo): TRL's ``dapo``/``cispo`` normaliser, the
  number of completion tokens of the accumulation window (``num_items_in_batch`` over processes,
  scaled by ``gradient_accumulation_steps / steps_per_generation``): a token mean over the whole
  optimizer step, independent of how it is split into micro-batches.
* ``seq-mean-token-mean`` (gspo's default): TRL's ``grpo``: per micro-batch mean over sequences of
  the per-sequence token mean, divided by the number of accumulation steps.
* ``seq-mean-token-sum``/``-norm``: sums per sequence, as above; ``-norm`` divides by
  ``loss_scale_factor`` or else ``max_completion_length`` (TRL's ``dr_grpo``).
* ``token-sum``: sum over tokens.

So ``objective="grpo"`` with ``epsilon_low=args.epsilon, epsilon_high=args.epsilon_high`` gives
TRL's ``dapo`` loss (and with ``loss_agg_mode="seq-mean-token-mean"`` TRL's ``grpo``), and
``objective="cispo"`` with ``epsilon_low=1, epsilon_high=<TRL epsilon_high> - 1`` gives TRL's
``cispo`` (TRL's CISPO bound is an absolute cap, stalerl's is ``1 + epsilon_high``). The trainer's
``loss_type``, ``epsilon`` and ``epsilon_high`` are not used: the objective's hyperparameters are.
TRL's KL term (``beta``), high-entropy token mask (``top_entropy_quantile``), vLLM importance
correction (skipped when the objective itself uses ``rollout_log_prob``), static entropy bonus
and MoE auxiliary loss apply as in TRL; ``delta``, ``off_policy_mask_threshold``,
``importance_sampling_level="sequence"`` (use ``objective="gspo"``) and the adaptive entropy
controller are refused.

**Batch statistics** (M2PO's M̂2, RandomTraj's N_acc, AC-MIS-PO's quantile) are those of each
``_compute_loss`` call, i.e. one micro-batch (``per_device_train_batch_size`` completions per
process), gathered over processes when ``torch.distributed`` is initialised (every process makes
the same calls). With ``gradient_accumulation_steps=1`` a call is the whole optimizer mini-batch,
as the papers define it. Stateful objectives step once per training call (never in evaluation);
their state is saved as ``stalerl_objective.pt`` in every checkpoint and restored on resume.

Every objective metric is logged under its stalerl name (``actor/m2``, ``actor/pg_clipfrac``,
``actor/traj_accept_frac``, ...) in ``self._metrics[mode]``, with ``entropy`` and ``policy_loss``:
one value per optimizer step, pooled over the calls of the accumulation window and over the
processes by :func:`stalerl.objectives.reduce_metrics` (maxima as maxima, rates over
trajectories, spreads from pooled moments), as ``stalerl train`` logs them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from stalerl import objectives
from stalerl.objectives import core
from stalerl.objectives.base import pool_stats

try:
    from trl import GRPOConfig, GRPOTrainer
except ImportError as _err:  # pragma: no cover - exercised only without TRL
    raise ImportError("stalerl.integrations.trl needs TRL (pip install 'stalerl[trl]', trl==1.16.0)") from _err

STATE_FILE = "stalerl_objective.pt"
"""Name of the objective-state file written into every checkpoint directory."""

_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


@dataclass
class StaleRLGRPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the stalerl objective that replaces TRL's ``loss_type``."""

    objective: str = field(
        default="grpo",
        metadata={"help": "stalerl objective or preset name (stalerl.objectives.available(presets=True)); "
                          "it replaces loss_type/epsilon/epsilon_high."},
    )
    objective_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Hyperparameters of the objective, a dict or a JSON object string "
                          "(stalerl.objectives.defaults(name) lists them)."},
    )


def _parse_kwargs(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError(f"objective_kwargs must be a dict or a JSON object, got {type(value).__name__}")
    return dict(value)


class StaleRLGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose policy loss is a stalerl objective (module docstring).

    Args (beyond ``GRPOTrainer``'s):
        objective: stalerl objective or preset name; default ``args.objective`` or ``"grpo"``.
        objective_kwargs: its hyperparameters, merged over ``args.objective_kwargs``.
    """

    def __init__(self, *args: Any, objective: str | None = None, objective_kwargs: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        name = objective or getattr(self.args, "objective", None) or "grpo"
        hparams = _parse_kwargs(getattr(self.args, "objective_kwargs", None))
        hparams.update(_parse_kwargs(objective_kwargs))
        self.objective_name = name
        self.objective = objectives.build(name, **hparams)
        self._stalerl_pending: dict[str, list] = {}
        refused = {
            "delta": self.args.delta is not None,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "importance_sampling_level='sequence' (use objective='gspo')": self.importance_sampling_level != "token",
            "use_adaptive_entropy": bool(getattr(self, "use_adaptive_entropy", False)),
        }
        bad = [k for k, v in refused.items() if v]
        if bad:
            raise ValueError(f"StaleRLGRPOTrainer does not support: {', '.join(bad)}")

    # ------------------------------------------------------------------ loss
    def _uses_rollout_log_prob(self) -> bool:
        return self.objective.requires_rollout_log_prob or getattr(self.objective.config, "reference", "") == "rollout"

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **{k: inputs.get(k) for k in _MULTIMODAL_KEYS},
        )
        mode = "train" if self.model.training else "eval"

        # Behaviour log-probs: TRL's old_per_token_logps when generation is reused (stale), else on-policy.
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        rollout = inputs.get("sampling_per_token_logps")
        if rollout is not None:  # vLLM could not score some tokens (NaN): fall back to the behaviour log-prob
            rollout = torch.where(torch.isnan(rollout), old, rollout)

        saved = self.objective.state_dict() if mode == "eval" else None
        out = self.objective.per_token_loss(per_token_logps, old, inputs["advantages"], mask, rollout_log_prob=rollout)
        loss_mat, agg_mask = out.loss_mat, out.agg_mask
        if saved is not None:  # evaluation never advances AC-MIS-PO's controller or RandomTraj's generator
            self.objective.load_state_dict(saved)

        # Token weights TRL applies to every loss type.
        if self.top_entropy_quantile < 1.0:
            loss_mat = loss_mat * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        if self.use_vllm and self.vllm_importance_sampling_correction and not self._uses_rollout_log_prob():
            loss_mat = loss_mat * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old)
            loss_mat = loss_mat + self.beta * per_token_kl.to(loss_mat.dtype)

        loss = self._aggregate(loss_mat, agg_mask, inputs, mode).to(per_token_logps.dtype)
        policy_loss = loss.detach()

        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if self._entropy_bonus_enabled:  # static coefficient (the adaptive controller is refused)
            entropy_loss = (entropies * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
            loss = loss - self.entropy_coef * entropy_loss
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_metrics(mode, out, entropies, mask, policy_loss,
                          per_token_kl if self.beta != 0.0 else None)
        return loss

    def _aggregate(self, loss_mat, agg_mask, inputs, mode) -> torch.Tensor:
        """TRL's normalisation for the objective's ``loss_agg_mode`` (module docstring)."""
        agg = self.objective.config.loss_agg_mode
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if agg == "token-mean":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return core.aggregate(loss_mat, agg_mask, agg, num_tokens=normalizer)
        if agg == "token-sum":
            return core.aggregate(loss_mat, agg_mask, agg)
        scale = self.objective.config.loss_scale_factor
        return core.aggregate(
            loss_mat, agg_mask, agg, num_seqs=float(loss_mat.shape[0] * accumulation),
            loss_scale_factor=self.max_completion_length if scale is None else scale,
        )

    def _log_metrics(self, mode, out, entropies, mask, policy_loss, per_token_kl) -> None:
        def global_masked_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        self._metrics[mode]["entropy"].append(global_masked_mean(entropies))
        if per_token_kl is not None:
            self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl))
        self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
        # Objective metrics pool over the optimizer step: every call of the accumulation window, on
        # every process (objectives.reduce_metrics), then one value is logged for the step.
        pending = self._stalerl_pending.setdefault(mode, [])
        pending.append(out)
        window = self.current_gradient_accumulation_steps if mode == "train" else 1
        if mode == "train" and (self._step + 1) % window != 0:
            return
        gather = (lambda x: self.accelerator.gather(x.to(self.accelerator.device)).cpu()) \
            if self.accelerator.num_processes > 1 else None
        # statistics a call already gathered over the processes are pooled over the calls only
        batch = pool_stats([o.batch_metrics for o in pending])
        values = objectives.reduce_metrics([o.stats for o in pending], batch=batch, gather=gather)
        pending.clear()
        for name, value in values.items():
            self._metrics[mode][name].append(value)

    # ------------------------------------------------------------------ objective state in checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        state = self.objective.state_dict()
        if state and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save({"objective": self.objective_name, "state": state}, os.path.join(folder, STATE_FILE))

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        path = None if checkpoint is None else os.path.join(checkpoint, STATE_FILE)
        if path is not None and os.path.isfile(path):
            saved = torch.load(path, weights_only=False)
            self.objective.load_state_dict(saved["state"])
