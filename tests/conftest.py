"""Shared fixtures of the stalerl tests.

* ``stalerl_cache``: a session-wide ``$STALERL_CACHE`` (a temporary directory, so the tests never
  touch ``~/.cache/stalerl``; set ``STALERL_TEST_CACHE=DIR`` to reuse a persistent one between
  sessions while developing).
* ``tiny_testbed``: the ``tiny`` testbed checkpoint, warm-started once per session (with
  ``steps=0``: the fast tests need the code path and the tokenizer, not a model that can add).
* ``make_config``: a small :class:`~stalerl.training.config.TrainConfig` for the fast training
  tests (tiny sizes, no TensorBoard, no plots, no progress bar, a cheap user reward with
  variance so that the updates have non-zero gradients).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

#: Overrides of every fast training test (tiny sizes: keep runs to seconds).
TINY_OVERRIDES = [
    "model.testbed_size=tiny",
    "model.device=cpu",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=24",
    "optim.mini_batches=2",
    "optim.micro_batch_size=4",
    "optim.lr=1e-3",
    "data.eval_size=8",
    "eval.samples=2",
    "data.testbed_train_size=200",
    "tensorboard=false",
    "plots=false",
    "progress=false",
]


def digit_reward(completions, answers):
    """A cheap reward with variance inside every group (the share of digits in the completion),
    so that an untrained model still gets non-zero advantages and gradients."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.fixture(scope="session")
def stalerl_cache(tmp_path_factory):
    """``$STALERL_CACHE`` for the whole session (restored at the end)."""
    chosen = os.environ.get("STALERL_TEST_CACHE")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("stalerl_cache")
    path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("STALERL_CACHE")
    os.environ["STALERL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("STALERL_CACHE", None)
    else:
        os.environ["STALERL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_testbed(stalerl_cache) -> Path:
    """Directory of the ``tiny`` testbed checkpoint (``save_pretrained`` layout), built once."""
    import torch

    from stalerl.testbed.warmstart import warm_start

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return warm_start(size="tiny", steps=0, cache_dir=stalerl_cache, progress=False)
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (restored afterwards): on models this small, more
    threads only add synchronisation, and on a busy machine they make a run ten times slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_overrides(tiny_testbed, tmp_path, one_thread):
    """``tiny_overrides("steps=3", run_dir=...)`` -> the ``key=value`` list of a small run (for
    ``load_config`` or the CLI). The run directory defaults to ``tmp_path / "run"``; the model is
    the session's tiny testbed and the reward :func:`digit_reward` (``reward.function=null``
    selects math-verify)."""

    def build(*overrides: str, run_dir: str | Path | None = None) -> list[str]:
        return TINY_OVERRIDES + [
            f"model.path={tiny_testbed}",
            f"reward.function={Path(__file__).resolve()}:digit_reward",
            f"run_dir={run_dir or tmp_path / 'run'}",
        ] + list(overrides)

    return build


@pytest.fixture
def make_config(tiny_overrides):
    """``make_config("steps=3", "stale.staleness=2", run_dir=...)`` -> a small TrainConfig
    (built by ``load_config(None, overrides)``, so it is validated like a user's)."""
    from stalerl.training.config import load_config

    def build(*overrides: str, run_dir: str | Path | None = None):
        return load_config(None, tiny_overrides(*overrides, run_dir=run_dir))

    return build
