"""The surface a user imports: the top-level API, ``__all__`` of every public package, ``py.typed``
and the docstring examples (run as doctests)."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import stalerl

PACKAGE = Path(stalerl.__file__).parent
PUBLIC_PACKAGES = ["objectives", "training", "data", "rewards", "evaluation", "staleness", "rollout", "models", "studies",
                   "integrations", "testbed"]


def test_top_level_exports_the_entry_points():
    from stalerl import RunResult, TrainConfig, load_config, train
    from stalerl.training.config import TrainConfig as config_class
    from stalerl.training.loop import RunResult as result_class
    from stalerl.training.loop import train as train_fn

    assert (train, TrainConfig, RunResult) == (train_fn, config_class, result_class)
    config = load_config(None, ["steps=3"])
    assert isinstance(config, TrainConfig) and config.steps == 3
    assert {"train", "TrainConfig", "load_config", "RunResult"} <= set(stalerl.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stalerl.nope  # noqa: B018


def test_import_stalerl_does_not_load_the_loop_or_transformers():
    code = ("import sys, stalerl; print(sorted(m for m in ('transformers', 'stalerl.training.loop') if m in sys.modules)); "
            "stalerl.train; print('stalerl.training.loop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_public_package_declares_all_and_each_name_resolves(package):
    module = importlib.import_module(f"stalerl.{package}")
    names = module.__all__
    assert names and len(names) == len(set(names))
    if package == "integrations":  # the verl/TRL submodules are imported on purpose only
        assert names == ["per_token_loss"]
    for name in names:
        assert getattr(module, name) is not None, f"stalerl.{package}.{name}"


def test_package_ships_py_typed_and_its_configs():
    assert (PACKAGE / "py.typed").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert '"configs/*.yaml", "py.typed"' in pyproject
    assert sorted(p.name for p in (PACKAGE / "configs").glob("*.yaml"))


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_docstring_examples_are_found():
    assert {"stalerl.objectives", "stalerl.staleness.buffer", "stalerl.training.config"} <= set(_modules_with_examples())


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
