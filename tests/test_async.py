"""Async mode (``stale.mode=async``): staleness accounting of the rollout worker process.

* the staleness bound ``0 <= u_first - policy_version <= s`` holds for every batch;
* a batch's ``policy_version`` is what it claims: its behaviour log-probs (computed by the
  worker's copy) equal the trainer's recomputation with the weights of that version;
* every batch is consumed once and in order, across a checkpoint/resume too;
* the worker shuts down on normal end and on error, leaving no process behind.

Uses the session's tiny testbed (``tiny_testbed`` of tests/conftest.py, ``STALERL_CACHE`` in a
session temp dir) on CPU and a trivial user reward.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import torch

from stalerl.staleness.async_rollout import (
    AsyncRolloutWorker,
    AsyncWorkerError,
    min_policy_version,
    pack_state_dict,
    unpack_state_dict,
)
from stalerl.training.config import ConfigError, load_config

REWARD = '''
import os


def reward(completions, answers):
    return [float(len(c) % 2) for c in completions]
def threads(completions, answers):
    import torch

    with open(os.environ["STALERL_TEST_THREADS_FILE"], "a") as f:
        f.write(f"{os.getpid()} {torch.get_num_threads()}\\n")
    return [float(len(c) % 2) for c in completions]
def failing(completions, answers):
    n = int(os.environ.get("STALERL_TEST_FAIL_AFTER", "0"))
    path = os.environ["STALERL_TEST_FAIL_COUNTER"]
    calls = int(open(path).read()) if os.path.exists(path) else 0
    open(path, "w").write(str(calls + 1))
    if calls >= n:
        raise RuntimeError("boom: reward failed on purpose")
    return [0.0 for _ in completions]
'''


@pytest.fixture(scope="session")
def async_env(tiny_testbed, tmp_path_factory):
    """The session's tiny testbed (tests/conftest.py) and a reward module."""
    root = tmp_path_factory.mktemp("async")
    (root / "rewards.py").write_text(REWARD)
    return {"root": root, "rewards": root / "rewards.py", "model_dir": tiny_testbed}


def _config(env, run_dir, *extra, reward="reward"):
    return load_config(overrides=[
        f"model.path={env['model_dir']}", "model.device=cpu", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "optim.mini_batches=2", "optim.micro_batch_size=4", "stale.staleness=4",
        "stale.mode=async", "data.eval_size=0", "data.testbed_train_size=64", "steps=6", "checkpoint_every=0",
        "tensorboard=false", "plots=false", "progress=false", f"run_dir={run_dir}",
        f"reward.function={env['rewards']}:{reward}", "optim.lr=0.01", *extra,
    ])


def _records(run_dir: Path, name: str):
    path = Path(run_dir) / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _worker_pids(run_dir):
    return [r["pid"] for r in _records(run_dir, "events.jsonl") if r.get("event") == "async_worker_start"]


def _assert_gone(pid):
    import psutil

    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, f"rollout worker {pid} still running"
    assert not [p for p in multiprocessing.active_children() if p.name == "stalerl-rollout-worker"]


def _check_accounting(run_dir, s, m, first_step=0):
    """Per step: its batch's version respects the bound; per update: staleness = u - version."""
    steps = [r for r in _records(run_dir, "metrics.jsonl") if "event" not in r and r["step"] > first_step]
    updates = _records(run_dir, "updates.jsonl")
    by_step = {}
    for u in updates:
        by_step.setdefault(u["step"], []).append(u)
    for r in steps:
        j = r["step"] - 1  # batch j is consumed by step j + 1 at updates j*m ... j*m + m - 1
        version = r["train/data_policy_version"]
        assert min_policy_version(j, s, m) <= version <= j * m, (j, version)
        assert version % m == 0  # snapshots are sent after whole steps
        us = by_step[r["step"]]
        assert [u["update"] for u in us] == list(range(j * m, j * m + m))
        for u in us:
            assert u["train/staleness"] == u["update"] - version
            assert 0 <= u["train/staleness"] <= s + m - 1
    return steps


def test_config_switch():
    assert load_config().stale.mode == "sync"
    with pytest.raises(ConfigError, match="stale.mode"):
        load_config(overrides=["stale.mode=threads"])


def test_pack_roundtrip():
    lin = torch.nn.Linear(3, 2)
    lin.register_buffer("steps", torch.arange(4))
    out = unpack_state_dict(pack_state_dict(lin))
    for k, v in lin.state_dict().items():
        assert torch.equal(out[k], v) and out[k].dtype == v.dtype


def test_worker_versions_are_what_they_claim(async_env, tmp_path):
    """Drive the worker by hand: perturbed weights per version, then check every batch's
    behaviour log-probs against a recomputation at the version it claims, and the bound."""
    from stalerl.models.logprobs import completion_log_probs
    from stalerl.training.loop import load_policy

    config = _config(async_env, tmp_path / "run")
    s, m, n_batches = config.stale.staleness, config.optim.mini_batches, 5
    model, _, path = load_policy(config, progress=False)
    model.eval()
    versions = {0: pack_state_dict(model)}
    torch.manual_seed(0)
    with AsyncRolloutWorker(config, path, start_batch=0, end_batch=n_batches,
                            sampler_state={"epoch": 0, "position": 0}, threads=1).start() as worker:
        worker.send_snapshot(model, 0)
        exact = 0
        for j in range(n_batches):
            k, batch, sampler_state = worker.get(timeout=60)
            assert k == j and sampler_state["position"] == (j + 1) * config.rollout.prompts_per_step
            v = batch.policy_version
            assert v in versions and min_policy_version(j, s, m) <= v <= j * m
            exact += v == min_policy_version(j, s, m)
            # the trainer's recomputation at that version
            ref = type(model)(model.config)
            ref.load_state_dict(unpack_state_dict(versions[v]))
            ref.eval()
            with torch.no_grad():
                lp, _ = completion_log_probs(ref, batch.input_ids, batch.attention_mask, batch.response_length,
                                             temperature=config.rollout.temperature, compute_entropy=False)
            mask = batch.response_mask.bool()
            assert torch.allclose(lp[mask], batch.old_log_prob[mask], atol=1e-5)
            if v > 0:  # the test can tell versions apart
                other = type(model)(model.config)
                other.load_state_dict(unpack_state_dict(versions[v - m]))
                with torch.no_grad():
                    lp_other, _ = completion_log_probs(other.eval(), batch.input_ids, batch.attention_mask,
                                                       batch.response_length, compute_entropy=False)
                assert not torch.allclose(lp_other[mask], batch.old_log_prob[mask], atol=1e-3)
            # "train" m updates: perturb the weights, publish the new version
            time.sleep(0.2)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            versions[(j + 1) * m] = pack_state_dict(model)
            worker.send_snapshot(model, (j + 1) * m)
        assert exact >= 1
        pid = worker.pid
    _assert_gone(pid)


def test_train_async_bound_clean_end_and_resume(async_env, tmp_path):
    """A run of 3 steps (bound, per-update staleness, worker gone at the end; the batches received
    but not consumed are checkpointed), then resumed to 6: the bound holds, batch indices continue
    (the loop checks them) and the sampler has drawn the prompts of each received batch once."""
    from stalerl.training import checkpoint as ckpt
    from stalerl.training.loop import train

    run = tmp_path / "run"
    s, m, P = 4, 2, 2
    result = train(_config(async_env, run, "steps=3"))
    assert result.steps_done == 3 and result.crashed_at is None
    steps = _check_accounting(run, s, m)
    assert len(steps) == 3 and all(r["timing_s/wait_rollout"] >= 0 for r in steps)
    (first_pid,) = _worker_pids(run)
    _assert_gone(first_pid)
    saved = ckpt.load_state(ckpt.latest_checkpoint(run / "checkpoints"))
    received = saved["loop"]["generated_batches"]
    assert received >= 3 and len(saved["buffer"]["queue"]) == received - 3
    assert saved["sampler"]["position"] == received * P  # prompts of the received batches only

    result = train(_config(async_env, run, "steps=6"), resume=run)
    assert result.steps_done == 6
    assert len(_check_accounting(run, s, m, first_step=3)) == 3
    final = ckpt.load_state(ckpt.latest_checkpoint(run / "checkpoints"))
    assert final["sampler"]["position"] == final["loop"]["generated_batches"] * P
    pids = _worker_pids(run)
    assert len(pids) == 2
    for pid in pids:
        _assert_gone(pid)


def test_worker_error_reaches_trainer_and_worker_exits(async_env, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("STALERL_TEST_FAIL_AFTER", "1")
    monkeypatch.setenv("STALERL_TEST_FAIL_COUNTER", str(tmp_path / "calls"))
    from stalerl.training.loop import train

    with pytest.raises(AsyncWorkerError, match="boom"):
        train(_config(async_env, run, reward="failing"))
    (pid,) = _worker_pids(run)
    _assert_gone(pid)


def test_worker_runs_on_the_threads_it_was_given(async_env, tmp_path, monkeypatch, one_thread):
    """runtime.cores=7 split between the two processes: 4 for the trainer, 3 for the worker, read
    inside the worker by its reward function."""
    from stalerl.training.loop import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = tmp_path / "threads.txt"
    monkeypatch.setenv("STALERL_TEST_THREADS_FILE", str(seen))
    result = train(_config(async_env, tmp_path / "run", "steps=2", "runtime.cores=7", reward="threads"))
    assert result.crashed_at is None
    assert torch.get_num_threads() == 4
    counts = {tuple(map(int, line.split())) for line in seen.read_text().splitlines()}
    assert {pid for pid, _ in counts} == set(_worker_pids(tmp_path / "run"))  # scored in the worker only
    assert {n for _, n in counts} == {3}
