"""Every policy objective of the seed papers behind one contract (docs/OBJECTIVES.md).

>>> import torch
>>> from stalerl import objectives
>>> objectives.available()[:3]
['grpo', 'no_tr', 'gspo']
>>> obj = objectives.build("m2po", tau=0.04)
>>> log_prob = torch.zeros(2, 3, requires_grad=True)          # (B, T) current policy
>>> out = obj(log_prob, torch.zeros(2, 3), torch.tensor([1.0, 0.0]), torch.ones(2, 3))
>>> out.loss.item(), out.loss.requires_grad                  # -(r * A) over 6 tokens, r = 1
(-0.5, True)
>>> out.loss.backward()                                      # out.metrics: dict[str, float]

``build`` also takes the name of a preset (a paper's setting), see :data:`PRESETS`, or a user's
own :class:`Objective` subclass as ``"path/to/file.py:ClassName"`` or ``"package.module:ClassName"``
(``objective.name=...`` on the command line), checked against the same contract.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stalerl.errors import ObjectiveError
from stalerl.objectives.ac_mispo import ACMISPO
from stalerl.objectives.base import BatchStats, Objective, ObjectiveConfig, ObjectiveOutput, reduce_metrics
from stalerl.objectives.cispo import CISPO
from stalerl.objectives.core import Stat
from stalerl.objectives.grpo import GRPO
from stalerl.objectives.gspo import GSPO, GSPOToken
from stalerl.objectives.m2po import M2PO
from stalerl.objectives.m2po_capped import M2POCapped
from stalerl.objectives.minpro import MinPRO
from stalerl.objectives.mispo import MISPO, MISPOTokenOnly
from stalerl.objectives.mispo_random_traj import MISPORandomTraj
from stalerl.objectives.no_tr import NoTrustRegion
from stalerl.objectives.tis import TIS

REGISTRY: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (GRPO, NoTrustRegion, GSPO, GSPOToken, CISPO, M2PO, M2POCapped, MISPO,
                MISPOTokenOnly, MISPORandomTraj, ACMISPO, MinPRO, TIS)
}
"""Objective name -> class, in the order of docs/OBJECTIVES.md's table."""

PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "grpo_clip_higher": ("grpo", {"epsilon_low": 0.2, "epsilon_high": 0.28},
                         "GRPO with DAPO's clip-higher 0.2/0.28 (MinPRO paper; M2PO paper Fig. 11)"),
    "grpo_verl": ("grpo", {"dual_clip": 3.0}, "GRPO exactly as verl's vanilla default (dual clip c=3)"),
    "cispo_m2po_paper": ("cispo", {"epsilon_low": 0.2, "epsilon_high": 0.2},
                         "CISPO as the M2PO paper's baseline (clip threshold 0.2)"),
    "gspo_minpro_paper": ("gspo", {"epsilon_low": 2e-3, "epsilon_high": 2e-3},
                          "GSPO as the MinPRO paper's baseline (2e-3 / 2e-3)"),
    "m2po_released": ("m2po_capped", {"stats_scope": "micro"},
                      "the released M2PO code: ratio cap, statistics per micro-batch"),
    "mispo_fixed_final": ("mispo", {"traj_low": 0.9998, "traj_high": 1.0002},
                          "MIS-PO fixed at AC-MIS-PO's final bound [0.9998, 1.0002] (its ablation)"),
}
"""Preset name -> (objective, hyperparameters, description): the settings the papers used."""


def available(presets: bool = False) -> list[str]:
    """Names of the objectives (docs/OBJECTIVES.md); with ``presets=True`` the preset names follow."""
    names = list(REGISTRY)
    return names + list(PRESETS) if presets else names


def build(name: str, **hparams: Any) -> Objective:
    """Build an objective by name, preset name or ``"file.py:ClassName"`` with keyword hyperparameters.

    Unknown names, unknown hyperparameters and user classes that break the :class:`Objective`
    contract raise ``ValueError`` naming them. Keyword arguments override a preset's values.
    """
    cls, preset_hparams = _resolve(name)
    return cls(**{**preset_hparams, **hparams})


def _resolve(name: str) -> tuple[type[Objective], dict[str, Any]]:
    """The class and preset hyperparameters behind an objective name, preset or user class path."""
    if name in PRESETS:
        base, preset_hparams, _ = PRESETS[name]
        return REGISTRY[base], dict(preset_hparams)
    if name in REGISTRY:
        return REGISTRY[name], {}
    if isinstance(name, str) and ":" in name:
        return load_objective_class(name), {}
    raise ObjectiveError(
        f"unknown objective {name!r}; available: {', '.join(available())}; presets: {', '.join(PRESETS)}; "
        "or your own Objective subclass as 'path/to/file.py:ClassName'"
    )


def load_objective_class(spec: str) -> type[Objective]:
    """Import a user's objective class from ``"path/to/file.py:ClassName"`` or ``"package.module:ClassName"``.

    The class must subclass :class:`Objective`, set ``name``, implement ``compute`` (and
    ``compute_stats`` when ``uses_batch_stats``), and have a dataclass ``config_class`` deriving
    from :class:`ObjectiveConfig`; each violation is a ``ValueError`` that says what to add.
    """
    # the reward loader's importer: it runs a file by path or imports a module, stdlib only
    from stalerl.rewards.verifier_pool import import_object

    try:
        cls = import_object(spec)
    except AttributeError as err:
        raise ObjectiveError(f"objective {spec!r}: class not found in that module ({err})") from None
    except Exception as err:  # the user's module may raise anything while it is imported
        raise ObjectiveError(
            f"objective {spec!r}: cannot import it ({type(err).__name__}: {err}); give "
            "'path/to/file.py:ClassName' or 'package.module:ClassName'"
        ) from err
    where = f"objective {spec!r}"
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ObjectiveError(
            f"{where} is a {type(cls).__name__}, not a subclass of stalerl.objectives.Objective; "
            "subclass Objective (or an objective such as stalerl.objectives.GRPO) and implement compute()"
        )
    if not isinstance(getattr(cls, "name", None), str):
        raise ObjectiveError(f"{where}: set the class attribute name = '...' (the name its metrics and runs show)")
    if cls.compute is Objective.compute:
        raise ObjectiveError(
            f"{where}: implement compute(self, log_prob, old_log_prob, advantages, mask, rollout_log_prob, "
            "batch_stats) returning (per-token loss (B, T), aggregation mask (B, T), metrics, extras)"
        )
    if cls.uses_batch_stats and cls.compute_stats is Objective.compute_stats:
        raise ObjectiveError(f"{where}: uses_batch_stats is True, so implement compute_stats() to fill stats.payload")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)
            and issubclass(config_class, ObjectiveConfig)):
        raise ObjectiveError(f"{where}: config_class must be a @dataclass subclass of stalerl.objectives.ObjectiveConfig")
    return cls


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding a user objective to the registry (a second registration overwrites)."""
    REGISTRY[cls.name] = cls
    return cls


def defaults(name: str) -> dict[str, Any]:
    """The default hyperparameters of an objective, preset or user class path."""
    cls, preset_hparams = _resolve(name)
    return {**{f.name: f.default for f in dataclasses.fields(cls.config_class)}, **preset_hparams}


def describe() -> list[dict[str, Any]]:
    """One row per objective and preset: name, summary, defaults (for ``stalerl objectives``)."""
    rows = [{"name": n, "summary": c.summary, "defaults": defaults(n)} for n, c in REGISTRY.items()]
    rows += [{"name": n, "summary": f"preset of {b}: {d}", "defaults": defaults(n)} for n, (b, _, d) in PRESETS.items()]
    return rows


__all__ = [
    "available", "build", "register", "defaults", "describe", "load_objective_class", "REGISTRY", "PRESETS",
    "Objective", "ObjectiveConfig", "ObjectiveOutput", "BatchStats", "Stat", "reduce_metrics",
    "GRPO", "NoTrustRegion", "GSPO", "GSPOToken", "CISPO", "M2PO", "M2POCapped", "MISPO", "MISPOTokenOnly",
    "MISPORandomTraj", "ACMISPO", "MinPRO", "TIS",
]
