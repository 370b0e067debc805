"""The four studies of the seed papers and a staleness sweep (docs/REPRODUCTION.md): conditions, scaling, and the claims to check.

Each study is a list of :class:`Condition` (objective, hyperparameters, staleness) and a list of
:class:`Claim` (the paper's statement and numbers, and a check that computes the testbed's numbers
from the finished runs and says whether the direction reproduced).

Scaling to the testbed: matched drift, not matched counts. The papers train 1.7B-32B models with
256 prompts x 8 responses per generation batch, m = 4 mini-batches, lr 1e-6 and staleness s = 256
updates (64 generation batches of delay) over 500-1000 steps. The testbed keeps m = 4 and the group
size 8, uses 16 prompts per batch, and takes its learning rate and staleness from a calibration
(docs/REPRODUCTION.md, "Calibration"; ``benchmarks/calibrate_testbed.py``): at ``TESTBED_LR`` =
5e-5 and ``TESTBED_STALENESS`` = 48 updates (12 generation batches of delay) the drift statistics
the papers report fall in their ranges (GRPO's clip fraction on-policy and under staleness, M2PO's
masked fraction and M̂2 before masking, the spread of log rho(tau) and MIS-PO's acceptance). At
s = 256 the small model, which must learn within a few hundred updates and so takes steps 50 times
the papers' learning rate, drifts several times further than the papers' models did (at s = 192-255 M2PO
masks 13-38x the paper's share); s = 48 is the staleness that gives the papers' drift. ``TESTBED_STEPS``
= 60 steps (240 updates) leave 48 steps after the 12 steps of fill-up, which train on the initial
policy's rollouts. More mini-batches per generation batch would shorten that fill-up in steps but
halve the trajectories per update (noisier updates, a different drift per update); the papers'
m = 4 is kept. ``--quick`` shrinks everything to a smoke test whose verdicts are not meaningful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from stalerl.studies import statistics as stats

TESTBED_STALENESS = 48
TESTBED_STEPS = 60
TESTBED_LR = 5e-5
TESTBED_EVAL_EVERY = 5
QUICK_STALENESS = 4


@dataclass
class Condition:
    """One training configuration of a study."""

    name: str
    objective: str
    hparams: dict[str, Any] = field(default_factory=dict)
    """Objective hyperparameters (``objective.hparams.<key>=<value>`` overrides)."""
    stale: bool = True
    """True: the study's staleness S; False: on-policy (s = 0)."""
    derive: Callable[[dict[str, list[dict[str, Any]]]], dict[str, Any]] | None = None
    """Hyperparameters computed, at run time, from the statistics of the conditions listed before
    this one (e.g. the bound AC-MIS-PO converged to); they replace ``hparams``, which then only
    stand in for them in ``--dry-run`` and in config checks."""
    staleness: int | None = None
    """This condition's own staleness in updates at every scale (``stale`` is then ignored), for a
    study whose axis is the staleness itself (``staleness-sweep``); ``--quick`` caps it at
    ``QUICK_STALENESS``. None: the study's S (or 0, per ``stale``)."""

    testbed_staleness: int | None = None
    """With ``staleness``: the testbed's equivalent of it, when the testbed runs the papers' s at
    the staleness that gives the same drift (``sweep_testbed_staleness``). None: ``staleness`` at
    every scale."""

    def staleness_at(self, study: "Study", scale: str = "testbed", quick: bool = False) -> int:
        """The ``stale.staleness`` this condition runs with in ``study`` at that scale."""
        if self.staleness is not None:
            own = self.testbed_staleness if scale == "testbed" and self.testbed_staleness is not None \
                else self.staleness
            return min(own, QUICK_STALENESS) if quick else own
        return study.staleness(scale, quick) if self.stale else 0


@dataclass
class Claim:
    """A claim of the paper and how the testbed checks it."""

    text: str
    paper: str
    """The paper's sentence (section, figure or table) and numbers for this claim."""
    check: Callable[[dict[str, list[dict[str, Any]]]], tuple[str, str | None]]
    """Given run statistics per condition (one dict per seed, same seed order), return (testbed
    numbers, verdict): ``reproduced``, ``contradicted``, ``inconclusive`` (statistics.py), or None
    when a number is missing."""
    statistic: str = ""
    """The statistic that tests the claim, and why that one."""


@dataclass
class Study:
    name: str
    seed_file: str
    title: str
    conditions: list[Condition]
    claims: list[Claim]
    paper_scale: dict[str, Any]
    """Overrides of ``stalerl train`` at the paper's own scale (GPU, network for model and data), on
    top of ``PAPER_OVERRIDES``; ``stale.staleness`` is the study's staleness S at that scale."""
    testbed_scale: dict[str, Any] = field(default_factory=dict)
    """Overrides on top of ``TESTBED_OVERRIDES`` where the paper's setting differs from the M2PO
    setting the testbed defaults follow; ``stale.staleness`` replaces ``TESTBED_STALENESS``."""
    seeds: int = stats.DEFAULT_SEEDS
    """Seeds per condition (every study has claims about accuracy: 5)."""
    paper: str = ""
    """Title of the seed paper whose claims the study checks (written into ``verdicts.md``)."""
    sweep: bool = False
    """The conditions are objectives x staleness values (``Condition.staleness``): ``reproduce``
    also writes the sweep's table and figure (:mod:`stalerl.studies.sweep`)."""

    def staleness(self, scale: str = "testbed", quick: bool = False) -> int:
        """The staleness S of the study's stale conditions at that scale."""
        if scale == "paper":
            return int(self.paper_scale.get("stale.staleness", 256))
        if quick:
            return QUICK_STALENESS
        return int(self.testbed_scale.get("stale.staleness", TESTBED_STALENESS))


# ------------------------------------------------------------------ helpers used by the checks
# Each check gets the run statistics per condition (one dict per seed, seeds in the same order for
# every condition) and returns (the testbed's numbers, verdict): a paired bootstrap interval read by
# statistics.above / below / within (reproduced, contradicted, inconclusive; None without data).

EVAL_LAST_K = 4
"""The noise-robust accuracy of a run is the mean of its last ``EVAL_LAST_K`` evaluations (the
last 20 of 60 steps at ``eval.every=5``), per held-out problem where the run saved them."""
WIDE_MARGIN = 0.05
""""A wide margin" of accuracy, in absolute terms (5 points; the AC-MIS-PO paper's gap is 12.8)."""
CLOSE = 0.03
""""Close" accuracy: within 3 points (the AC-MIS-PO paper's gap is 1.1)."""
FAR_FEWER = 10.0
""""Far fewer" clipped tokens: at least 10x fewer (the M2PO paper, Sec. 6.3: "over an order of magnitude")."""


def mean(stats: list[dict[str, Any]], key: str) -> float:
    values = [s[key] for s in stats if s.get(key) is not None and np.isfinite(s[key])]
    return float(np.mean(values)) if values else float("nan")


def _fmt(x: float, pct: bool = True) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.4g}"


def _values(runs, cond: str, key: str) -> list:
    return [s.get(key) for s in runs.get(cond, [])] or [None]


def _accuracy(runs, a: str, b: str, which: str = "lastk") -> tuple[list, list, str]:
    """Per-seed accuracies of two conditions, per problem where both saved them."""
    key = f"eval_problems_{which}"
    if all(isinstance(v, list) for v in _values(runs, a, key) + _values(runs, b, key)):
        return _values(runs, a, key), _values(runs, b, key), "seeds x problems"
    return _values(runs, a, f"eval_{which}"), _values(runs, b, f"eval_{which}"), "seeds"


_WHICH = {"lastk": f"held-out accuracy, mean of the last {EVAL_LAST_K} evaluations",
          "first_half": "held-out accuracy, mean over the first half of the run",
          "final": "final held-out accuracy"}


def _acc_diff(runs, a: str, b: str, which: str = "lastk") -> tuple[str, stats.Interval]:
    xa, xb, over = _accuracy(runs, a, b, which)
    ci = stats.paired_bootstrap(xa, xb)
    best = f"; best checkpoint {a} {_fmt(mean(runs.get(a, []), 'eval_best'))} vs {b} {_fmt(mean(runs.get(b, []), 'eval_best'))}"
    text = (f"{_WHICH[which]}: {a} {_fmt(mean(runs.get(a, []), 'eval_' + which))} vs {b} "
            f"{_fmt(mean(runs.get(b, []), 'eval_' + which))}, difference {ci.text()} (95% CI over {over})")
    return text + (best if which == "lastk" else ""), ci


def _better(runs, a: str, b: str, which: str = "lastk", margin: float = 0.0) -> tuple[str, str | None]:
    """Accuracy of ``a`` above ``b`` (by more than ``margin``)."""
    text, ci = _acc_diff(runs, a, b, which)
    return text, stats.above(ci, margin)


def _not_worse(runs, a: str, b: str, tolerance: float) -> tuple[str, str | None]:
    """Accuracy of ``a`` at least that of ``b`` minus ``tolerance`` (non-inferiority)."""
    text, ci = _acc_diff(runs, a, b)
    return text, stats.above(ci, -tolerance)


def _close(runs, a: str, b: str, tolerance: float = CLOSE) -> tuple[str, str | None]:
    """Accuracies of ``a`` and ``b`` within ``tolerance`` of each other."""
    text, ci = _acc_diff(runs, a, b)
    return text, stats.within(ci, tolerance)


def _highest(runs, winner: str, others: list[str]) -> tuple[str, str | None]:
    """Accuracy of ``winner`` above each of ``others``."""
    parts = [_better(runs, winner, o) for o in others]
    return "; ".join(t for t, _ in parts), stats.all_of([v for _, v in parts])


def _ratio(runs, a: str, b: str, key: str) -> stats.Interval:
    """mean(key of a) / mean(key of b), paired over seeds."""
    return stats.paired_bootstrap(_values(runs, a, key), _values(runs, b, key), "ratio")


def _far_fewer_clipped(runs, many: str, few: str, factor: float = FAR_FEWER) -> tuple[str, str | None]:
    """``few`` clips at least ``factor`` times fewer tokens than ``many``."""
    ci = _ratio(runs, many, few, "clipfrac_mean")
    text = (f"mean clip fraction: {many} {_fmt(mean(runs.get(many, []), 'clipfrac_mean'))} vs {few} "
            f"{_fmt(mean(runs.get(few, []), 'clipfrac_mean'))}; ratio {ci.text(pct=False)} (needs >= {factor:g})")
    return text, stats.above(ci, factor)


def _prosperity_then_collapse(runs) -> tuple[str, str | None]:
    """no_tr above grpo over the first half of the run, below it at the end."""
    early, ci_early = _acc_diff(runs, "no_tr", "grpo", "first_half")
    late, ci_late = _acc_diff(runs, "no_tr", "grpo", "lastk")
    return f"{early}; {late}", stats.all_of([stats.above(ci_early), stats.below(ci_late)])


def _equal_acceptance_different_outcome(runs) -> tuple[str, str | None]:
    """RandomTraj and MIS-PO accept the same share of trajectories, and RandomTraj learns more."""
    acc_text, acc = _acc_diff(runs, "mispo_random_traj", "mispo")
    rate = stats.paired_bootstrap(_values(runs, "mispo_random_traj", "accept_mean"), _values(runs, "mispo", "accept_mean"))
    text = f"{acc_text}; trajectory acceptance difference {rate.text()} (equal: within 2 pt)"
    return text, stats.all_of([stats.within(rate, 0.02), stats.above(acc)])


def _starved_by_narrow_selection(runs) -> tuple[str, str | None]:
    """MIS-PO's accepted trajectories are the closest to the behaviour policy (spread factor, the
    paper's diagnostic) and carry less learning signal: a lower gradient norm than RandomTraj's."""
    spread = _ratio(runs, "mispo_random_traj", "mispo", "accepted_std_mean")
    grad = _ratio(runs, "mispo_random_traj", "mispo", "grad_norm_mean")
    inside = "inside" if np.isfinite(spread.estimate) and spread.low <= 22 <= spread.high else "outside"
    text = (f"accepted log-ratio std random_traj / mispo {spread.text(pct=False)} (paper 22x: {inside} the CI); "
            f"mean grad norm random_traj / mispo {grad.text(pct=False)} (paper 1.5x)")
    return text, stats.above(grad, 1.0)


def _magnitude_drives(runs, fixed: str) -> tuple[str, str | None]:
    """MIS-PO fixed at the final bound beats default MIS-PO by a wide margin and is close to AC-MIS-PO."""
    wide_text, wide = _acc_diff(runs, fixed, "mispo")
    close_text, close = _acc_diff(runs, fixed, "ac_mispo")
    text = f"{wide_text} (needs > {100 * WIDE_MARGIN:.0f} pt); {close_text} (needs within {100 * CLOSE:.0f} pt)"
    return text, stats.all_of([stats.above(wide, WIDE_MARGIN), stats.within(close, CLOSE)])


def _bound_tightens(runs) -> tuple[str, str | None]:
    """AC-MIS-PO's last bound is less than half its first (paper: 0.00995 -> 0.0002)."""
    ci = stats.paired_bootstrap(_values(runs, "ac_mispo", "bound_last"), _values(runs, "ac_mispo", "bound_first"),
                                "ratio")
    text = (f"ac_mispo log-bound b: first update {_fmt(mean(runs.get('ac_mispo', []), 'bound_first'), False)}, "
            f"last update {_fmt(mean(runs.get('ac_mispo', []), 'bound_last'), False)}; last / first {ci.text(pct=False)}")
    return text, stats.below(ci, 0.5)


def _weak_correlation(runs) -> tuple[str, str | None]:
    """Pearson r of acceptance and M̂2 over AC-MIS-PO's updates within [-0.3, 0.3]."""
    ci = stats.paired_bootstrap(_values(runs, "ac_mispo", "accept_m2_pearson"))
    return f"Pearson r (ac_mispo updates, mean of seeds) {ci.text(pct=False)} (weak: within ±0.3)", stats.within(ci, 0.3)


def _reward_higher_and_stabler(runs, winner: str) -> tuple[str, str | None]:
    """``winner``'s trained-on reward: higher over the second half than every other condition's,
    and its largest drop smaller than every other's."""
    parts, texts = [], []
    for other in [c for c in runs if c != winner]:
        level = stats.paired_bootstrap(_values(runs, winner, "reward_second_half"), _values(runs, other, "reward_second_half"))
        drop = stats.paired_bootstrap(_values(runs, winner, "reward_largest_drop"), _values(runs, other, "reward_largest_drop"))
        parts += [stats.above(level), stats.below(drop)]
        texts.append(f"vs {other}: reward {level.text()}, largest drop {drop.text()}")
    head = ", ".join(f"{c} {_fmt(mean(s, 'reward_second_half'))}" for c, s in runs.items())
    return f"trained-on reward, second half: {head}; " + "; ".join(texts), stats.all_of(parts)


def _collapses_while_stable(runs, collapsing: str, stable: str) -> tuple[str, str | None]:
    """``collapsing``'s trained-on reward drops further than ``stable``'s and it ends less accurate."""
    drop = stats.paired_bootstrap(_values(runs, collapsing, "reward_largest_drop"), _values(runs, stable, "reward_largest_drop"))
    acc_text, acc = _acc_diff(runs, stable, collapsing)
    return (f"largest reward drop {collapsing} - {stable} {drop.text()}; {acc_text}",
            stats.all_of([stats.above(drop), stats.above(acc)]))


def _fewer_clipped(runs, many: str, few: str) -> tuple[str, str | None]:
    """``few`` clips fewer tokens than ``many`` (ratio above 1)."""
    ci = _ratio(runs, many, few, "clipfrac_mean")
    text = (f"mean clip fraction: {many} {_fmt(mean(runs.get(many, []), 'clipfrac_mean'))} vs {few} "
            f"{_fmt(mean(runs.get(few, []), 'clipfrac_mean'))}; ratio {ci.text(pct=False)}")
    return text, stats.above(ci, 1.0)


def _ac_final_bound(runs) -> dict[str, Any]:
    """MIS-PO trajectory bounds [exp(-b), exp(b)] at the last bound b of the ac_mispo runs (mean of seeds)."""
    b = mean(runs.get("ac_mispo", []), "bound_last")
    if not np.isfinite(b):
        raise ValueError("the ac_mispo runs logged no trajectory bound (actor/traj_bound) to fix MIS-PO at")
    return {"traj_low": round(math.exp(-b), 6), "traj_high": round(math.exp(b), 6)}


# ------------------------------------------------------------------ the studies

PROSPERITY = Study(
    name="prosperity",
    seed_file="m2po-prosperity-before-collapse.txt",
    paper="Prosperity before Collapse: How Far Can Off-Policy RL Reach with Stale Data on LLMs?",
    title="Prosperity before collapse (M2PO paper)",
    conditions=[
        # verl's vanilla GRPO as the paper ran it: dual clip c = 3 (clip_ratio_c)
        Condition("grpo-s0", "grpo_verl", stale=False),
        Condition("grpo", "grpo_verl"),
        Condition("no_tr", "no_tr"),
        Condition("gspo", "gspo"),
        Condition("m2po", "m2po"),
        Condition("m2po-s0", "m2po", stale=False),
    ],
    claims=[
        Claim("Without a trust region, stale data first helps, then training collapses: no_tr above grpo "
              "over the first half of the run, below it at the end",
              "Sec. 4, Figs. 1 and 3 (s=256): training without a trust region 'initially outperforms clipped "
              "training' and 'eventually collapses'",
              _prosperity_then_collapse,
              "accuracy over the first half of the run (mean of its evaluations per problem) and of the last 4 "
              "evaluations, paired: the claim has two phases, so one interval per phase"),
        Claim("grpo degrades under staleness",
              "Sec. 6.2, Table 1: GRPO and GSPO 'often suffer significant performance drops under large staleness'",
              lambda r: _better(r, "grpo-s0", "grpo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("m2po under staleness matches on-policy training (within 2 points or better)",
              "Sec. 6.2, Table 1: M2PO 'consistently achieves comparable accuracy to the on-policy baseline' "
              "(Qwen3-1.7B: M2PO s=256 36.6% vs GRPO s=0 33.0%)",
              lambda r: _not_worse(r, "m2po", "grpo-s0", 0.02),
              "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations; non-inferiority: the interval of m2po - grpo-s0 above -2 points"),
        Claim("m2po beats grpo at the same staleness",
              "Sec. 6.2, Table 1: M2PO > GRPO at s=256 on every model (up to +11.2 points)",
              lambda r: _better(r, "m2po", "grpo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("m2po masks far fewer tokens (at least 10x) than grpo clips under staleness",
              "Sec. 6.3, Fig. 6d: clip ratio GRPO s=256 0.66% vs M2PO s=256 0.02% (Qwen3-1.7B), 1.22% vs 0.06% "
              "(Qwen2.5-32B): 'M2PO reduces clipping by over an order of magnitude'",
              lambda r: _far_fewer_clipped(r, "grpo", "m2po"),
              "ratio of the runs' mean clipped/masked token fractions, bootstrap over seeds: 'far fewer' is a "
              "factor, so the interval of the ratio must lie above 10 (the paper's 'order of magnitude'; it measured 20-33x)"),
    ],
    paper_scale={"stale.staleness": 256, "steps": 1000},
)

MISPO_MECHANISM = Study(
    name="mispo-mechanism",
    seed_file="mispo-randomtraj-mechanism-test.txt",
    paper="Does MIS-PO Need Ratio-Based Trajectory Selection? A Random-Rejection Mechanism Test",
    title="Does MIS-PO need ratio-based trajectory selection? (RandomTraj test)",
    conditions=[
        Condition("mispo", "mispo"),
        Condition("mispo_token_only", "mispo_token_only"),
        Condition("mispo_random_traj", "mispo_random_traj"),
    ],
    claims=[
        Claim("TokenOnly beats MIS-PO", "Sec. 4.1, Table 1, MATH-500, s*=256: TokenOnly 59.25% vs MIS-PO 2.85%",
              lambda r: _better(r, "mispo_token_only", "mispo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("At equal acceptance, RandomTraj learns more than MIS-PO (which trajectories are kept matters, "
              "not how many)",
              "Sec. 4.1, Table 1: RandomTraj 40.85% vs MIS-PO 2.85% 'despite identical acceptance rates'",
              _equal_acceptance_different_outcome,
              "two parts: the acceptance rates' difference within 2 points (equal by construction: a check that "
              "the control is a control) and the accuracy difference above 0 (held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations)"),
        Claim("MIS-PO keeps the trajectories closest to the behaviour policy, which carry less learning signal: "
              "a lower gradient norm than RandomTraj's",
              "Sec. 4.2-4.3, Fig. 3: accepted log rho std MIS-PO 0.0012 vs RandomTraj 0.026 (22x); mean grad norm "
              "0.00979 vs 0.01485",
              _starved_by_narrow_selection,
              "the spread factor is the paper's diagnostic, reported with its interval next to 22x, but MIS-PO's "
              "band bounds its spread by construction; the verdict is on what the paper infers from it, gradient "
              "starvation: the ratio of mean gradient norms RandomTraj / MIS-PO above 1, bootstrap over seeds"),
    ],
    paper_scale={"stale.staleness": 256, "steps": 500},
    # the calibrated testbed (TESTBED_LR, TESTBED_STALENESS): MIS-PO's band accepts a share of the
    # trajectories near the paper's 17.55% (docs/REPRODUCTION.md, "Calibration")
)

AC_MISPO = Study(
    name="ac-mispo",
    seed_file="ac-mispo-acceptance-control.txt",
    paper="Acceptance-Controlled MIS-PO: Adaptive Trajectory Filtering for Stable Off-Policy RLVR Training",
    title="Acceptance-controlled MIS-PO",
    conditions=[
        Condition("grpo", "grpo_verl"),  # the paper's verl GRPO: dual clip c = 3
        Condition("mispo", "mispo"),
        Condition("m2po", "m2po"),
        Condition("ac_mispo", "ac_mispo"),
        Condition("mispo_fixed_final", "mispo_fixed_final"),
        # the paper's ablation done on the testbed's own numbers: MIS-PO fixed at the bound the
        # testbed's AC-MIS-PO ended with (the paper's final bound is a 1.7B model's)
        Condition("mispo_fixed_testbed_final", "mispo", hparams={"traj_low": 0.998, "traj_high": 1.002},
                  derive=_ac_final_bound),
    ],
    claims=[
        Claim("AC-MIS-PO reaches the best accuracy (against GRPO, fixed MIS-PO and M2PO)",
              "Sec. 4.2, Table 1: 32.57% vs Fixed MIS-PO 18.67%, M2PO 18.40%, GRPO 6.57%",
              lambda r: _highest(r, "ac_mispo", ["grpo", "mispo", "m2po"]),
              "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations; ac_mispo above each of the paper's three baselines"),
        Claim("adaptive bounds beat fixed default bounds", "Sec. 4.2, Table 1: AC-MIS-PO 32.57% vs Fixed MIS-PO "
              "[0.996,1.001] 18.67%",
              lambda r: _better(r, "ac_mispo", "mispo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("bound magnitude is the main driver: MIS-PO fixed at the paper's final bound [0.9998, 1.0002] beats "
              "default MIS-PO by a wide margin (> 5 points) and comes close to AC-MIS-PO (within 3 points)",
              "Sec. 4.3, Table 2: Fixed-at-Final-Bound 31.43% vs Fixed MIS-PO 18.67% (+12.76) and AC-MIS-PO 32.57%",
              lambda r: _magnitude_drives(r, "mispo_fixed_final"),
              "both parts of the paper's sentence, each a paired interval (held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations): the gain over mispo above "
              "5 points, the gap to ac_mispo inside +-3 points"),
        Claim("bound magnitude is the main driver: MIS-PO fixed at the bound the testbed's AC-MIS-PO ended with "
              "beats default MIS-PO by a wide margin (> 5 points) and comes close to AC-MIS-PO (within 3 points)",
              "Sec. 4.3, Table 2 (there, the final bound is AC-MIS-PO's own)",
              lambda r: _magnitude_drives(r, "mispo_fixed_testbed_final"),
              "as above, with the bound the testbed's controller converged to"),
        Claim("the controller tightens the trajectory bound as training proceeds (to less than half of b_0)",
              "Sec. 4.4: b_k starts at b_max = 0.00995 and converges to about 0.0002 by step 200",
              _bound_tightens,
              "ratio last / first bound of each ac_mispo run, bootstrap over seeds, below 0.5"),
        Claim("acceptance rate and M2 are only weakly correlated (|r| < 0.3)",
              "Sec. 3.4 / 4.4: Pearson r = 0.112 (p = 0.052)",
              _weak_correlation,
              "Pearson r of the per-update acceptance rate and M̂2 (both pooled over the mini-batch) of each "
              "ac_mispo run, bootstrap over seeds, inside +-0.3"),
    ],
    # Sec. 4.1: Qwen3-1.7B, DeepScaleR, s = 256, 300-400 steps, AdamW lr 2e-6, 4 responses per
    # prompt of at most 1024 tokens
    paper_scale={"model.path": "Qwen/Qwen3-1.7B", "stale.staleness": 256, "steps": 400, "optim.lr": 2e-6,
                 "rollout.group_size": 4, "rollout.max_new_tokens": 1024},
    # the paper's group size; the calibrated lr and staleness (at lr 3e-4 the drift kept the
    # controller's bound pinned at b_max)
    testbed_scale={"rollout.group_size": 4},
)

MINPRO = Study(
    name="minpro",
    seed_file="minpro-prefix-importance-ratio.txt",
    paper="Prefix Importance Ratio Stabilizes Policy Optimization",
    title="MinPRO: prefix importance ratio",
    conditions=[
        Condition("grpo", "grpo_clip_higher"),
        Condition("gspo", "gspo_minpro_paper"),
        Condition("cispo", "cispo"),
        Condition("m2po", "m2po"),
        Condition("minpro", "minpro"),
    ],
    claims=[
        Claim("MinPRO's training reward is consistently higher and more stable than every other objective's",
              "Sec. 5, Fig. 3: 'MinPRO maintains consistently higher and more stable rewards throughout training "
              "than all other baselines' (and Sec. 6: CISPO 'achieves higher peak rewards' before collapsing)",
              lambda r: _reward_higher_and_stabler(r, "minpro"),
              "the reward of the trained-on batches (the paper's curve) averaged over the second half of the run, "
              "and its largest drop (running maximum minus value of the 5-step moving average), paired over "
              "seeds against each objective: a peak would reward the objective that collapses after it"),
        Claim("MinPRO beats CISPO", "Sec. 5, Fig. 4b: MinPRO's pass@1 above CISPO's (CISPO collapses)",
              lambda r: _better(r, "minpro", "cispo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("MinPRO beats GRPO's hard clipping", "Sec. 6: GRPO 'converge[s] to a low but relatively stable reward "
              "plateau'; Fig. 4b",
              lambda r: _better(r, "minpro", "grpo"), "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations"),
        Claim("CISPO collapses under off-policy drift while MinPRO does not",
              "Sec. 4.1, Figs. 2-3: CISPO's 'rewards abruptly drop and entropy explodes'; MinPRO stays stable",
              lambda r: _collapses_while_stable(r, "cispo", "minpro"),
              "the largest drop of the trained-on reward, cispo above minpro, and the final accuracy (held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: the papers compare final performance; the best checkpoint is a maximum of noisy evaluations), "
              "minpro above cispo: a collapse is a drop that the accuracy does not recover from"),
        Claim("M2PO clips fewer tokens than GRPO", "Sec. 6, Fig. 5: 'M2PO clips significantly fewer tokens than GRPO'",
              lambda r: _fewer_clipped(r, "grpo", "m2po"),
              "ratio of mean clipped-token fractions grpo / m2po, bootstrap over seeds, above 1 (the paper states "
              "no factor)"),
    ],
    # App. B/C: Qwen3-8B-Base, 512 prompts x 8 responses per global step, mini-batch 32 prompts (16
    # updates per step), a delay of n = 2 global steps (staleness 32-47 updates), 120 steps, lr 1e-6,
    # responses up to 20,480 tokens, prompts up to 2048
    paper_scale={"model.path": "Qwen/Qwen3-8B-Base", "rollout.prompts_per_step": 512, "rollout.batch_size": 512,
                 "optim.mini_batches": 16, "stale.staleness": 32, "steps": 120, "rollout.max_new_tokens": 20480,
                 "data.max_prompt_length": 2048, "eval.every": 10, "eval.top_p": 0.7},
    # the paper's delay of n = 2 generation batches, with the testbed's m = 4 updates per batch
    # (the paper's 32-47 updates at lr 1e-6 are about a sixth of the M2PO paper's drift at s = 256,
    # as 8 is of the testbed's 48); evaluation with top-p 0.7 as the paper (App. B)
    testbed_scale={"stale.staleness": 8, "eval.top_p": 0.7},
)

# ------------------------------------------------------------------ the staleness sweep
# Not a seed paper's study: every objective at every staleness of the papers' range, on the same
# seeds and held-out problems, so that one figure shows how each objective's accuracy and stability
# fall (or not) as the rollouts age. Its two claims are the M2PO paper's own statements about its
# largest staleness; the rest of the sweep is a measurement, with no verdict.

SWEEP_STALENESS = (0, 16, 64, 256)
"""The staleness values of the sweep, in the papers' updates: on-policy, then the M2PO paper's
s = 16, 64 and 256 (Table 1, Fig. 3). The condition names and the figure's axis use these."""


def sweep_testbed_staleness(paper_staleness: int, mini_batches: int = 4) -> int:
    """The testbed's staleness with the drift of the papers' ``paper_staleness``: scaled by the
    calibration (``TESTBED_STALENESS`` testbed updates drift as far as the papers' 256,
    docs/REPRODUCTION.md#calibration) and rounded to a whole number of generation batches of
    ``mini_batches`` updates (the testbed's m = 4), at least one when ``paper_staleness`` > 0:
    0, 16, 64, 256 -> 0, 4, 12, 48. A 60-step run at the papers' raw s = 256 would never leave
    its fill-up (64 steps of rollouts from the initial policy)."""
    if paper_staleness <= 0:
        return 0
    batches = max(1, round(paper_staleness * TESTBED_STALENESS / 256 / mini_batches))
    return batches * mini_batches


SWEEP_EVAL_FROM = TESTBED_STEPS - (EVAL_LAST_K - 1) * TESTBED_EVAL_EVERY
"""The sweep's first periodic evaluation (step 45): its runs are evaluated at the start and at the
last ``EVAL_LAST_K`` evaluation steps, the only ones its table and figure read."""

SWEEP_OBJECTIVES = {
    "grpo": "grpo_verl",  # GRPO as the papers ran it in verl (dual clip c = 3)
    "no_tr": "no_tr",
    "gspo": "gspo",
    "cispo": "cispo",
    "m2po": "m2po",
    "mispo": "mispo",
    "ac_mispo": "ac_mispo",
    "minpro": "minpro",
}
"""Condition label -> objective (or preset): each objective of the seed papers once, at its paper
default. Left out: the ablations and variants that differ from one of these in one choice
(``gspo_token``, ``m2po_capped``, ``mispo_token_only``, ``mispo_random_traj``, ``tis``)."""


def sweep_condition(label: str, staleness: int) -> str:
    """The name of the sweep's condition for objective ``label`` at ``staleness``: ``m2po-s256``."""
    return f"{label}-s{staleness}"


STALENESS_SWEEP = Study(
    name="staleness-sweep",
    seed_file="m2po-prosperity-before-collapse.txt",
    paper="Prosperity before Collapse: How Far Can Off-Policy RL Reach with Stale Data on LLMs? (the claims); "
          "the sweep over every objective is this project's own",
    title="Staleness sweep: every objective at the papers' s = 0, 16, 64, 256 (testbed s = 0, 4, 12, 48)",
    conditions=[Condition(sweep_condition(label, s), objective, staleness=s, testbed_staleness=sweep_testbed_staleness(s))
                for label, objective in SWEEP_OBJECTIVES.items() for s in SWEEP_STALENESS],
    claims=[
        Claim("m2po at the largest staleness (s=256) matches on-policy grpo (within 2 points or better)",
              "Sec. 6.2, Table 1: M2PO 'consistently achieves comparable accuracy to the on-policy baseline' "
              "(Qwen3-1.7B: M2PO s=256 36.6% vs GRPO s=0 33.0%)",
              lambda r: _not_worse(r, sweep_condition("m2po", 256), sweep_condition("grpo", 0), 0.02),
              "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems; "
              "non-inferiority: the interval of m2po-s256 - grpo-s0 above -2 points"),
        Claim("grpo loses accuracy from s=0 to s=256",
              "Sec. 6.2, Table 1: GRPO and GSPO 'often suffer significant performance drops under large staleness'",
              lambda r: _better(r, sweep_condition("grpo", 0), sweep_condition("grpo", 256)),
              "held-out accuracy, mean of the last 4 evaluations per problem, paired over seeds and problems: "
              "grpo-s0 - grpo-s256 above 0"),
    ],
    paper_scale={"stale.staleness": 256, "steps": 1000},
    # the sweep reads the last EVAL_LAST_K evaluations only: the ones before them are skipped
    # (5 evaluations a run instead of 13: about 59 s a run instead of 80, two at a time)
    testbed_scale={"eval.from_step": SWEEP_EVAL_FROM},
    sweep=True,
)

STUDIES: dict[str, Study] = {s.name: s for s in (PROSPERITY, MISPO_MECHANISM, AC_MISPO, MINPRO, STALENESS_SWEEP)}

TESTBED_OVERRIDES = [
    f"steps={TESTBED_STEPS}",
    f"optim.lr={TESTBED_LR}",
    f"eval.every={TESTBED_EVAL_EVERY}",
    # 128 problems x 2 samples: the interval of a paired accuracy difference over 5 seeds is set by
    # the seeds, not by sampling (docs/PERFORMANCE.md, "Study speed"); 4 samples cost twice as much
    "eval.samples=2",
    "rollout.prompts_per_step=16",
    "rollout.group_size=8",
    "optim.mini_batches=4",
    "checkpoint_every=0",
    "plots=false",
]
QUICK_OVERRIDES = [
    "model.testbed_size=tiny",
    "steps=3",
    "eval.every=1",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "optim.mini_batches=2",
    "data.eval_size=8",
    "eval.samples=2",
    "data.testbed_train_size=200",
    "rollout.max_new_tokens=24",
    "checkpoint_every=0",
    "tensorboard=false",
    "plots=false",
]
PAPER_OVERRIDES = [
    "model.path=Qwen/Qwen3-1.7B-Base",
    "model.dtype=bfloat16",  # bf16 compute over float32 master weights and AdamW states
    "model.master_weights=true",  # (the default) lr 1e-6 steps would round away in bf16 storage
    "model.attn_implementation=sdpa",
    "model.gradient_checkpointing=true",
    "data.train=agentica-org/DeepScaleR-Preview-Dataset",
    "data.eval=HuggingFaceH4/MATH-500",
    "data.eval_size=500",
    "data.template=m2po",
    "data.max_prompt_length=1024",
    "rollout.prompts_per_step=256",
    "rollout.group_size=8",
    "rollout.max_new_tokens=16384",
    "rollout.batch_size=256",
    "optim.mini_batches=4",
    "optim.lr=1e-6",
    "optim.micro_batch_size=8",
    "optim.max_tokens_per_micro_batch=32768",  # 16k-token responses: micro-batches by tokens, not rows
    "eval.every=50",
    "eval.samples=4",
    "checkpoint_every=50",
]
