"""Bad input never costs a user their run: each mistake is one line on stderr naming the offending
key, file or path, a non-zero exit status, no traceback, and every file that existed before is
unchanged (``docs/REFUSALS.md`` lists what is refused and why).

Each test builds the mistake, snapshots the files around it, runs the command line and checks
those four things with :func:`refused`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stalerl.cli.main import main as cli_main
from stalerl.training import checkpoint as ckpt
from stalerl.training.logger import read_jsonl


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes."""
    files = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")) if Path(root).is_dir() else [Path(root)]:
            if path.is_file() and path.name != ".stalerl.lock":
                files[str(path)] = path.read_bytes()
    return files


def refused(argv: list[str], capsys, *names: str, code: int = 2, unchanged: dict | None = None) -> str:
    """Run the CLI and check: the exit status, one ``stalerl ...: error:`` line naming every one of
    ``names``, no traceback, and the files of ``unchanged`` still as they were."""
    before = dict(unchanged or {})
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    for name in names:
        assert name in errors[0], errors[0]
    for path, content in before.items():
        assert Path(path).read_bytes() == content, f"{path} changed"
    return errors[0]


@pytest.fixture
def finished_run(tiny_overrides, tmp_path):
    """A finished 1-step run (checkpoint at step 1) and the overrides that made it."""
    run = tmp_path / "done"
    overrides = tiny_overrides("steps=1", "stale.staleness=0", "data.eval_size=2", run_dir=run)
    assert cli_main(["train", *overrides]) == 0
    return run, overrides


# ============================================================================ values that mean nonsense


@pytest.mark.parametrize("override,names", [
    ("optim.grad_clip=-1", ["optim.grad_clip", "> 0"]),
    ("optim.grad_clip=0", ["optim.grad_clip", "> 0"]),
    ("optim.lr=.nan", ["optim.lr", "finite"]),
    ("optim.lr=.inf", ["optim.lr", "finite"]),
    ("eval.every=-1", ["eval.every", ">= 0"]),
    ("checkpoint_every=-1", ["checkpoint_every", ">= 0"]),
    ("optim.betas=[0.9]", ["optim.betas", "exactly 2"]),
    ("optim.betas=[1.0,0.999]", ["optim.betas[0]", "[0, 1)"]),
    ("eval.temperature=0", ["eval.temperature", "> 0"]),
    ("seed=123456789012345678901234567890", ["seed", "64 bits"]),
    ("seed=4294967296", ["seed", "[0, 4294967295]"]),
    ("rollout.max_new_tokens=0", ["rollout.max_new_tokens", ">= 1"]),
    ("reward.memory_limit_mb=16", ["reward.memory_limit_mb", ">= 128"]),
    ("data.testbed_levels=[]", ["data.testbed_levels", "empty"]),
    ("keep_checkpoints=0", ["keep_checkpoints", ">= 1"]),
    ("objective.hparams={tau: fast}", ["tau", "must be a number"]),
])
def test_config_values_that_mean_nonsense_are_refused_naming_the_field(override, names, tmp_path, capsys):
    run = tmp_path / "run"
    refused(["train", f"run_dir={run}", override], capsys, *names)
    assert not run.exists()  # nothing written for a command that is not valid


def test_yaml_file_with_a_key_twice_is_refused_naming_key_and_lines(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("optim:\n  lr: 1.0e-4\n  grad_clip: 1.0\n  lr: 3.0e-4\n")
    refused(["train", "--config", str(config), f"run_dir={tmp_path / 'run'}"], capsys,
            str(config), "'lr' appears twice", "lines 2 and 4", unchanged=snapshot(config))


def test_ill_typed_objective_hparam_names_it():
    from stalerl import objectives

    with pytest.raises(ValueError, match=r"m2po: hyperparameter tau='x' must be a number"):
        objectives.build("m2po", tau="x")


def test_corrupt_controller_state_names_what_is_wrong():
    from stalerl import objectives

    controller = objectives.build("ac_mispo")
    with pytest.raises(ValueError, match=r"ac_mispo controller state.*'bound'"):
        controller.load_state_dict({"step": 3})
    with pytest.raises(ValueError, match=r"bound=nan finite"):
        controller.load_state_dict({"step": 3, "bound": float("nan")})


def test_study_with_no_seed_is_refused(tmp_path, capsys):
    refused(["reproduce", "prosperity", "--quick", "--seeds", "0", "--out", str(tmp_path / "s")], capsys,
            "--seeds 0")


# ============================================================================ lost work


def test_existing_run_without_resume_is_refused_and_untouched(finished_run, capsys):
    run, overrides = finished_run
    before = snapshot(run)
    refused(["train", *overrides], capsys, str(run), "--resume", unchanged=before)
    assert snapshot(run) == before


def test_resume_with_a_value_the_run_cannot_take_leaves_config_yaml_alone(finished_run, capsys):
    run, _ = finished_run
    before = snapshot(run)
    refused(["train", "--resume", str(run), "optim.lr=0.5"], capsys, "optim.lr", "step_000001", unchanged=before)
    assert snapshot(run) == before
    # the next plain resume still works, and may extend the run
    assert cli_main(["train", "--resume", str(run), "steps=2"]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "event" not in r] == [0, 1, 2]


@pytest.mark.parametrize("content", ["", "optim: [unclosed\n", "just a string\n"])
def test_empty_or_damaged_config_yaml_is_refused_never_replaced(finished_run, capsys, content):
    run, _ = finished_run
    (run / "config.yaml").write_text(content)
    before = snapshot(run)
    refused(["train", "--resume", str(run)], capsys, str(run / "config.yaml"), unchanged=before)
    assert snapshot(run) == before


def test_checkpoint_holds_the_config_it_was_made_with(finished_run):
    run, _ = finished_run
    saved = ckpt.checkpoint_config(run / "checkpoints" / "step_000001")
    assert saved["steps"] == 1 and saved["stale"]["staleness"] == 0


# ============================================================================ damaged checkpoints and models


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_resume_skips_a_damaged_newest_checkpoint_with_a_message(tiny_overrides, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_overrides("steps=2", "stale.staleness=0", "checkpoint_every=1",
                                              "data.eval_size=2", run_dir=run)]) == 0
    root = run / "checkpoints"
    _truncate(root / "step_000002" / "model.safetensors")
    assert ckpt.newest_intact(root)[0] == root / "step_000001"
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    message = " ".join(r.getMessage() for r in caplog.records if r.name == "stalerl.training.rundir")
    assert "step_000002 is damaged (model.safetensors has" in message and "resuming from" in message
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "event" not in r] == [0, 1, 2]
    assert ckpt.checkpoint_problem(root / "step_000002") is None  # rewritten by the resumed run


def test_resume_refuses_when_every_checkpoint_is_damaged_naming_it(finished_run, capsys):
    run, _ = finished_run
    _truncate(run / "checkpoints" / "step_000001" / "state.pt")
    before = snapshot(run)
    refused(["train", "--resume", str(run)], capsys, "step_000001", "state.pt", "no older intact", unchanged=before)


def test_corrupt_weights_and_mismatched_config_json_are_one_line(tiny_testbed, tiny_overrides, tmp_path, capsys):
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_testbed, truncated)
    _truncate(truncated / "model.safetensors")
    refused(["train", *tiny_overrides(f"model.path={truncated}", run_dir=tmp_path / "r1")], capsys,
            f"model.path='{truncated}'", "truncated or corrupt")

    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_testbed, mismatched)
    cfg = json.loads((mismatched / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (mismatched / "config.json").write_text(json.dumps(cfg))
    refused(["train", *tiny_overrides(f"model.path={mismatched}", run_dir=tmp_path / "r2")], capsys,
            f"model.path='{mismatched}'", "config.json does not match the weights")


def test_device_that_does_not_exist_is_refused_before_anything_is_written(tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    refused(["train", *tiny_overrides("model.device=cuda:7", run_dir=run)], capsys, "model.device='cuda:7'")
    refused(["train", *tiny_overrides("model.device=tpu", run_dir=run)], capsys, "model.device='tpu'")
    assert not run.exists()


# ============================================================================ output paths and data files


def test_output_path_under_a_file_is_refused_first(tiny_overrides, tiny_testbed, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    refused(["train", *tiny_overrides(run_dir=blocker / "run")], capsys, str(blocker), unchanged=snapshot(blocker))

    import stalerl.evaluation.evaluate as ev

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before its output was known writable")

    monkeypatch.setattr(ev, "evaluate_checkpoint", never)
    refused(["eval", str(tiny_testbed), "--out", str(blocker / "eval.json")], capsys, str(blocker))
    refused(["eval", str(tiny_testbed), "--out", str(tmp_path)], capsys, "is a directory")


def test_eval_options_that_mean_nothing_are_refused(tiny_testbed, capsys):
    refused(["eval", str(tiny_testbed), "--max-new-tokens", "0"], capsys, "--max-new-tokens")
    refused(["eval", str(tiny_testbed), "--top-p", "0"], capsys, "--top-p")
    refused(["eval", "testbed:huge"], capsys, "testbed:huge", "tiny")


def test_invalid_yaml_in_a_run_directory_is_named_by_eval(finished_run, capsys):
    run, _ = finished_run
    (run / "config.yaml").write_text("data: [unclosed\n")
    refused(["eval", str(run)], capsys, str(run / "config.yaml"))


def test_deeply_nested_and_undecodable_rows_name_file_and_line(tiny_overrides, tmp_path, capsys):
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n"
                      + '{"problem": ' + "[" * 100_000 + "]" * 100_000 + ', "answer": "2"}\n')
    refused(["train", *tiny_overrides(f"data.train={nested}", run_dir=tmp_path / "r1")], capsys,
            f"{nested}, line 2", "nested too deeply")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps({"problem": "1+1", "answer": "2"}).encode() + b"\n"
                      + '{"problem": "caf\u00e9", "answer": "2"}\n'.encode("latin-1"))
    refused(["train", *tiny_overrides(f"data.train={latin}", run_dir=tmp_path / "r2")], capsys,
            f"{latin}, line 2", "UTF-8")


# ============================================================================ inputs the model cannot serve


def test_rows_the_model_cannot_serve_are_skipped_and_counted_per_reason(tiny_testbed, tmp_path):
    from stalerl.data.prompts import SKIP_REASONS, build_prompts, prompt_limits
    from stalerl.testbed.warmstart import load_testbed
    from stalerl.training.config import DataConfig

    model, tokenizer = load_testbed(tiny_testbed)
    positions = model.config.max_position_embeddings  # 256 for the testbed
    rows = [
        {"problem": "1+1", "answer": "2"},                        # fine
        {"problem": "2+2", "answer": "  "},                       # empty answer
        {"problem": "3" * 100_000, "answer": "3"},                # 100k characters: never tokenized
        {"problem": "4" * 300, "answer": "4"},                    # > max_prompt_length=280 tokens
        {"problem": "5" * (positions - 20), "answer": "5"},       # fits 280, but not with 64 new tokens
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dc = DataConfig(template="plain", max_prompt_length=280)
    calls = []
    real = tokenizer.__class__.__call__

    def spy(self, texts, *args, **kwargs):
        calls.append(max(len(t) for t in texts))
        return real(self, texts, *args, **kwargs)

    tokenizer.__class__.__call__ = spy
    try:
        kept, skipped = build_prompts(str(data), split="train", size=None, tokenizer=tokenizer, data_config=dc,
                                      seed=0, **prompt_limits(model, 64))
    finally:
        tokenizer.__class__.__call__ = real
    assert [p.answer for p in kept] == ["2"]
    assert skipped == 4 and skipped.reasons == {"too_long": 2, "beyond_context": 1, "empty_answer": 1,
                                                "unknown_tokens": 0}
    assert set(skipped.reasons) == set(SKIP_REASONS)
    assert max(calls) < 100_000  # the 100k-character row was refused by its length in characters


def test_every_row_unservable_is_refused_naming_the_reasons(tiny_overrides, tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"problem": "9" * 400, "answer": "9"}) + "\n" for _ in range(3)))
    refused(["train", *tiny_overrides(f"data.train={data}", "data.template=plain", run_dir=tmp_path / "r")],
            capsys, str(data), "3 prompt + max_new_tokens exceed the model's max_position_embeddings")
    refused(["train", *tiny_overrides(f"data.train={data}", "data.template=plain", "data.max_prompt_length=100",
                                      run_dir=tmp_path / "r")], capsys, str(data), "3 longer than data.max_prompt_length")


def test_max_new_tokens_beyond_the_model_positions_is_refused(tiny_overrides, tmp_path, capsys):
    refused(["train", *tiny_overrides("rollout.max_new_tokens=300", run_dir=tmp_path / "r")], capsys,
            "max_new_tokens=300", "max_position_embeddings=256")


def test_skipped_prompts_are_logged_per_reason(tiny_overrides, tmp_path):
    data = tmp_path / "mixed.jsonl"
    rows = [{"problem": f"{a}+{a}", "answer": str(2 * a)} for a in range(1, 9)]
    rows += [{"problem": "7+7", "answer": ""}, {"problem": "8" * 600, "answer": "8"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_overrides("steps=1", "stale.staleness=0", f"data.train={data}",
                                              "data.template=plain", "data.eval_size=2", run_dir=run)]) == 0
    first = read_jsonl(run / "metrics.jsonl")[0]
    assert first["data/skipped_prompts"] == 2.0
    assert first["data/skipped_prompts_empty_answer"] == 1.0 and first["data/skipped_prompts_too_long"] == 1.0


# ============================================================================ work that can never be used


def test_staleness_beyond_the_run_warns_and_generates_only_what_is_consumed(make_config):
    from stalerl.training.loop import train

    config = make_config("steps=2", "stale.staleness=40", "checkpoint_every=1")  # m=2: 20 batches deep
    with pytest.warns(UserWarning, match=r"stale\.staleness=40 reaches beyond the run"):
        result = train(config)
    state = ckpt.load_state(ckpt.latest_checkpoint(result.run_dir / "checkpoints"))
    assert state["loop"]["generated_batches"] == 2  # not 2 + 20
    assert state["buffer"]["queue"] == []
    updates = read_jsonl(result.run_dir / "updates.jsonl")
    assert [u["train/staleness"] for u in updates] == [0.0, 1.0, 2.0, 3.0]  # all from the initial policy


def test_an_internal_value_error_keeps_its_traceback_while_a_user_error_is_one_line(monkeypatch, capsys):
    from stalerl import objectives
    from stalerl.training.config import ConfigError

    def bug():
        raise ValueError("an internal bug, not something the user gave")

    monkeypatch.setattr(objectives, "describe", bug)
    with pytest.raises(ValueError, match="internal bug"):
        cli_main(["objectives"])

    def config_error():
        raise ConfigError("objective.tau=-1: must be >= 0")

    monkeypatch.setattr(objectives, "describe", config_error)
    assert refused(["objectives"], capsys, "objective.tau=-1").startswith("stalerl objectives: error:")
