"""Threads per process (stalerl.runtime): the count follows the CPU affinity mask, the number of
processes sharing it, ``runtime.cores``/``runtime.threads`` and ``$OMP_NUM_THREADS``; the loop
applies it. Expected counts are worked out by hand from the rule in the module docstring.
Inside the child processes: tests/test_async.py (rollout worker), tests/test_rewards.py
(verifier workers)."""

from __future__ import annotations

import os

import pytest
import torch

from stalerl import runtime
from stalerl.training.config import ConfigError, load_config


@pytest.fixture
def six_cores(monkeypatch):
    """This process may run on cores {0, ..., 5} and no thread variable is set."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_threads_follow_the_affinity_mask(six_cores, monkeypatch):
    assert runtime.available_cores() == 6
    assert runtime.choose_threads() == 6
    # async: trainer and rollout worker share the six cores
    assert [runtime.choose_threads(processes=2, index=i) for i in (0, 1)] == [3, 3]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)  # taskset -c 2,5,7
    assert runtime.choose_threads() == 3
    assert [runtime.choose_threads(processes=2, index=i) for i in (0, 1)] == [2, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert [runtime.choose_threads(processes=2, index=i) for i in (0, 1)] == [1, 1]  # never 0


def test_user_threads_win_over_everything(six_cores):
    env = {"OMP_NUM_THREADS": "4"}
    assert runtime.choose_threads(threads=2, cores=5, environ=env) == 2
    assert [runtime.choose_threads(processes=2, index=i, threads=2, environ=env) for i in (0, 1)] == [2, 2]


def test_omp_num_threads_is_the_run_budget(six_cores):
    assert runtime.choose_threads(environ={"OMP_NUM_THREADS": "4"}) == 4
    assert runtime.choose_threads(environ={"OMP_NUM_THREADS": "1"}) == 1
    assert [runtime.choose_threads(processes=2, index=i, environ={"OMP_NUM_THREADS": "5"}) for i in (0, 1)] == [3, 2]
    assert [runtime.choose_threads(processes=2, index=i, environ={"OMP_NUM_THREADS": "1"}) for i in (0, 1)] == [1, 1]
    assert runtime.choose_threads(environ={"OMP_NUM_THREADS": "4,2"}) == 4  # nested levels: the outer one
    assert runtime.choose_threads(environ={"OMP_NUM_THREADS": ""}) == 6     # empty = unset
    # runtime.cores, given in the config, wins over the environment
    assert runtime.choose_threads(cores=2, environ={"OMP_NUM_THREADS": "4"}) == 2


def test_bad_omp_num_threads_warns_and_falls_back_to_the_affinity(six_cores):
    with pytest.warns(UserWarning, match="OMP_NUM_THREADS='many'"):
        assert runtime.choose_threads(environ={"OMP_NUM_THREADS": "many"}) == 6
    with pytest.warns(UserWarning, match="OMP_NUM_THREADS='0'"):
        assert runtime.choose_threads(environ={"OMP_NUM_THREADS": "0"}) == 6


def test_split_cores_gives_the_remainder_to_the_first():
    assert runtime.split_cores(7, 3) == [3, 2, 2]
    assert runtime.split_cores(2, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="parts"):
        runtime.split_cores(4, 0)


def test_single_thread_env_keeps_the_rest():
    env = runtime.single_thread_env({"OMP_NUM_THREADS": "8", "PATH": "/bin"})
    assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/bin"}


def test_passive_waits_respect_a_wait_the_user_chose():
    env: dict[str, str] = {}
    assert runtime.passive_waits(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(chosen)
        assert not runtime.passive_waits(env) and env == chosen


def test_runtime_section_is_checked():
    assert load_config().runtime.threads is None and load_config().runtime.cores is None
    assert load_config(overrides=["runtime.threads=3"]).runtime.threads == 3
    with pytest.raises(ConfigError, match="runtime.threads must be >= 1, got 0"):
        load_config(overrides=["runtime.threads=0"])
    with pytest.raises(ConfigError, match="runtime.cores: expected an integer"):
        load_config(overrides=["runtime.cores=all"])


def test_the_loop_sets_the_trainers_threads(six_cores, one_thread):
    from stalerl.training.loop import _set_threads

    _set_threads(load_config(overrides=["stale.staleness=4"]))
    assert torch.get_num_threads() == 6
    _set_threads(load_config(overrides=["stale.staleness=4", "stale.mode=async", "runtime.cores=5"]))
    assert torch.get_num_threads() == 3   # the trainer's part of split_cores(5, 2) = [3, 2]
    _set_threads(load_config(overrides=["runtime.threads=2"]))
    assert torch.get_num_threads() == 2
