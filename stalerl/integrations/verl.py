"""stalerl's objectives as verl 0.9.1 policy losses (the ``verl.plugins`` entry point).

``pip install stalerl[verl]`` declares the entry point ``stalerl = stalerl.integrations.verl:register``.
verl imports every ``verl.plugins`` entry point in every process when ``verl`` is imported (the
driver and every Ray worker); verl *loads* the entry point's object but does not call it, so this
module registers the losses when it is imported. :func:`register` is idempotent and may be called
again, e.g. after :func:`stalerl.objectives.register` added a user objective.

**Names.** Every objective is registered as ``stalerl_<name>``. It is also registered under its
plain ``<name>`` unless verl already has a loss of that name — verl's ``gspo`` and ``cispo`` stay
verl's (a second registration would overwrite them). With verl 0.9.1:

========================  =========================================================
``loss_mode``             loss
========================  =========================================================
``grpo``, ``no_tr``, ``gspo_token``, ``m2po``, ``m2po_capped``, ``mispo``,
``mispo_token_only``, ``mispo_random_traj``, ``ac_mispo``, ``minpro``, ``tis``
                          stalerl's (also under ``stalerl_<name>``)
``stalerl_gspo``          stalerl's GSPO (``gspo`` is verl's GSPO-token)
``stalerl_cispo``         stalerl's CISPO (``cispo`` is verl's)
========================  =========================================================

**Hyperparameters**, lowest precedence first:

1. stalerl's defaults (``stalerl.objectives.defaults(name)``);
2. verl's own actor fields where the objective has the matching hyperparameter:
   ``clip_ratio_low``/``clip_ratio_high`` (falling back to ``clip_ratio``) -> ``epsilon_low``/
   ``epsilon_high`` and ``clip_ratio_c`` -> ``dual_clip``, so ``stalerl_grpo``/``stalerl_cispo``
   reproduce verl's ``vanilla``/``cispo`` for the same config; objectives with mini-batch statistics
   keep stalerl's ``stats_scope="mini"`` (see below);
3. the environment variable ``STALERL_HPARAMS``, a JSON object (``'{"tau": 0.04}'``);
4. ``actor_rollout_ref.actor.policy_loss.stalerl``, a dict. verl's ``PolicyLossConfig`` refuses
   unknown keys, so select this module's subclass through verl's ``_target_`` mechanism::

       actor_rollout_ref.actor.policy_loss._target_=stalerl.integrations.verl.StaleRLPolicyLossConfig
       +actor_rollout_ref.actor.policy_loss.stalerl='{tau: 0.04}'

The aggregation is verl's: the ``loss_agg_mode`` verl passes (``actor.loss_agg_mode``) and
``config.global_batch_info`` (dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)
go to verl's own ``agg_loss``; a ``loss_agg_mode``/``loss_scale_factor`` in the stalerl dict
overrides them for the policy loss only. verl's ``rollout_is_weights`` (rollout correction)
multiply the per-token loss before aggregation, as in verl's built-in losses.

**Mini-batch statistics.** verl calls a policy loss once per micro-batch. The batch statistics of
``m2po``, ``m2po_capped``, ``mispo_random_traj`` and ``ac_mispo`` (M̂2, N_acc, the acceptance
quantile) are the whole optimizer mini-batch's when the actor runs stalerl's worker
(:mod:`stalerl.integrations.verl_actor`): it computes them in a no-grad pass before the
micro-batches and hands them to this loss (:func:`stalerl.integrations.verl_minibatch.current_stats`);
AC-MIS-PO's controller then steps once per mini-batch, identically on every rank, and is saved with
verl's actor checkpoint (its warm-up counts training steps: set ``updates_per_train_step`` to the
mini-batches per training step, or without the worker to the loss calls per training step). Without that worker the loss falls back to the statistics of each
micro-batch alone and warns once per objective; ``stats_scope: micro`` in the stalerl dict selects
that behaviour explicitly (the released M2PO code's) without a warning.
Metrics: where the objective's statistics span the ranks within a call (``stats_scope="mini"``
without the worker), a call's metrics are pooled over the ranks with
:func:`stalerl.objectives.reduce_metrics` (maxima as maxima, rates over trajectories, spreads
from pooled moments); verl itself then averages the micro-batches' values, so with more than one
micro-batch per mini-batch a maximum or a spread is verl's mean of per-micro-batch values.

**Limits.** verl passes no inference-engine log-probs to a policy loss, so ``reference="rollout"``
MIS-PO is unavailable and ``tis`` is computed as the ``grpo`` loss times verl's own
``rollout_is_weights``: enable ``algorithm.rollout_correction.rollout_is=token`` with
``rollout_is_threshold=C`` (verl's truncated IS weight min(pi_old/pi_rollout, C) is TIS's weight).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from stalerl import objectives
from stalerl.integrations import _as_plain, verl_minibatch
from stalerl.objectives import distributed as dist_utils

try:
    from verl.workers.config import PolicyLossConfig as _VerlPolicyLossConfig
except ImportError as _err:  # pragma: no cover - exercised only without verl
    raise ImportError(
        "stalerl.integrations.verl needs verl (pip install 'stalerl[verl]', verl==0.9.1)"
    ) from _err

PREFIX = "stalerl_"
"""Every objective is registered as ``PREFIX + name``."""
HPARAMS_ENV = "STALERL_HPARAMS"
"""Environment variable holding a JSON object of stalerl hyperparameters (lower precedence than the config)."""
CONFIG_KEY = "stalerl"
"""Key of the stalerl hyperparameter dict inside ``actor.policy_loss``."""

_VERL_SUBSTITUTE = {"tis": "grpo"}
"""verl gives a policy loss no rollout log-probs: its ``tis`` is ``grpo`` times verl's rollout_is_weights."""

_LOSS_FNS: dict[str, Callable] = {}
_REGISTERED: dict[str, str] = {}
_CACHE: dict[tuple[str, str], objectives.Objective] = {}
_PENDING_STATE: dict[tuple[str, str], dict[str, Any]] = {}
_WARNED: set[str] = set()


@dataclass
class StaleRLPolicyLossConfig(_VerlPolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus a ``stalerl`` dict of stalerl hyperparameters.

    Select it with ``actor_rollout_ref.actor.policy_loss._target_=stalerl.integrations.verl.StaleRLPolicyLossConfig``
    and pass ``+actor_rollout_ref.actor.policy_loss.stalerl='{tau: 0.04}'``. When ``loss_mode`` is a stalerl
    loss the dict is validated here, so a misspelt hyperparameter fails when verl builds its config
    (in the driver) rather than at the first update.
    """

    stalerl: dict = field(default_factory=dict)
    """Hyperparameters of the selected stalerl objective (``stalerl.objectives.defaults(name)`` lists them)."""

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # pragma: no cover - PolicyLossConfig has none in 0.9.1
            parent()
        name = objective_name(self.loss_mode)
        if name is not None:
            hp = _as_plain(self.stalerl) or {}
            if not isinstance(hp, dict):
                raise ValueError(f"policy_loss.{CONFIG_KEY} must be a dict, got {type(hp).__name__}")
            _build(name, {k: v for k, v in hp.items() if k not in ("loss_agg_mode", "loss_scale_factor")}, cache=False)


def objective_name(loss_mode: str | None) -> str | None:
    """The stalerl objective behind a verl ``loss_mode`` (``None`` when it is not stalerl's)."""
    if loss_mode is None:
        return None
    if loss_mode in _REGISTERED:
        return _REGISTERED[loss_mode]
    if loss_mode.startswith(PREFIX) and loss_mode[len(PREFIX):] in objectives.REGISTRY:
        return loss_mode[len(PREFIX):]
    return None


def registered_names() -> dict[str, str]:
    """verl ``loss_mode`` -> stalerl objective, for every name :func:`register` registered."""
    return dict(_REGISTERED)


def objective_cache() -> dict[tuple[str, str], objectives.Objective]:
    """This process's objectives, keyed by (objective, JSON of hyperparameters).

    Use it to read or restore state (``obj.state_dict()``), e.g. AC-MIS-PO's controller.
    """
    return _CACHE


def _build(name: str, hparams: dict[str, Any], cache: bool = True) -> objectives.Objective:
    base = _VERL_SUBSTITUTE.get(name, name)
    if base != name:
        if "tis_cap" in hparams:
            raise ValueError(
                "in verl, tis's cap is verl's algorithm.rollout_correction.rollout_is_threshold; "
                "remove tis_cap from the stalerl hyperparameters"
            )
        hparams = {k: v for k, v in hparams.items() if k != "tis_cap"}
    if not cache:
        return objectives.build(base, **hparams)
    key = (name, json.dumps(hparams, sort_keys=True, default=repr))
    obj = _CACHE.get(key)
    if obj is None:
        obj = _CACHE[key] = objectives.build(base, **hparams)
        if key in _PENDING_STATE:  # restored from a checkpoint before the first loss call
            obj.load_state_dict(_PENDING_STATE.pop(key))
    return obj


def objective_states() -> dict[str, dict[str, Any]]:
    """The state of every stateful objective in this process, keyed by the JSON of its cache key
    (what stalerl's verl worker writes into each actor checkpoint)."""
    return {json.dumps(list(k)): obj.state_dict() for k, obj in _CACHE.items() if obj.state_dict()}


def load_objective_states(states: dict[str, dict[str, Any]]) -> None:
    """Restore :func:`objective_states` output: into cached objectives now, or when they are built."""
    for text, state in states.items():
        key = tuple(json.loads(text))
        if key in _CACHE:
            _CACHE[key].load_state_dict(state)
        else:
            _PENDING_STATE[key] = state


def stats_objective(config: Any) -> objectives.Objective | None:
    """The (cached) objective whose mini-batch statistics the verl actor config ``config`` needs
    (``None`` when its loss is not stalerl's or has no mini-batch statistics, or ``stats_scope: micro``)."""
    name = objective_name(_get(_get(config, "policy_loss"), "loss_mode"))
    if name is None:
        return None
    hp = resolve_hparams(name, config)
    hp.pop("loss_agg_mode", None)
    hp.pop("loss_scale_factor", None)
    obj = _build(name, hp)
    return obj if obj.uses_batch_stats and obj.mini_batch_scoped else None


def _micro_fallback(name: str, hp: dict[str, Any]) -> objectives.Objective:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"verl loss {name!r}: no mini-batch statistics from stalerl's actor worker, so M̂2/N_acc/the "
            "acceptance quantile are taken per micro-batch (not the papers' mini-batch). Run verl with "
            "stalerl's worker (python -m stalerl.integrations.verl_main, see docs/INTEGRATIONS.md) or set "
            "stats_scope: micro in actor.policy_loss.stalerl to choose this explicitly.",
            stacklevel=3,
        )
    return _build(name, {**hp, "stats_scope": "micro"})


def _get(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    getter = getattr(config, "get", None)
    if getter is not None:
        try:
            return getter(key, default)
        except Exception:  # noqa: BLE001 - structured configs raise on unknown keys
            return default
    return getattr(config, key, default)


def resolve_hparams(name: str, config: Any = None) -> dict[str, Any]:
    """The hyperparameters objective ``name`` gets from a verl actor config (module docstring)."""
    fields = objectives.defaults(name)
    hp: dict[str, Any] = {}
    if config is not None:
        clip = _get(config, "clip_ratio")
        low, high = _get(config, "clip_ratio_low"), _get(config, "clip_ratio_high")
        low, high = clip if low is None else low, clip if high is None else high
        if "epsilon_low" in fields and low is not None:
            hp["epsilon_low"] = float(low)
        if "epsilon_high" in fields and high is not None:
            hp["epsilon_high"] = float(high)
        clip_c = _get(config, "clip_ratio_c")
        if "dual_clip" in fields and clip_c is not None:
            hp["dual_clip"] = float(clip_c)
    env = os.environ.get(HPARAMS_ENV, "").strip()
    if env:
        try:
            env_hp = json.loads(env)
        except json.JSONDecodeError as err:
            raise ValueError(f"{HPARAMS_ENV} must hold a JSON object: {err}") from None
        if not isinstance(env_hp, dict):
            raise ValueError(f"{HPARAMS_ENV} must hold a JSON object, got {env!r}")
        hp.update(env_hp)
    user = _as_plain(_get(_get(config, "policy_loss"), CONFIG_KEY)) or {}
    if not isinstance(user, dict):
        raise ValueError(f"policy_loss.{CONFIG_KEY} must be a dict, got {type(user).__name__}")
    hp.update(user)
    return hp


def make_policy_loss(name: str) -> Callable:
    """A verl policy-loss function computing stalerl objective ``name`` (verl's exact signature)."""
    if name not in objectives.REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(objectives.available())}")

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from verl.trainer.ppo.core_algos import agg_loss

        hp = resolve_hparams(name, config)
        mode = hp.pop("loss_agg_mode", loss_agg_mode)
        batch_info = dict(_get(config, "global_batch_info", None) or {})
        if "loss_scale_factor" in hp:
            batch_info["loss_scale_factor"] = hp.pop("loss_scale_factor")
        obj = _build(name, hp)
        if _VERL_SUBSTITUTE.get(name) and rollout_is_weights is None:
            raise ValueError(
                f"verl loss {name!r} needs verl's rollout correction weights: set "
                "algorithm.rollout_correction.rollout_is=token and rollout_is_threshold=<C>"
            )
        stats = None
        if obj.uses_batch_stats and obj.mini_batch_scoped:
            stats = verl_minibatch.current_stats(obj)
            if stats is None:
                obj = _micro_fallback(name, hp)
        out = obj.per_token_loss(log_prob, old_log_prob, advantages, response_mask, batch_stats=stats)
        loss_mat, agg_mask = out.loss_mat, out.agg_mask
        # pooled over the ranks only where this call already spans them (no collective otherwise:
        # with the worker, ranks may run different numbers of micro-batches)
        gather = dist_utils.all_gather_varlen if stats is None and obj.spans_ranks() else None
        metrics = objectives.reduce_metrics([out.stats], batch=out.batch_metrics, gather=gather)
        if rollout_is_weights is not None:
            loss_mat = loss_mat * rollout_is_weights.to(loss_mat.dtype)
            if name in _VERL_SUBSTITUTE:
                metrics["actor/tis_weight_mean"] = float(
                    (rollout_is_weights * agg_mask).sum() / agg_mask.sum().clamp(min=1)
                )
        loss = agg_loss(loss_mat=loss_mat, loss_mask=agg_mask, loss_agg_mode=mode, **batch_info)
        return loss, metrics

    policy_loss.__name__ = policy_loss.__qualname__ = f"stalerl_{name}_policy_loss"
    policy_loss.__doc__ = f"stalerl objective {name!r} as a verl policy loss (stalerl.integrations.verl)."
    policy_loss.stalerl_objective = name  # type: ignore[attr-defined]
    return policy_loss


def register() -> dict[str, str]:
    """Register every stalerl objective with verl's policy-loss registry (idempotent).

    Returns the ``loss_mode`` -> objective mapping. Plain names are taken only where verl has no
    loss of that name (or where it is already stalerl's), so verl's built-ins are never replaced.
    """
    from verl.trainer.ppo import core_algos

    for name in objectives.available():
        fn = _LOSS_FNS.get(name)
        if fn is None:
            fn = _LOSS_FNS[name] = make_policy_loss(name)
        core_algos.register_policy_loss(PREFIX + name)(fn)
        _REGISTERED[PREFIX + name] = name
        existing = core_algos.POLICY_LOSS_REGISTRY.get(name)
        if existing is None or getattr(existing, "stalerl_objective", None) is not None:
            core_algos.register_policy_loss(name)(fn)
            _REGISTERED[name] = name
    return registered_names()


# verl's plugin loader imports the entry point's module but never calls the object: register now.
register()
