"""Loss terms added to the objective: KL to a frozen reference policy and an entropy bonus.

Per micro-batch, with ``agg`` the objective's own aggregation (``loss_agg_mode`` over the whole
optimizer mini-batch, so micro-batch terms add up as the objective's do)::

    loss = objective_loss + kl_loss_coef * agg(kl(log pi, log pi_ref)) - entropy_coeff * agg(H(pi))

as verl's actor (``dp_actor.update_policy``: ``policy_loss = pg_loss - entropy_coeff * entropy +
kl_loss_coef * kl_loss``). The per-token KL estimators are verl's ``core_algos.kl_penalty``
(``tests/test_training_options.py`` compares :func:`kl_estimate` with it), after J. Schulman,
"Approximating KL divergence" (2020): k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) + log r - 1
with ``log r = log pi - log pi_ref``.

The reference policy is the run's initial policy (``model.path``), loaded once when
``algorithm.kl_loss_coef > 0``, in eval mode with ``requires_grad=False``; its log-probs are
computed without grad for each micro-batch (the same numbers verl computes at generation time,
since the reference never changes). Logged per update: ``actor/kl_loss`` (token mean of the
estimator), ``actor/kl_coef``, ``actor/entropy_loss`` (token mean of the entropy, with its
gradient in the loss when ``entropy_coeff > 0``).
"""

from __future__ import annotations

from typing import Any

import torch

from stalerl.models.logprobs import completion_log_probs
from stalerl.objectives import core

__all__ = ["kl_estimate", "LossTerms", "build_loss_terms"]


def kl_estimate(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL estimate ``(B, T)`` of verl's ``kl_penalty(log_prob, ref_log_prob, kind)``."""
    base = kind[:-1] if kind.endswith("+") else kind
    if base in ("kl", "k1"):
        value = log_prob - ref_log_prob
    elif base == "abs":
        value = (log_prob - ref_log_prob).abs()
    elif base in ("mse", "k2"):
        value = 0.5 * (log_prob - ref_log_prob).square()
    elif base in ("low_var_kl", "k3"):
        kl = core.log_ratio(ref_log_prob, log_prob)  # clamped to [-20, 20] as verl does, for stability
        value = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    else:
        raise ValueError(f"algorithm.kl_loss_type={kind!r} is not a verl kl_loss_type")
    if not kind.endswith("+") or base in ("mse", "k2"):
        return value
    # straight-through: the value of the estimator with the (unbiased) gradient of k2
    k2 = 0.5 * (log_prob - ref_log_prob).square()
    return k2 - k2.detach() + value.detach()


class LossTerms:
    """The KL and entropy terms of one run; ``terms(...)`` per micro-batch (see the module docstring)."""

    def __init__(self, algorithm_config, reference=None, *, temperature: float = 1.0, chunk_size: int = 1024) -> None:
        self.config = algorithm_config
        self.reference = reference
        self.temperature = temperature
        self.chunk_size = chunk_size

    @torch.no_grad()
    def reference_log_prob(self, micro: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, R)`` log-probs of the micro-batch's responses under the frozen reference."""
        lp, _ = completion_log_probs(
            self.reference, micro["input_ids"], micro["attention_mask"], micro["response_mask"].shape[1],
            temperature=self.temperature, chunk_size=self.chunk_size, compute_entropy=False,
        )
        return lp.float()

    def __call__(self, micro: dict[str, torch.Tensor], log_prob: torch.Tensor, entropy: torch.Tensor | None,
                 stats, agg_mode: str, loss_scale_factor: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``(extra loss, metrics)`` of a micro-batch; ``stats`` carries the mini-batch normalisers."""
        mask = micro["response_mask"].to(log_prob.dtype)
        n_tok = mask.sum().clamp(min=1)

        def agg(mat: torch.Tensor) -> torch.Tensor:
            return core.aggregate(mat, mask, agg_mode, num_tokens=stats.num_tokens, num_seqs=stats.num_seqs,
                                  loss_scale_factor=loss_scale_factor)

        extra = log_prob.new_zeros(())
        metrics: dict[str, float] = {}
        cfg = self.config
        if cfg.kl_loss_coef > 0:
            kl = kl_estimate(log_prob, self.reference_log_prob(micro), cfg.kl_loss_type)
            extra = extra + cfg.kl_loss_coef * agg(kl)
            metrics["actor/kl_loss"] = float((kl.detach() * mask).sum() / n_tok)
            metrics["actor/kl_coef"] = float(cfg.kl_loss_coef)
        if cfg.entropy_coeff > 0 and entropy is not None:
            extra = extra - cfg.entropy_coeff * agg(entropy.float())
            metrics["actor/entropy_loss"] = float((entropy.detach().float() * mask).sum() / n_tok)
        return extra, metrics


def build_loss_terms(config, model, model_path: str) -> LossTerms | None:
    """The run's :class:`LossTerms`, or None when both coefficients are 0 (the default).

    The reference is loaded from ``model_path`` (the initial policy, also on resume) once, here.
    """
    ac = config.algorithm
    if ac.kl_loss_coef <= 0 and ac.entropy_coeff <= 0:
        return None
    reference = None
    if ac.kl_loss_coef > 0:
        reference = load_reference(model_path, model)
    return LossTerms(ac, reference, temperature=config.rollout.temperature, chunk_size=config.model.logprob_chunk_size)


def load_reference(model_path: str, like) -> Any:
    """A frozen copy of the policy saved at ``model_path``, on ``like``'s device and dtype."""
    from transformers import AutoModelForCausalLM

    param = next(like.parameters())
    reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=param.dtype).to(param.device)
    reference.eval()
    reference.requires_grad_(False)
    return reference
