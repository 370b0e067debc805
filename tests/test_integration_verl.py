"""stalerl inside verl 0.9.1 (``stalerl.integrations.verl``, docs/INTEGRATIONS.md).

* The ``verl.plugins`` entry point, loaded by ``import verl`` in a fresh interpreter the way every
  verl process loads it, registers every objective (``stalerl_<name>`` and the free plain names) and
  leaves verl's own ``vanilla``/``gspo``/``cispo`` in place.
* Each registered loss equals stalerl called directly on the same tensors (value and gradient).
* verl's aggregation contract: ``loss_agg_mode``, ``config.global_batch_info`` and
  ``rollout_is_weights`` act as in verl's built-in losses (checked against ``vanilla``/``cispo``).
* Hyperparameters reach the loss through verl's real config path: Hydra composes verl's
  ``ppo_trainer.yaml`` with ``loss_mode=m2po``, the ``_target_`` override and a ``stalerl`` dict,
  and verl's own ``omega_conf_to_dataclass`` builds the ``ActorConfig`` the loss receives.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is a test dependency (pip install stalerl[test])")
verl_config = pytest.importorskip("verl.workers.config", reason="verl is a test dependency (pip install stalerl[test])")

from stalerl import objectives  # noqa: E402
from stalerl.integrations import verl as sv  # noqa: E402
from stalerl.objectives.base import BatchStats  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERL_BUILTINS = {"vanilla": "compute_policy_loss_vanilla", "gspo": "compute_policy_loss_gspo",
                 "cispo": "compute_policy_loss_cispo"}


def actor_config(clip_low=0.2, clip_high=0.28, clip_c=3.0, loss_mode="vanilla", global_batch_info=None, **kw):
    """An ActorConfig as verl's own CPU tests build it."""
    cfg = verl_config.ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
        clip_ratio_low=clip_low, clip_ratio_high=clip_high, clip_ratio_c=clip_c,
        policy_loss=verl_config.PolicyLossConfig(loss_mode=loss_mode), **kw,
    )
    if global_batch_info:
        cfg.global_batch_info.update(global_batch_info)
    return cfg


def batch(seed=0, b=6, t=9, spread=0.3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=dtype) * 3 - 0.05
    lp = old + spread * torch.randn(b, t, generator=g, dtype=dtype)
    adv = torch.randn(b, generator=g, dtype=dtype)
    mask = torch.ones(b, t, dtype=torch.bool)
    for i in range(b):
        mask[i, t - i:] = False  # ragged lengths, every row non-empty
    rollout = old + 0.2 * torch.randn(b, t, generator=g, dtype=dtype)
    return lp, old, adv[:, None].expand(b, t).clone(), mask, rollout


def call_verl(name, lp, old, adv, mask, config, mode="token-mean", weights=None):
    lp = lp.clone().requires_grad_(True)
    loss, metrics = core_algos.get_policy_loss_fn(name)(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode=mode,
        config=config, rollout_is_weights=weights,
    )
    loss.backward()
    return loss.detach(), lp.grad, metrics


# ----------------------------------------------------------------------------- plugin loading
PLUGIN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import verl  # verl/__init__.py loads the 'verl.plugins' entry points, as in every verl process
    from verl.trainer.ppo import core_algos
    from stalerl import objectives
    out = {"loaded": "stalerl.integrations.verl" in sys.modules, "registry": {}}
    for name, fn in core_algos.POLICY_LOSS_REGISTRY.items():
        out["registry"][name] = [getattr(fn, "stalerl_objective", None), fn.__module__, fn.__name__]
    out["available"] = objectives.available()
    print("JSON" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def fresh_registry():
    eps = [ep for ep in importlib.metadata.entry_points(group="verl.plugins") if ep.name == "stalerl"]
    assert eps and eps[0].value == "stalerl.integrations.verl:register", (
        "the 'verl.plugins' entry point of stalerl is not installed: pip install -e . (or pip install stalerl[verl])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES")}
    proc = subprocess.run([sys.executable, "-c", PLUGIN_SCRIPT], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON"))
    return json.loads(line[4:])


def test_entry_point_registers_every_objective_in_a_fresh_process(fresh_registry):
    reg = fresh_registry["registry"]
    assert fresh_registry["loaded"], "import verl did not import stalerl.integrations.verl"
    for name in fresh_registry["available"]:
        assert reg.get(sv.PREFIX + name, [None])[0] == name, f"stalerl_{name} missing from verl's registry"
        if name in VERL_BUILTINS:
            continue
        assert reg.get(name, [None])[0] == name, f"plain {name!r} is not stalerl's"


def test_verl_builtins_survive_registration(fresh_registry):
    reg = fresh_registry["registry"]
    for name, fn_name in VERL_BUILTINS.items():
        assert reg[name] == [None, "verl.trainer.ppo.core_algos", fn_name], f"verl's {name!r} was replaced"
    # in this process too, and registering again changes nothing (idempotent)
    before = dict(core_algos.POLICY_LOSS_REGISTRY)
    mapping = sv.register()
    assert core_algos.POLICY_LOSS_REGISTRY == before
    assert mapping["m2po"] == "m2po" and mapping["stalerl_gspo"] == "gspo" and "gspo" not in mapping
    for name, fn_name in VERL_BUILTINS.items():
        fn = core_algos.get_policy_loss_fn(name)
        assert fn.__module__ == "verl.trainer.ppo.core_algos" and fn.__name__ == fn_name


# ----------------------------------------------------------------------------- equality with stalerl
def direct_hparams(name, clip_low, clip_high, clip_c):
    fields = objectives.defaults(name)
    hp = {"loss_agg_mode": "token-mean"}  # verl passes actor.loss_agg_mode (token-mean), also to gspo
    if "epsilon_low" in fields:
        hp.update(epsilon_low=clip_low, epsilon_high=clip_high)
    if "dual_clip" in fields:
        hp["dual_clip"] = clip_c
    if "stats_scope" in fields:
        hp["stats_scope"] = "micro"
    return hp


@pytest.mark.parametrize("name", objectives.available())
def test_registered_loss_equals_stalerl_directly(name):
    sv._CACHE.clear()  # fresh state for the stateful objectives (ac_mispo, random_traj)
    lp, old, adv, mask, rollout = batch(seed=1, spread=0.02 if "mispo" in name else 0.3)
    cfg = actor_config(clip_low=0.2, clip_high=0.28)
    hp = direct_hparams(name, 0.2, 0.28, 3.0)
    direct = objectives.build(name, **{k: v for k, v in hp.items()})
    lp_d = lp.clone().requires_grad_(True)
    kwargs = {"rollout_log_prob": rollout} if name == "tis" else {}
    out = direct(lp_d, old, adv, mask, **kwargs)
    out.loss.backward()
    weights = None
    if name == "tis":  # verl's token TIS weight: min(pi_old / pi_rollout, C)
        weights = torch.clamp(torch.exp(old - rollout), max=direct.config.tis_cap)
    for verl_name in [sv.PREFIX + name] + ([] if name in VERL_BUILTINS else [name]):
        sv._CACHE.clear()
        loss, grad, metrics = call_verl(verl_name, lp, old, adv, mask, cfg, weights=weights)
        torch.testing.assert_close(loss, out.loss.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, lp_d.grad, rtol=1e-10, atol=1e-12)
        for key in ("actor/ppo_kl", "actor/pg_clipfrac"):
            assert metrics[key] == pytest.approx(out.metrics[key], rel=1e-9, abs=1e-12)
        assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("stalerl_name,verl_name,mode", [
    ("stalerl_grpo", "vanilla", "token-mean"), ("stalerl_grpo", "vanilla", "seq-mean-token-sum"),
    ("stalerl_grpo", "vanilla", "seq-mean-token-sum-norm"), ("stalerl_grpo", "vanilla", "token-sum"),
    ("stalerl_cispo", "cispo", "token-mean"), ("stalerl_cispo", "cispo", "seq-mean-token-mean"),
    ("stalerl_gspo", "gspo", "seq-mean-token-mean"), ("stalerl_gspo_token", "gspo", "token-mean"),
])
@pytest.mark.parametrize("with_weights", [False, True])
def test_matches_verl_builtin_with_global_batch_info_and_weights(stalerl_name, verl_name, mode, with_weights):
    """dp_size / batch_num_tokens / global_batch_size / loss_scale_factor and rollout_is_weights act
    exactly as in verl's built-in losses (the normaliser a micro-batch gets from its mini-batch)."""
    lp, old, adv, mask, rollout = batch(seed=2, spread=0.01 if "gspo" in stalerl_name else 0.3)
    low, high = (3e-4, 4e-4) if "gspo" in stalerl_name else (0.2, 0.28)
    info = {"dp_size": 2, "batch_num_tokens": 57, "global_batch_size": 13, "loss_scale_factor": 7}
    weights = torch.clamp(torch.exp(old - rollout), max=2.0) if with_weights else None
    ref = call_verl(verl_name, lp, old, adv, mask, actor_config(low, high, global_batch_info=info), mode, weights)
    sv._CACHE.clear()
    got = call_verl(stalerl_name, lp, old, adv, mask, actor_config(low, high, global_batch_info=info), mode, weights)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-7, atol=1e-10)
    if not (stalerl_name == "stalerl_gspo" and with_weights):
        # (GSPO differentiates through s_i, so per-token weights spread its gradient differently from
        # verl's GSPO-token: same value, different gradient; gspo_token matches both.)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-7, atol=1e-10)
    assert got[2]["actor/ppo_kl"] == pytest.approx(ref[2]["actor/ppo_kl"], rel=1e-9)


def test_global_batch_info_is_stalerl_minibatch_normaliser():
    """token-mean with verl's global counts = stalerl's micro-batch loss given the mini-batch's BatchStats."""
    lp, old, adv, mask, _ = batch(seed=3, spread=0.1)
    info = {"dp_size": 4, "batch_num_tokens": 120, "global_batch_size": 24}
    sv._CACHE.clear()
    got = call_verl("m2po", lp, old, adv, mask, actor_config(global_batch_info=info))[0]
    obj = objectives.build("m2po", stats_scope="micro")
    want = obj(lp, old, adv, mask, batch_stats=BatchStats(num_tokens=120 / 4, num_seqs=24 / 4)).loss
    torch.testing.assert_close(got, want.detach())


def test_rollout_is_weights_multiply_the_per_token_loss():
    lp, old, adv, mask, rollout = batch(seed=4, spread=0.1)
    w = torch.clamp(torch.exp(old - rollout), max=2.0)
    sv._CACHE.clear()
    plain = call_verl("m2po", lp, old, adv, mask, actor_config(), weights=None)[0]
    weighted = call_verl("m2po", lp, old, adv, mask, actor_config(), weights=w)[0]
    from stalerl.integrations import per_token_loss
    loss_mat, agg_mask, _ = per_token_loss(objectives.build("m2po", stats_scope="micro"), lp, old, adv, mask)
    torch.testing.assert_close(weighted, (loss_mat * w * agg_mask).sum() / agg_mask.sum())
    assert not torch.allclose(plain, weighted)


def test_tis_needs_verl_rollout_correction():
    lp, old, adv, mask, _ = batch()
    with pytest.raises(ValueError, match="rollout_is"):
        call_verl("tis", lp, old, adv, mask, actor_config())


def test_stateful_objective_steps_once_per_call_and_is_cached():
    sv._CACHE.clear()
    lp, old, adv, mask, _ = batch(seed=5, spread=0.01)
    cfg = actor_config()
    for _ in range(3):
        metrics = call_verl("ac_mispo", lp, old, adv, mask, cfg)[2]
    # without stalerl's actor worker: the per-micro-batch fallback, one controller step per call
    (_key, obj), = [(k, o) for k, o in sv.objective_cache().items()
                   if k[0] == "ac_mispo" and o.config.stats_scope == "micro"]
    assert obj.state_dict()["step"] == 3 and metrics["actor/controller_step"] == 3.0


def test_hparams_precedence_env_then_config(monkeypatch):
    cfg = actor_config(clip_low=0.1, clip_high=0.3)
    assert sv.resolve_hparams("grpo", cfg) == {"epsilon_low": 0.1, "epsilon_high": 0.3, "dual_clip": 3.0}
    assert sv.resolve_hparams("m2po", cfg) == {}
    monkeypatch.setenv(sv.HPARAMS_ENV, '{"tau": 0.1, "trust_region_only": false}')
    assert sv.resolve_hparams("m2po", cfg) == {"tau": 0.1, "trust_region_only": False}
    pl = sv.StaleRLPolicyLossConfig(loss_mode="m2po", stalerl={"tau": 0.2})
    cfg2 = verl_config.ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, policy_loss=pl)
    assert sv.resolve_hparams("m2po", cfg2)["tau"] == 0.2  # the config beats the environment
    monkeypatch.setenv(sv.HPARAMS_ENV, "[1, 2]")
    with pytest.raises(ValueError, match=sv.HPARAMS_ENV):
        sv.resolve_hparams("m2po", cfg)


def test_policy_loss_config_rejects_unknown_hparam_early():
    with pytest.raises(ValueError, match="taux"):
        sv.StaleRLPolicyLossConfig(loss_mode="m2po", stalerl={"taux": 0.1})
    sv.StaleRLPolicyLossConfig(loss_mode="vanilla", stalerl={"anything": 1})  # not a stalerl loss: untouched


# ----------------------------------------------------------------------------- Hydra, verl's real config path
HYDRA_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from stalerl import objectives

    def actor(overrides):
        d = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
        with initialize_config_dir(config_dir=d, version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=overrides)
        return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # what verl's workers do

    base = ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=4",
            "actor_rollout_ref.actor.policy_loss.loss_mode=m2po"]
    target = "actor_rollout_ref.actor.policy_loss._target_=stalerl.integrations.verl.StaleRLPolicyLossConfig"
    out = {}
    a = actor(base + [target, "+actor_rollout_ref.actor.policy_loss.stalerl={tau:0.003,trust_region_only:false}"])
    out["types"] = [type(a).__name__, type(a.policy_loss).__name__]
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(8, 12, generator=g, dtype=torch.float64) * 2
    lp = old + 0.2 * torch.randn(8, 12, generator=g, dtype=torch.float64)
    adv = torch.randn(8, 1, generator=g, dtype=torch.float64).expand(8, 12)
    mask = torch.ones(8, 12, dtype=torch.bool)
    loss, metrics = get_policy_loss_fn(a.policy_loss.loss_mode)(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
        loss_agg_mode=a.loss_agg_mode, config=a)
    want = objectives.build("m2po", tau=0.003, trust_region_only=False, stats_scope="micro")(lp, old, adv, mask)
    default = objectives.build("m2po")(lp, old, adv, mask)
    out["loss"], out["want"], out["default"] = loss.item(), want.loss.item(), default.loss.item()
    out["m2_after"], out["masked"] = metrics["actor/m2_after"], metrics["actor/m2_masked_tokens"]
    # without the _target_ override verl's own PolicyLossConfig refuses the extra key
    try:
        actor(base + ["+actor_rollout_ref.actor.policy_loss.stalerl={tau:0.003}"])
        out["plain_refused"] = None
    except Exception as e:
        out["plain_refused"] = str(e)[-300:]
    # a misspelt hyperparameter fails when verl builds its config
    try:
        actor(base + [target, "+actor_rollout_ref.actor.policy_loss.stalerl={taux:0.003}"])
        out["typo"] = None
    except Exception as e:
        out["typo"] = str(e)[-400:]
    # verl's clip fields reach stalerl's clip hyperparameters
    a = actor(base[:2] + ["actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_cispo",
                          "actor_rollout_ref.actor.clip_ratio_low=1.0", "actor_rollout_ref.actor.clip_ratio_high=4.0"])
    from stalerl.integrations.verl import resolve_hparams
    out["cispo_hp"] = resolve_hparams("cispo", a)
    print("JSON" + json.dumps(out))
    """
)


def test_hydra_composed_config_reaches_the_loss():
    env = {k: v for k, v in os.environ.items() if k != "STALERL_HPARAMS"}
    proc = subprocess.run([sys.executable, "-c", HYDRA_SCRIPT], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON"))[4:])
    assert out["types"] == ["FSDPActorConfig", "StaleRLPolicyLossConfig"]
    assert out["loss"] == pytest.approx(out["want"], rel=1e-12)
    assert out["loss"] != pytest.approx(out["default"], rel=1e-6)  # tau=0.003 masked tokens the default keeps
    assert out["m2_after"] <= 0.003 + 1e-12 and out["masked"] > 0
    assert out["plain_refused"] is not None and "stalerl" in out["plain_refused"]
    assert out["typo"] is not None and "taux" in out["typo"]
    assert out["cispo_hp"] == {"epsilon_low": 1.0, "epsilon_high": 4.0}


# ----------------------------------------------------------------------------- example launch scripts
EXAMPLES_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from stalerl.integrations.verl import objective_name, resolve_hparams, stats_objective
    from stalerl.integrations.verl_main import StaleRLTaskRunner, check_config
    from stalerl.integrations.verl_stale import stale_config, updates_per_step

    runs = json.loads(sys.stdin.read())
    out = {}
    d = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=d, version_base=None):
        for name, overrides in runs.items():
            cfg = compose(config_name="ppo_trainer", overrides=overrides)
            check_config(cfg)
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
            actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
            mode = actor.policy_loss.loss_mode
            get_policy_loss_fn(mode)
            obj = objective_name(mode)
            runner = StaleRLTaskRunner()
            worker_cls, _ = runner.add_actor_rollout_worker(cfg)
            stats = stats_objective(actor)
            score = get_custom_reward_fn(cfg)
            out[name] = {"loss_mode": mode, "objective": obj,
                         "hp": resolve_hparams(obj, actor) if obj else None,
                         "stats": None if stats is None else type(stats).__name__,
                         "worker": worker_cls.__name__,
                         "workers": sorted({c.__ray_metadata__.modified_class.__name__
                                            for c in runner.role_worker_mapping.values()}),
                         "staleness": stale_config(cfg).staleness, "m": updates_per_step(cfg),
                         "steps": cfg.trainer.total_training_steps, "use_v1": cfg.trainer.use_v1,
                         "val_n": cfg.actor_rollout_ref.rollout.val_kwargs.n,
                         "val_dump": cfg.trainer.get("validation_data_dir"),
                         "chat_template": cfg.actor_rollout_ref.model.get("custom_chat_template"),
                         "score": [score("math", "\\\\boxed{2}", "2")["score"], score("math", "\\\\boxed{3}", "2")["acc"]]}
    print("JSON" + json.dumps(out))
    """
)


def test_example_scripts_compose_with_verls_config():
    """Every run of examples/verl/*.sh composes with verl's ppo_trainer.yaml, passes verl's own
    validate_config and stalerl's checks, selects stalerl's worker and trainer, a registered loss, the
    M2PO reward and the paper's validation settings."""
    from stalerl.data.prepare import PLAIN_CHAT_TEMPLATE

    runs = {}
    for script in ("prosperity", "mispo_mechanism", "ac_mispo", "minpro"):
        proc = subprocess.run(["bash", os.path.join(REPO, "examples", "verl", f"{script}.sh")], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "DRY_RUN": "1"}, timeout=60)
        assert proc.returncode == 0, proc.stderr
        for block in proc.stdout.split("== RUN ")[1:]:
            name, launch, *overrides = [ln for ln in block.splitlines() if ln]
            assert launch == "LAUNCH python3 -m stalerl.integrations.verl_main"
            runs[name] = overrides
    assert len(runs) == 8 + 3 + 5 + 5
    env = {k: v for k, v in os.environ.items() if k != "STALERL_HPARAMS"}
    proc = subprocess.run([sys.executable, "-c", EXAMPLES_SCRIPT], input=json.dumps(runs), capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON"))[4:])
    m2po = out["prosperity-m2po-s256"]
    assert m2po["hp"] == {"tau": 0.04} and m2po["stats"] == "M2PO"  # mini-batch statistics (stalerl's worker)
    assert m2po["staleness"] == 256 and m2po["m"] == 4 and m2po["steps"] == 500 + 64  # + s/m fill-up steps
    assert out["prosperity-m2po-s0"]["staleness"] == 0 and out["prosperity-m2po-s0"]["steps"] == 500
    assert out["prosperity-gspo-s0"]["objective"] == "gspo" and out["prosperity-gspo-s0"]["stats"] is None
    assert out["minpro-minpro-s8"]["hp"] == {"epsilon_low": 1.0, "epsilon_high": 4.0}
    assert out["minpro-minpro-s8"]["staleness"] == 8 and out["minpro-minpro-s8"]["val_n"] == 128
    assert out["minpro-minpro-s8"]["val_dump"].endswith("minpro-minpro-s8")
    assert out["ac-mispo-ac_mispo-s256"]["hp"]["warmup_train_steps"] == 200
    assert out["ac-mispo-ac_mispo-s256"]["hp"]["updates_per_train_step"] == 4 and out["ac-mispo-ac_mispo-s256"]["stats"] == "ACMISPO"
    assert out["mispo-mechanism-mispo_random_traj-s256"]["stats"] == "MISPORandomTraj"
    for r in out.values():
        assert r["objective"] and r["use_v1"] is False
        assert r["worker"] == "StaleRLActorRolloutRefWorker" and r["workers"] == ["StaleRLActorRolloutRefWorker"]
        assert r["score"] == [1.0, 0.0]  # stalerl's compute_score, loaded by verl's own loader
        assert r["chat_template"] == PLAIN_CHAT_TEMPLATE
    assert out["prosperity-grpo-s0"]["val_n"] == 4
