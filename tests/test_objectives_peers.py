"""stalerl's objectives against the peers' own code: verl 0.9.1 and TRL 1.16.0 (docs/INTEGRATIONS.md).

Same loss and same gradient w.r.t. ``log_prob``, in float64, to 1e-6, on random right-padded
batches (B = 8, T = 12, several seeds), with log-ratios ~ N(0, 0.3) plus ~15% large ones
(|log r| in [0.7, 2.5]) so that every clip is active on both sides. We call the peers' real code:

* verl: the registered policy-loss functions of ``verl.trainer.ppo.core_algos`` (``vanilla``,
  ``gspo``, ``cispo``), with an ``ActorConfig`` built like verl's own CPU tests. Its
  ``global_batch_info`` is left empty (``{}``), so ``agg_loss`` runs with ``dp_size=1`` and the
  *local* token / sequence counts and ``loss_scale_factor=None`` (the horizon T); one test sets
  it to a mini-batch's counts instead, as verl's ``ppo_loss`` does, and checks stalerl's
  ``batch_stats`` path against it.
* TRL: ``GRPOTrainer._compute_loss`` itself, on an instance made with ``GRPOTrainer.__new__``
  (no model, no ``__init__``) that carries just the attributes ``_compute_loss`` reads;
  ``_get_per_token_logps_and_entropies`` is replaced so that it returns our ``log_prob`` tensor.

Aggregation mapping (TRL ``loss_type`` -> stalerl ``loss_agg_mode``), read off ``_compute_loss``:

==========  ================================================  ==========================
TRL         TRL's reduction                                    stalerl
==========  ================================================  ==========================
grpo        mean_i( sum_t l*m / max(|o_i|,1) ), mean over B    seq-mean-token-mean
bnpo        sum l*m / sum m  (local tokens)                    token-mean
dapo        sum l*m / (num_items_in_batch / processes          token-mean (``num_tokens`` =
            * grad_accum / steps_per_generation)               the generation batch's)
dr_grpo     sum l*m / (B * max_completion_length)              seq-mean-token-sum-norm
                                                               (T = max_completion_length)
luspo       mean_i( sum_t l*m )                                seq-mean-token-sum
cispo       as dapo                                            token-mean
==========  ================================================  ==========================

TRL's sequence means (grpo, dr_grpo, luspo) divide by B, all-padded rows included; verl and
stalerl exclude all-padded rows from the sequence count. So the batch keeps its all-padded row
for every verl comparison and for TRL's token-level reductions (bnpo, dapo, cispo), and drops it
for TRL's sequence means: this is a convention difference, not a bug.

Shared domain: TRL never clamps log r, verl's ``gspo`` clamps the log sequence ratio at 10 and
stalerl clamps every log-ratio to [-20, 20]; all inputs here have |log r| <= 2.5.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is a test dependency (pip install stalerl[test])")
verl_config = pytest.importorskip("verl.workers.config", reason="verl is a test dependency (pip install stalerl[test])")
trl = pytest.importorskip("trl", reason="trl is a test dependency (pip install stalerl[test])")

from stalerl import objectives  # noqa: E402

SEEDS = (0, 1, 2, 3)
B, T = 8, 12
TOL = dict(rtol=1e-6, atol=1e-6)
VERL_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

# verl's own functions. The stalerl plugin registers its objectives under its own names; if anything
# had overwritten verl's built-in names in the registry, we would compare stalerl with itself.
VERL_FNS = {
    "vanilla": core_algos.compute_policy_loss_vanilla,
    "gspo": core_algos.compute_policy_loss_gspo,
    "cispo": core_algos.compute_policy_loss_cispo,
}


def test_verl_registry_holds_verl_functions():
    for name, fn in VERL_FNS.items():
        assert core_algos.get_policy_loss_fn(name) is fn, f"verl's {name!r} loss was overwritten in the registry"


# ----------------------------------------------------------------------------- batches
def make_batch(seed, *, empty_row=True, scale=0.3, per_token_adv=False, seq_log_ratio=None):
    """Random right-padded batch in float64.

    Row 0 is full length; with ``empty_row`` the last row is all padding. Padding positions hold
    garbage (moderate) log-probs, which every implementation must ignore. ``seq_log_ratio``
    ((B,) tensor) shifts each row's tokens so that its mean log-ratio is exactly that value
    (GSPO's tiny clip range needs sequences on both sides of it and inside it).
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if empty_row:
        lengths[-1] = 0
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)
    old = -3.0 - 3.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    lr = scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    big = torch.rand(B, T, generator=g) < 0.15
    sign = torch.where(torch.rand(B, T, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    lr = torch.where(big, sign * (0.7 + 1.8 * torch.rand(B, T, generator=g, dtype=torch.float64)), lr)
    lr[0, 0], lr[0, 1] = 2.4, -2.4  # always one ratio above CISPO's cap 5 and one far below 1
    if seq_log_ratio is not None:
        cur = (lr * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        lr = lr + (seq_log_ratio - cur).unsqueeze(-1)
    lr = torch.where(mask > 0, lr, torch.randn(B, T, generator=g, dtype=torch.float64))  # garbage padding
    if per_token_adv:
        adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    else:
        adv = torch.randn(B, generator=g, dtype=torch.float64)
        adv[1] = 0.0  # a zero-advantage trajectory (e.g. a group with equal rewards)
    return (old + lr), old, adv, mask


def stalerl_loss_grad(name, lp, old, adv, mask, **hparams):
    x = lp.clone().requires_grad_(True)
    out = objectives.build(name, **hparams)(x, old, adv, mask)
    (grad,) = torch.autograd.grad(out.loss, x)
    return out.loss.detach(), grad, out


# ----------------------------------------------------------------------------- verl
def verl_config_for(loss_mode, clip_low, clip_high, clip_c=3.0, global_batch_info=None):
    cfg = verl_config.ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=0.2,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        clip_ratio_c=clip_c,
        policy_loss=verl_config.PolicyLossConfig(loss_mode=loss_mode),
    )
    # {} -> agg_loss(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None):
    # local counts, horizon T for seq-mean-token-sum-norm.
    assert cfg.global_batch_info == {}
    if global_batch_info:
        cfg.global_batch_info.update(global_batch_info)
    return cfg


def verl_loss_grad(loss_mode, lp, old, adv, mask, mode, clip_low, clip_high, clip_c=3.0, global_batch_info=None):
    x = lp.clone().requires_grad_(True)
    cfg = verl_config_for(loss_mode, clip_low, clip_high, clip_c, global_batch_info)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(lp)
    loss, metrics = VERL_FNS[loss_mode](
        old_log_prob=old, log_prob=x, advantages=adv, response_mask=mask, loss_agg_mode=mode, config=cfg
    )
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad, metrics


def assert_same(ours, theirs, what):
    torch.testing.assert_close(ours[0], theirs[0].to(ours[0].dtype), **TOL, msg=lambda m: f"{what}: loss differs\n{m}")
    torch.testing.assert_close(ours[1], theirs[1], **TOL, msg=lambda m: f"{what}: gradient differs\n{m}")


@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)], ids=["sym", "clip_higher"])
@pytest.mark.parametrize("per_token_adv", [False, True], ids=["seq_adv", "token_adv"])
def test_grpo_matches_verl_vanilla(mode, clip, per_token_adv):
    low, high = clip
    for seed in SEEDS:
        lp, old, adv, mask = make_batch(seed, per_token_adv=per_token_adv)
        ours = stalerl_loss_grad("grpo", lp, old, adv, mask, epsilon_low=low, epsilon_high=high,
                                 dual_clip=3.0, loss_agg_mode=mode)
        theirs = verl_loss_grad("vanilla", lp, old, adv, mask, mode, low, high, clip_c=3.0)
        assert_same(ours, theirs, f"grpo vs verl vanilla seed={seed}")
        m_ours, m_verl = ours[2].metrics, theirs[2]
        assert m_ours["actor/ppo_kl"] == pytest.approx(m_verl["actor/ppo_kl"], abs=1e-9)
        assert m_ours["actor/pg_clipfrac"] == pytest.approx(m_verl["actor/pg_clipfrac"], abs=1e-9)
        assert m_ours["actor/pg_clipfrac_lower"] == pytest.approx(m_verl["actor/pg_clipfrac_lower"], abs=1e-9)


def test_batches_exercise_every_clip_branch():
    """The random batches really hit the lower clip, the upper clip and the dual clip."""
    lows = highs = duals = 0.0
    for seed in SEEDS:
        lp, old, adv, mask = make_batch(seed)
        m = stalerl_loss_grad("grpo", lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0)[2].metrics
        lows += m["actor/clipped_below_frac"]
        highs += m["actor/clipped_above_frac"]
        duals += m["actor/pg_clipfrac_lower"]
    assert lows > 0 and highs > 0 and duals > 0


def test_verl_global_batch_info_matches_batch_stats():
    """Micro-batches normalised by the mini-batch's counts (verl: ``config.global_batch_info`` set
    as ``ppo_loss`` does; stalerl: ``batch_stats=``) add up to the same loss and gradient."""
    lp, old, adv, mask = make_batch(7, empty_row=False)
    halves = [slice(0, 3), slice(3, B)]
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        obj = objectives.build("grpo", dual_clip=3.0, loss_agg_mode=mode)
        stats = obj.batch_stats([lp[s] for s in halves], [old[s] for s in halves],
                                [adv[s] for s in halves], [mask[s] for s in halves])
        info = {"dp_size": 1, "batch_num_tokens": mask.sum(), "global_batch_size": B, "loss_scale_factor": None}
        x_ours = lp.clone().requires_grad_(True)
        x_verl = lp.clone().requires_grad_(True)
        loss_ours = loss_verl = 0.0
        for s in halves:
            loss_ours = loss_ours + obj(x_ours[s], old[s], adv[s], mask[s], batch_stats=stats).loss
            cfg = verl_config_for("vanilla", 0.2, 0.2, 3.0, info)
            a = adv[s].unsqueeze(-1).expand(-1, T)
            loss_verl = loss_verl + VERL_FNS["vanilla"](old_log_prob=old[s], log_prob=x_verl[s], advantages=a,
                                                       response_mask=mask[s], loss_agg_mode=mode, config=cfg)[0]
        g_ours = torch.autograd.grad(loss_ours, x_ours)[0]
        g_verl = torch.autograd.grad(loss_verl, x_verl)[0]
        assert_same((loss_ours.detach(), g_ours), (loss_verl.detach(), g_verl), f"micro-batches {mode}")
        # ... and equal the whole mini-batch in one call.
        whole = stalerl_loss_grad("grpo", lp, old, adv, mask, dual_clip=3.0, loss_agg_mode=mode)
        assert_same((loss_ours.detach(), g_ours), whole[:2], f"micro vs whole {mode}")


GSPO_CASES = {
    # name: (eps_low, eps_high, seq_log_ratio generator)
    "clip_0.2_0.28": (0.2, 0.28, None),
    # The paper's tiny range: put the sequence log-ratios inside and on both sides of [-3e-4, 4e-4].
    "clip_3e-4_4e-4": (3e-4, 4e-4, lambda g: (torch.rand(B, generator=g, dtype=torch.float64) - 0.5) * 2e-3),
}


def gspo_batch(seed, case, **kw):
    low, high, gen = GSPO_CASES[case]
    seq = None if gen is None else gen(torch.Generator().manual_seed(1000 + seed))
    return low, high, make_batch(seed, seq_log_ratio=seq, **kw)


@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("case", list(GSPO_CASES))
@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_matches_verl_gspo(mode, case, name):
    """verl's ``gspo`` is GSPO-token; stalerl's ``gspo`` (gradient through s_i) has the same value and,
    with per-sequence advantages, the same gradient. (verl 0.9.1 passes ``loss_agg_mode`` through,
    its default being seq-mean-token-mean, so every mode is compared.)"""
    for seed in SEEDS:
        low, high, (lp, old, adv, mask) = gspo_batch(seed, case)
        ours = stalerl_loss_grad(name, lp, old, adv, mask, epsilon_low=low, epsilon_high=high, loss_agg_mode=mode)
        theirs = verl_loss_grad("gspo", lp, old, adv, mask, mode, low, high)
        assert_same(ours, theirs, f"{name} vs verl gspo seed={seed}")


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("case", list(GSPO_CASES))
def test_gspo_token_matches_verl_gspo_per_token_advantages(case, mode):
    for seed in SEEDS:
        low, high, (lp, old, adv, mask) = gspo_batch(seed, case, per_token_adv=True)
        ours = stalerl_loss_grad("gspo_token", lp, old, adv, mask, epsilon_low=low, epsilon_high=high, loss_agg_mode=mode)
        theirs = verl_loss_grad("gspo", lp, old, adv, mask, mode, low, high)
        assert_same(ours, theirs, f"gspo_token (token advantages) vs verl gspo seed={seed}")


def test_gspo_batches_are_clipped_on_both_sides():
    for case in GSPO_CASES:
        n_low = n_high = n_in = 0
        for seed in SEEDS:
            low, high, (lp, old, adv, mask) = gspo_batch(seed, case)
            s = ((lp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            valid = mask.sum(-1) > 0
            n_low += int((valid & (s < torch.log1p(torch.tensor(-low, dtype=s.dtype)))).sum())
            n_high += int((valid & (s > torch.log1p(torch.tensor(high, dtype=s.dtype)))).sum())
            n_in += int(valid.sum())
        assert n_low > 0 and n_high > 0 and n_low + n_high < n_in, case


@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("clip", [(1.0, 4.0), (0.2, 0.2), (0.2, 0.28)], ids=["minpro_paper", "m2po_paper", "asym"])
def test_cispo_matches_verl_cispo(mode, clip):
    low, high = clip
    for seed in SEEDS:
        lp, old, adv, mask = make_batch(seed, per_token_adv=seed % 2 == 1)
        ours = stalerl_loss_grad("cispo", lp, old, adv, mask, epsilon_low=low, epsilon_high=high, loss_agg_mode=mode)
        theirs = verl_loss_grad("cispo", lp, old, adv, mask, mode, low, high)
        assert_same(ours, theirs, f"cispo vs verl cispo seed={seed}")


# ----------------------------------------------------------------------------- TRL
class _Model:
    training = True


class _Accelerator:
    num_processes = 1
    sync_gradients = True
    is_main_process = True

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_trainer(loss_type, *, epsilon_low=0.2, epsilon_high=0.2, level="token", max_completion_length=T,
                grad_accum=1, steps_per_generation=1):
    """A GRPOTrainer without __init__: just the attributes ``_compute_loss`` reads."""
    t = trl.GRPOTrainer.__new__(trl.GRPOTrainer)
    t.model = _Model()
    t.accelerator = _Accelerator()
    t.args = types.SimpleNamespace(delta=None, steps_per_generation=steps_per_generation, use_bias_correction_kl=False)
    t.loss_type = loss_type
    t.importance_sampling_level = level
    t.epsilon_low, t.epsilon_high = epsilon_low, epsilon_high
    t.beta = 0.0
    t.top_entropy_quantile = 1.0
    t.off_policy_mask_threshold = None
    t.use_vllm = False
    t.vllm_importance_sampling_correction = False
    t._entropy_bonus_enabled = False
    t.aux_loss_enabled = False
    t.max_completion_length = max_completion_length
    t.current_gradient_accumulation_steps = grad_accum
    t._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    return t


def trl_loss_grad(trainer, lp, old, adv, mask, num_items_in_batch=None):
    x = lp.clone().requires_grad_(True)

    def fake_logps(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        assert logits_to_keep == x.shape[1]
        return x, torch.zeros_like(x), None

    trainer._get_per_token_logps_and_entropies = fake_logps
    n = x.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, x.shape[1], dtype=torch.long),
        "completion_mask": mask.to(torch.long),
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch),
    }
    loss = trainer._compute_loss(None, inputs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# loss_type -> (stalerl loss_agg_mode, TRL counts all-padded rows as sequences)
TRL_MODES = {
    "grpo": ("seq-mean-token-mean", True),
    "bnpo": ("token-mean", False),
    "dapo": ("token-mean", False),
    "dr_grpo": ("seq-mean-token-sum-norm", True),
    "luspo": ("seq-mean-token-sum", True),
}


@pytest.mark.parametrize("loss_type", list(TRL_MODES))
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)], ids=["sym", "clip_higher"])
def test_grpo_matches_trl(loss_type, clip):
    """stalerl ``grpo`` (no dual clip: TRL has none; its ``delta`` is a different, two-sided cap)."""
    mode, seq_mean_counts_empty_rows = TRL_MODES[loss_type]
    low, high = clip
    for seed in SEEDS:
        lp, old, adv, mask = make_batch(seed, empty_row=not seq_mean_counts_empty_rows)
        ours = stalerl_loss_grad("grpo", lp, old, adv, mask, epsilon_low=low, epsilon_high=high, loss_agg_mode=mode)
        theirs = trl_loss_grad(trl_trainer(loss_type, epsilon_low=low, epsilon_high=high), lp, old, adv, mask)
        assert_same(ours, theirs, f"grpo vs TRL {loss_type} seed={seed}")


def test_trl_dr_grpo_with_longer_max_completion_length():
    """dr_grpo divides by max_completion_length, not by the batch's T: stalerl's loss_scale_factor."""
    lp, old, adv, mask = make_batch(5, empty_row=False)
    ours = stalerl_loss_grad("grpo", lp, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=64.0)
    theirs = trl_loss_grad(trl_trainer("dr_grpo", max_completion_length=64), lp, old, adv, mask)
    assert_same(ours, theirs, "grpo vs TRL dr_grpo (max_completion_length=64)")


def test_trl_dapo_micro_batches_match_batch_stats():
    """DAPO normalises by the generation batch's token count (num_items_in_batch): two accumulation
    micro-batches in TRL == two stalerl calls with the mini-batch's ``batch_stats``."""
    lp, old, adv, mask = make_batch(11)
    halves = [slice(0, 4), slice(4, B)]
    obj = objectives.build("grpo")
    stats = obj.batch_stats([lp[s] for s in halves], [old[s] for s in halves], [adv[s] for s in halves],
                            [mask[s] for s in halves])
    trainer = trl_trainer("dapo", grad_accum=2, steps_per_generation=2)
    loss_ours = loss_trl = 0.0
    g_ours = torch.zeros_like(lp)
    g_trl = torch.zeros_like(lp)
    for s in halves:
        x = lp[s].clone().requires_grad_(True)
        out = obj(x, old[s], adv[s], mask[s], batch_stats=stats)
        g_ours[s] = torch.autograd.grad(out.loss, x)[0]
        loss_ours = loss_ours + out.loss.detach()
        loss_t, grad_t = trl_loss_grad(trainer, lp[s], old[s], adv[s], mask[s], num_items_in_batch=mask.sum())
        loss_trl = loss_trl + loss_t
        g_trl[s] = grad_t
    assert_same((loss_ours, g_ours), (loss_trl, g_trl), "grpo micro-batches vs TRL dapo accumulation")


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("case", list(GSPO_CASES))
@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_matches_trl_sequence_level(loss_type, case, name):
    """TRL ``importance_sampling_level="sequence"`` differentiates through s_i (stalerl ``gspo``);
    with per-sequence advantages GSPO-token has the same gradient."""
    mode, seq_mean_counts_empty_rows = TRL_MODES[loss_type]
    for seed in SEEDS:
        low, high, (lp, old, adv, mask) = gspo_batch(seed, case, empty_row=not seq_mean_counts_empty_rows)
        ours = stalerl_loss_grad(name, lp, old, adv, mask, epsilon_low=low, epsilon_high=high, loss_agg_mode=mode)
        trainer = trl_trainer(loss_type, epsilon_low=low, epsilon_high=high, level="sequence")
        theirs = trl_loss_grad(trainer, lp, old, adv, mask)
        assert_same(ours, theirs, f"{name} vs TRL sequence-level {loss_type} seed={seed}")


@pytest.mark.parametrize("epsilon_high", [4.0, 1.0, 0.28])
def test_cispo_matches_trl_cispo(epsilon_high):
    """TRL's cispo caps the weight at the absolute value ``epsilon_high`` (5.0 recommended) and has no
    lower clip (the weight r > 0 anyway): stalerl epsilon_low=1.0 (lower bound 0), epsilon_high=e
    <-> TRL epsilon_high = 1 + e. TRL reduces cispo like dapo (token-mean)."""
    for seed in SEEDS:
        lp, old, adv, mask = make_batch(seed, per_token_adv=seed % 2 == 1)
        ours = stalerl_loss_grad("cispo", lp, old, adv, mask, epsilon_low=1.0, epsilon_high=epsilon_high)
        trainer = trl_trainer("cispo", epsilon_low=0.2, epsilon_high=1.0 + epsilon_high)
        theirs = trl_loss_grad(trainer, lp, old, adv, mask)
        assert_same(ours, theirs, f"cispo vs TRL cispo seed={seed}")
        assert ours[2].metrics["actor/clipped_above_frac"] > 0  # the cap is active in every batch
