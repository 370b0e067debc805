"""The papers' protocol on verl 0.9.1: mini-batch statistics, stale-k, reward, data, configs.

* verl's own loss path (``verl.workers.utils.losses.ppo_loss`` on micro-batches that verl's own
  ``prepare_micro_batches`` makes from a ``left_right_2_no_padding`` batch), driven by
  :func:`stalerl.integrations.verl_minibatch.mini_batch_stats` the way ``StaleRLTrainingWorker``
  drives it, gives M2PO's mask and loss equal to stalerl's whole-mini-batch result token for token,
  in one process and in a 2-rank gloo group. The "engine" below follows the contract of verl's
  ``FSDPEngine.forward_backward_batch`` (global token count all-reduced, ``dp_size``, one loss call
  per micro-batch); its "model" returns fixed per-token log-probs held in a leaf tensor, so the
  gradient of that tensor is the per-token gradient of the loss.
* AC-MIS-PO steps once per mini-batch, identically on both ranks, and its state round-trips.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch

pytest.importorskip("verl.workers.utils.losses", reason="verl is a test dependency (pip install stalerl[test])")

from functools import partial

from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding

from stalerl import objectives
from stalerl.integrations import verl as sv
from stalerl.integrations import verl_minibatch
from stalerl.objectives import distributed as dist_utils

D = torch.float64
B, P, R = 8, 3, 6


def mini_batch(seed=0):
    """A left/right padded verl batch (as the trainer holds it) and the per-token tensors."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.tensor([3, 2, 3, 1, 3, 2, 3, 3])
    resp_len = torch.tensor([6, 4, 5, 6, 2, 6, 3, 5])
    attn = torch.zeros(B, P + R, dtype=torch.long)
    for i in range(B):
        attn[i, P - prompt_len[i]: P + resp_len[i]] = 1
    response_mask = attn[:, P:].clone()
    old = -torch.rand(B, R, generator=g, dtype=D) * 2 - 0.05
    # rows differ in how far the current policy moved: per-micro-batch M̂2 differs from the mini-batch's
    spread = torch.tensor([0.05, 0.4, 0.1, 0.6, 0.05, 0.3, 0.8, 0.2], dtype=D)[:, None]
    current = old + spread * torch.randn(B, R, generator=g, dtype=D)
    adv = torch.randn(B, 1, generator=g, dtype=D).expand(B, R).clone()
    ids = torch.randint(3, 50, (B, P + R), generator=g) * attn
    td = TensorDict({
        "prompts": ids[:, :P], "responses": ids[:, P:], "input_ids": ids, "attention_mask": attn,
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0), "response_mask": response_mask,
        "old_log_probs": old * response_mask, "advantages": adv * response_mask,
        "row_id": torch.arange(B),
    }, batch_size=[B])
    return td, current, old, adv, response_mask


class ContractEngine:
    """verl's engine contract (``infer_batch``/``train_batch`` with a per-micro-batch loss function)."""

    def __init__(self, current: torch.Tensor):
        self.param = current.clone().requires_grad_(True)
        self.loss_calls = 0

    def _log_probs(self, mb):
        """Nested (per sequence, all valid tokens) log-probs; token t+1's log-prob sits at position t."""
        attn = mb["attention_mask"]
        vals = []
        for k in range(attn.shape[0]):
            p, r = int(attn[k, :P].sum()), int(attn[k, P:].sum())
            row = int(mb["row_id"][k])
            vals += [torch.zeros(p - 1, dtype=D), self.param[row, :r], torch.zeros(1, dtype=D)]
        lengths = attn.sum(-1)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        return torch.nested.nested_tensor_from_jagged(torch.cat(vals), offsets=offsets)

    def _forward_backward(self, data, loss_function, forward_only):
        # as verl's FSDPEngine.forward_backward_batch
        n_tok = data["loss_mask"].sum().to(D)
        if dist_utils.is_distributed():
            n_tok = dist_utils.all_reduce_sum(n_tok)
        tu.assign_non_tensor(data, batch_num_tokens=n_tok.item(), dp_size=dist_utils.world_size())
        micro_batches, _ = prepare_micro_batches(data=data, dp_group=None, same_micro_num_in_dp=True)
        losses = []
        for mb in micro_batches:
            with torch.no_grad() if forward_only else torch.enable_grad():
                loss, _ = loss_function(model_output={"log_probs": self._log_probs(mb)}, data=mb, dp_group=None)
            if not forward_only:
                self.loss_calls += 1
                loss.backward()
            losses.append(loss.detach())
        return losses

    def infer_batch(self, data, loss_function=None):
        return self._forward_backward(data, loss_function, forward_only=True)

    def train_batch(self, data, loss_function):
        return self._forward_backward(data, loss_function, forward_only=False)


def verl_batch(td, rows, micro=2, global_batch=B):
    data = left_right_2_no_padding(td[rows].clone())
    tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro, global_batch_size=global_batch,
                         use_remove_padding=True)
    return data


def actor_config(loss_mode="m2po", stalerl=None):
    pl = sv.StaleRLPolicyLossConfig(loss_mode=loss_mode, stalerl=stalerl or {})
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, clip_ratio=0.2,
                       policy_loss=pl)


def run_update(engine, data, cfg):
    """One mini-batch as StaleRLTrainingWorker runs it: statistics pass, then verl's training pass."""
    loss_fn = partial(ppo_loss, config=cfg)
    obj = sv.stats_objective(cfg)
    losses = verl_minibatch.with_mini_batch_stats(engine, data, obj, lambda: engine.train_batch(data, loss_fn))
    return torch.stack(losses).sum(), obj


def direct(name, current, old, adv, mask, **hp):
    lp = current.clone().requires_grad_(True)
    out = objectives.build(name, **hp)(lp, old, adv, mask)
    out.loss.backward()
    return out, lp.grad


def test_m2po_minibatch_stats_through_verls_loss_path_equal_stalerl_token_for_token():
    sv._CACHE.clear()
    td, current, old, adv, mask = mini_batch()
    engine = ContractEngine(current)
    loss, obj = run_update(engine, verl_batch(td, slice(0, B)), actor_config())
    assert obj is not None and engine.loss_calls == B // 2  # four micro-batches, one loss call each
    out, grad = direct("m2po", current, old, adv, mask)
    torch.testing.assert_close(loss, out.loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(engine.param.grad, grad, rtol=1e-12, atol=1e-14)
    kept = out.extras["token_kept"]
    assert ((engine.param.grad != 0) == (kept & (mask > 0))).all()  # the mask, token for token
    assert (~kept & (mask > 0)).any() and (kept & (mask > 0)).any()  # it masks some tokens, not all

    # the per-micro-batch fallback is a different algorithm on this batch, and warns
    sv._CACHE.clear()
    sv._WARNED.clear()
    plain = ContractEngine(current)
    with pytest.warns(UserWarning, match="per micro-batch"):
        plain_losses = plain.train_batch(verl_batch(td, slice(0, B)), partial(ppo_loss, config=actor_config()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        plain.train_batch(verl_batch(td, slice(0, B)), partial(ppo_loss, config=actor_config()))
    assert not torch.allclose(torch.stack(plain_losses).sum(), out.loss.detach())


def test_ac_mispo_steps_once_per_mini_batch_and_state_round_trips():
    sv._CACHE.clear()
    td, current, old, adv, mask = mini_batch(seed=1)
    cfg = actor_config("ac_mispo")
    ref = objectives.build("ac_mispo")
    for k in range(3):
        cur = old + (current - old) * 0.02 * (k + 1)
        _, obj = run_update(ContractEngine(cur), verl_batch(td, slice(0, B)), cfg)
        ref.batch_stats(cur, old, adv, mask)
    assert obj.state_dict()["step"] == 3  # 3 mini-batches x 4 micro-batches: 3 controller steps
    assert obj.state_dict()["bound"] == pytest.approx(ref.bound, rel=1e-12)
    saved = sv.objective_states()
    sv._CACHE.clear()
    sv.load_objective_states(saved)  # restored before the objective exists (as after a resume)
    assert sv.stats_objective(cfg).state_dict() == obj.state_dict()


# ----------------------------------------------------------------------------- 2 ranks (gloo)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, outdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = slice(0, 4) if rank == 0 else slice(4, 8)
        td, current, old, _adv, _mask = mini_batch()
        engine = ContractEngine(current)
        loss, _ = run_update(engine, verl_batch(td, rows, global_batch=B), actor_config())
        bounds = []
        for k in range(2):
            cur = old + (current - old) * 0.02 * (k + 1)
            _, obj = run_update(ContractEngine(cur), verl_batch(td, rows, global_batch=B), actor_config("ac_mispo"))
            bounds.append(obj.state_dict())
        torch.save({"loss": loss, "grad": engine.param.grad, "ac": bounds}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_gloo_equal_one_process_mini_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _td, current, old, adv, mask = mini_batch()
    out, grad = direct("m2po", current, old, adv, mask)
    # verl scales each rank's loss by dp_size and FSDP averages gradients over ranks
    torch.testing.assert_close((r0["loss"] + r1["loss"]) / 2, out.loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([r0["grad"][:4], r1["grad"][4:]]) / 2, grad, rtol=1e-12, atol=1e-14)
    assert (r0["grad"][4:] == 0).all() and (r1["grad"][:4] == 0).all()
    ref = objectives.build("ac_mispo")
    for k in range(2):
        ref.batch_stats(old + (current - old) * 0.02 * (k + 1), old, adv, mask)
    assert r0["ac"] == r1["ac"]  # identical on every rank
    assert r0["ac"][-1]["step"] == 2 and r0["ac"][-1]["bound"] == pytest.approx(ref.bound, rel=1e-12)


# ----------------------------------------------------------------------------- compute_score
def test_compute_score_hand_cases_and_a_hanging_output_scores_zero():
    import time

    from verl.utils.import_utils import load_extern_object

    # loaded the way verl loads reward.custom_reward_function (path pkg://..., name compute_score)
    compute_score = load_extern_object("pkg://stalerl.rewards.verl_score", "compute_score")

    def score(*args, **kw):
        out = compute_score(*args, **kw)
        assert set(out) == {"score", "acc", "pred"} and out["acc"] == float(out["score"] == 1.0)
        return out["score"]

    assert compute_score("math", "so \\boxed{\\frac{1}{2}}", "0.5") == {"score": 1.0, "acc": 1.0, "pred": "\\frac{1}{2}"}
    assert score("math", "first \\boxed{3}, no wait: \\boxed{4}", "4", {"index": 0}) == 1.0  # the last box
    assert score("math", "\\boxed{3}", "4") == 0.1  # extracted but wrong: format_score
    assert score("math", "\\boxed{3}", "4", format_score=0.0) == 0.0  # the released code's value
    assert score("math", "the answer is 4", "4") == 0.0  # no box
    assert score("math", "", 4) == 0.0
    t0 = time.monotonic()
    assert score("math", "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}", "1", timeout_s=1.0) == 0.0  # hangs math-verify
    assert time.monotonic() - t0 < 20


# ----------------------------------------------------------------------------- stale-k FIFO over DataProto
def _fake_generation(step_policy_version: int, n: int = 4):
    """A generation step: a DataProto whose tensors carry the generating policy's version."""
    from verl import DataProto

    return DataProto.from_single_dict({
        "responses": torch.full((n, 3), step_policy_version, dtype=torch.long),
        "old_log_probs": torch.full((n, 3), -0.1 * step_policy_version),
    })


def _run_stale(stale_k, steps):
    """verl's step order: generate with the current policy, then _update_actor -> StaleK.step."""
    consumed, metrics = [], []
    for _ in range(steps):
        fresh = _fake_generation(stale_k.updates)

        def update(batch):
            consumed.append((stale_k.updates, int(batch.batch["responses"][0, 0])))
            return {"actor/pg_loss": 0.0}

        metrics.append(stale_k.step(fresh, update))
    return consumed, metrics


def test_stale_k_fifo_feeds_update_u_from_policy_u_minus_s():
    from stalerl.integrations.verl_stale import StaleK

    s, m = 8, 4  # depth s/m = 2 batches
    stale_k = StaleK(s, m)
    consumed, metrics = _run_stale(stale_k, steps=6)
    # steps 1-2 fill the queue from the initial policy; step 3 on trains on the batch from 2 steps before
    assert [len(mt) for mt in metrics[:2]] == [1, 1] and "train/staleness" not in metrics[0]
    # (first update of the step, version of the policy that generated the consumed batch)
    assert consumed == [(0, 0), (4, 0), (8, 0), (12, 4)]
    for u, v in consumed:
        assert v == max(0, u - s)
    assert metrics[-1]["train/staleness"] == 8 + 1.5 and metrics[-1]["train/staleness_max"] == 11
    assert metrics[-1]["train/staleness_min"] == 8
    assert metrics[-1]["actor/pg_loss"] == 0.0 and metrics[-1]["train/policy_version"] == 4


def test_stale_k_on_policy_when_s_is_zero():
    from stalerl.integrations.verl_stale import StaleK

    consumed, metrics = _run_stale(StaleK(0, 4), steps=3)
    assert consumed == [(0, 0), (4, 4), (8, 8)] and metrics[0]["train/staleness"] == 1.5


def test_stale_k_resume_is_exact(tmp_path):
    from stalerl.integrations.verl_stale import StaleK

    straight = StaleK(8, 4)
    want, _ = _run_stale(straight, steps=7)
    first = StaleK(8, 4)
    got, _ = _run_stale(first, steps=4)
    torch.save(first.state_dict(), tmp_path / "q.pt")  # as in verl's global_step_N folder
    resumed = StaleK(8, 4)
    resumed.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=False))
    assert [int(b.batch["responses"][0, 0]) for b in resumed.buffer.queue] == [0, 4]  # generated at steps 3, 4
    more, _ = _run_stale(resumed, steps=3)
    assert got + more == want
    with pytest.raises(ValueError, match="staleness=8"):
        StaleK(4, 4).load_state_dict(torch.load(tmp_path / "q.pt", weights_only=False))


# ----------------------------------------------------------------------------- stalerl data prepare
def test_data_prepare_writes_verl_parquet_and_names_bad_rows(tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from stalerl.cli.main import main
    from stalerl.data.templates import M2PO_TEMPLATE

    src = tmp_path / "train.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [{"problem": "What is 1+1?", "answer": 2},
                                                      {"problem": "Solve x^2=4, x>0.", "answer": "2"}]) + "\n")
    out = tmp_path / "verl" / "train.parquet"
    assert main(["data", "prepare", str(src), "--out", str(out), "--data-source", "toy", "--repeat", "2"]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 4 and "wrote 4 rows" in capsys.readouterr().out
    first = rows[0]
    assert first["prompt"] == [{"role": "user", "content": M2PO_TEMPLATE.format(question="What is 1+1?")}]
    assert first["data_source"] == "toy" and first["ability"] == "math"
    assert first["reward_model"] == {"style": "rule", "ground_truth": "2"}
    assert first["extra_info"]["index"] == 0 and [r["extra_info"]["repeat"] for r in rows] == [0, 1, 0, 1]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "ok", "answer": 1}) + "\n" + json.dumps({"question": "x"}) + "\n")
    assert main(["data", "prepare", str(bad), "--out", str(tmp_path / "b.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2" in err and "'problem' is missing" in err


def test_pass_at_k_from_verl_validation_dump(tmp_path):
    import json

    from stalerl.integrations.verl_eval import pass_at_k_from_dump

    # problem a: 1 of 4 correct (0.1 = boxed but wrong); problem b: 4 of 4
    scores = {"a": [1.0, 0.1, 0.0, 0.1], "b": [1.0] * 4}
    path = tmp_path / "25.jsonl"
    path.write_text("".join(json.dumps({"input": p, "output": "", "gts": "1", "score": s, "step": 25}) + "\n"
                            for p, ss in scores.items() for s in ss))
    got = pass_at_k_from_dump(str(path), ks=[1, 2, 4])
    # a: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1
    assert got == {"pass@1": (0.25 + 1) / 2, "pass@2": (0.5 + 1) / 2, "pass@4": 1.0, "n": 4.0, "problems": 2.0}


# ----------------------------------------------------------------------------- the worker classes themselves
class _WorkerEngine(ContractEngine):
    """ContractEngine plus what verl's TrainingWorker.train_batch asks of an engine."""

    def train_mode(self, disable_auto_offload=False):
        import contextlib

        return contextlib.nullcontext()

    def get_data_parallel_size(self):
        return 1

    def is_mp_src_rank_with_outputs(self):
        return False  # no metrics post-processing (that needs a device and a process group)

    def train_batch(self, data, loss_function):
        self.losses = self._forward_backward(data, loss_function, forward_only=False)
        return {}


def _bare(cls, **attrs):
    """A verl worker object without Ray (attributes set by hand, as its __init__ would)."""
    from types import SimpleNamespace

    from verl.utils.profiler import DistProfiler

    obj = cls.__new__(cls)
    obj.profiler = DistProfiler(rank=0, config=None)
    obj.__dict__.update(attrs)
    obj.engine_config = SimpleNamespace(forward_only=False, use_dynamic_bsz=False, max_token_len_per_gpu=None,
                                        micro_batch_size_per_gpu=2, use_fused_kernels=False)
    obj.model_config = {"use_remove_padding": True}
    return obj


def test_stalerl_training_worker_train_batch_runs_the_statistics_pass():
    from stalerl.integrations.verl_actor import StaleRLTrainingWorker

    sv._CACHE.clear()
    td, current, old, adv, mask = mini_batch()
    engine = _WorkerEngine(current)
    worker = _bare(StaleRLTrainingWorker, engine=engine, loss_fn=partial(ppo_loss, config=actor_config()))
    data = left_right_2_no_padding(td.clone())
    tu.assign_non_tensor(data, global_batch_size=B, global_token_num=[1] * B)
    assert worker.train_batch(data) is None
    out, grad = direct("m2po", current, old, adv, mask)
    torch.testing.assert_close(torch.stack(engine.losses).sum(), out.loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(engine.param.grad, grad, rtol=1e-12, atol=1e-14)


def test_actor_worker_checkpoint_carries_the_controller_state(tmp_path):
    from stalerl.integrations.verl_actor import (
        OBJECTIVE_STATE_FILE,
        StaleRLActorRolloutRefWorker,
    )

    class Actor:  # verl's TrainingWorker checkpoint calls, recorded
        def __init__(self):
            self.calls = []

        def save_checkpoint(self, *a):
            self.calls.append("save")

        def load_checkpoint(self, *a):
            self.calls.append("load")

    sv._CACHE.clear()
    td, current, old, _adv, _mask = mini_batch(seed=1)
    cfg = actor_config("ac_mispo")
    for k in range(2):
        run_update(ContractEngine(old + (current - old) * 0.02 * (k + 1)), verl_batch(td, slice(0, B)), cfg)
    want = sv.stats_objective(cfg).state_dict()
    worker = _bare(StaleRLActorRolloutRefWorker, role="actor_rollout", actor=Actor())
    worker.save_checkpoint(str(tmp_path / "actor"))
    assert (tmp_path / "actor" / OBJECTIVE_STATE_FILE).exists()
    sv._CACHE.clear()  # a fresh process resuming
    worker.load_checkpoint(str(tmp_path / "actor"))
    assert worker.actor.calls == ["save", "load"]
    assert sv.stats_objective(cfg).state_dict() == want and want["step"] == 2
