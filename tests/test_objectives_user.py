"""A user's own objective without forking: ``objectives.build("path/to/file.py:ClassName")`` and
``objective.name=path/to/file.py:ClassName`` in a run config.

Expected losses are worked out by hand in each test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stalerl import objectives
from stalerl.training.config import ConfigError, load_config

USER = Path(__file__).parent / "fixtures" / "user_objectives.py"


def _spec(name: str) -> str:
    return f"{USER}:{name}"


def test_build_user_class_from_file_runs_its_compute():
    obj = objectives.build(_spec("ScaledPG"), scale=2.0)
    assert obj.name == "scaled_pg" and obj.config.scale == 2.0
    log_prob = torch.tensor([[math.log(2.0), math.log(2.0)], [0.0, 0.0]], requires_grad=True)
    out = obj(log_prob, torch.zeros(2, 2), torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    # per token -2 * r * A: row 0 r=2, A=1 -> -4, -4; row 1 r=1, A=-1 -> 2, 2; token-mean -4/4
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.metrics["actor/ratio_mean"] == pytest.approx(1.5)
    out.loss.backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.5]]))  # d/dlogp of -2 r A / 4


def test_user_class_gets_the_same_hparam_and_input_checks_as_builtins():
    with pytest.raises(ValueError, match="unknown hyperparameter.*'tau'.*scaled_pg.*accepts: .*scale"):
        objectives.build(_spec("ScaledPG"), tau=0.1)
    with pytest.raises(ValueError, match="scale=.*must be a number"):
        objectives.build(_spec("ScaledPG"), scale="big")
    with pytest.raises(ValueError, match="old_log_prob has shape"):
        objectives.build(_spec("ScaledPG"))(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 3))
    assert objectives.defaults(_spec("ScaledPG")) == {"loss_agg_mode": "token-mean", "loss_scale_factor": None,
                                                      "scale": 1.0}


@pytest.mark.parametrize("name,message", [
    ("NotAnObjective", "is a type, not a subclass of stalerl.objectives.Objective"),
    ("not_a_class", "is a function, not a subclass of stalerl.objectives.Objective"),
    ("NoCompute", r"implement compute\(self, log_prob"),
    ("NoName", "set the class attribute name"),
    ("StatsWithoutComputeStats", r"uses_batch_stats is True, so implement compute_stats\(\)"),
    ("ConfigNotADataclass", "config_class must be a @dataclass subclass"),
    ("Missing", "class not found"),
])
def test_user_class_breaking_the_contract_is_named(name, message):
    with pytest.raises(ValueError, match=message) as info:
        objectives.build(_spec(name))
    assert str(USER) in str(info.value)


def test_user_objective_file_that_does_not_exist_or_fails_to_import(tmp_path):
    with pytest.raises(ValueError, match="cannot import it.*no such file"):
        objectives.build(f"{tmp_path / 'nope.py'}:X")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"cannot import it \(RuntimeError: boom\)"):
        objectives.build(f"{broken}:X")


def test_run_config_takes_a_user_objective_and_checks_its_hparams():
    config = load_config(None, [f"objective.name={_spec('ScaledPG')}", "objective.hparams={scale: 0.5}"])
    assert config.objective.name.endswith("user_objectives.py:ScaledPG")
    with pytest.raises(ConfigError, match="objective: unknown hyperparameter.*'bogus'"):
        load_config(None, [f"objective.name={_spec('ScaledPG')}", "objective.hparams={bogus: 1}"])
    with pytest.raises(ConfigError, match="NoCompute.*implement compute"):
        load_config(None, [f"objective.name={_spec('NoCompute')}"])
