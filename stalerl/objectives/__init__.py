"""Every policy objective of the seed papers behind one contract (SPEC §2).

>>> from stalerl import objectives
>>> objectives.available()[:3]
['grpo', 'no_tr', 'gspo']
>>> obj = objectives.build("m2po", tau=0.04)
>>> # out = obj(log_prob, old_log_prob, advantages, response_mask); out.loss, out.metrics

``build`` also takes the name of a preset (a paper's setting), see :data:`PRESETS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stalerl.objectives.ac_mispo import ACMISPO
from stalerl.objectives.base import BatchStats, Objective, ObjectiveConfig, ObjectiveOutput
from stalerl.objectives.cispo import CISPO
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
"""Objective name -> class, in SPEC §2's order."""

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
    """Names of the objectives (SPEC §2); with ``presets=True`` the preset names follow."""
    names = list(REGISTRY)
    return names + list(PRESETS) if presets else names


def build(name: str, **hparams: Any) -> Objective:
    """Build an objective by name (or preset name) with keyword hyperparameters.

    Unknown names and unknown hyperparameters raise ``ValueError`` naming them. Keyword
    arguments override a preset's values.
    """
    if name in PRESETS:
        base, preset_hparams, _ = PRESETS[name]
        return REGISTRY[base](**{**preset_hparams, **hparams})
    if name not in REGISTRY:
        raise ValueError(
            f"unknown objective {name!r}; available: {', '.join(available())}; presets: {', '.join(PRESETS)}"
        )
    return REGISTRY[name](**hparams)


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding a user objective to the registry (a second registration overwrites)."""
    REGISTRY[cls.name] = cls
    return cls


def defaults(name: str) -> dict[str, Any]:
    """The default hyperparameters of an objective or preset."""
    if name in PRESETS:
        base, preset_hparams, _ = PRESETS[name]
        return {**defaults(base), **preset_hparams}
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available())}")
    return {f.name: f.default for f in dataclasses.fields(REGISTRY[name].config_class)}


def describe() -> list[dict[str, Any]]:
    """One row per objective and preset: name, summary, defaults (for ``stalerl objectives``)."""
    rows = [{"name": n, "summary": c.summary, "defaults": defaults(n)} for n, c in REGISTRY.items()]
    rows += [{"name": n, "summary": f"preset of {b}: {d}", "defaults": defaults(n)} for n, (b, _, d) in PRESETS.items()]
    return rows


__all__ = [
    "available", "build", "register", "defaults", "describe", "REGISTRY", "PRESETS",
    "Objective", "ObjectiveConfig", "ObjectiveOutput", "BatchStats",
]
