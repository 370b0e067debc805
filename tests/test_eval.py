"""``stalerl eval``: checkpoint resolution, protocols, the table/JSON, and clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from stalerl.cli.main import main as cli_main
from stalerl.evaluation import evaluate as ev


def test_benchmark_n_protocols():
    assert ev.benchmark_n("testbed", None, None) == ev.DEFAULT_N
    assert ev.benchmark_n("HuggingFaceH4/aime_2024", None, "m2po") == 16
    assert ev.benchmark_n("data/AIME25.jsonl", None, "m2po") == 16
    assert ev.benchmark_n("HuggingFaceH4/MATH-500", None, "m2po") == 4
    assert ev.benchmark_n("HuggingFaceH4/MATH-500", None, "minpro") == 128
    assert ev.benchmark_n("HuggingFaceH4/aime_2024", 8, "m2po") == 8  # explicit n wins


def test_resolve_checkpoint(tmp_path, tiny_testbed):
    # a model directory
    assert ev.resolve_checkpoint(tiny_testbed).model_path == str(tiny_testbed)
    # a run directory: its latest complete checkpoint, and the run's config
    run = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(tiny_testbed, run / "checkpoints" / f"step_{step:06d}")
        (run / "checkpoints" / f"step_{step:06d}" / "state.pt").write_bytes(b"")
    (run / "checkpoints" / "latest").write_text("step_000002")
    (run / "config.yaml").write_text("seed: 3\nrollout: {max_new_tokens: 12}\n")
    resolved = ev.resolve_checkpoint(run)
    assert resolved.model_path == str(run / "checkpoints" / "step_000002")
    assert resolved.run_dir == run and resolved.run_config["seed"] == 3
    # a step directory of a run knows its run
    step1 = ev.resolve_checkpoint(run / "checkpoints" / "step_000001")
    assert step1.run_dir == run
    # errors
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ev.resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ev.resolve_checkpoint(tmp_path / "empty_run")
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a model"):
        ev.resolve_checkpoint(tmp_path / "other")


def test_eval_tiny_checkpoint_table_and_json(tiny_testbed, tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"problem": f"{a}+{a}", "gold": str(2 * a)}) + "\n" for a in range(1, 4)))
    out = tmp_path / "res" / "eval.json"
    rc = cli_main(["eval", str(tiny_testbed), "--benchmarks", "testbed", str(bench), "--answer-field", "gold",
                   "--template", "plain", "--n", "4", "--limit", "3", "--max-new-tokens", "8", "--batch-size", "16",
                   "--seed", "1", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for col in ("benchmark", "avg@n", "maj@n", "pass@1", "pass@2", "pass@4", "testbed", "bench", "average"):
        assert col in printed
    result = json.loads(out.read_text())
    assert set(result["benchmarks"]) == {"testbed", "bench"}
    for r in result["benchmarks"].values():
        assert r["num_problems"] == 3 and r["n"] == 4
        for key in ("avg@4", "maj@4", "pass@1", "pass@2", "pass@4"):
            assert 0.0 <= r[key] <= 1.0
        assert r["pass@1"] == pytest.approx(r["avg@4"])
        assert r["pass@1"] <= r["pass@2"] <= r["pass@4"]
    avg = result["average"]
    assert avg["avg@n"] == pytest.approx((result["benchmarks"]["testbed"]["avg@4"] + result["benchmarks"]["bench"]["avg@4"]) / 2)
    assert result["settings"]["temperature"] == 1.0


def test_eval_k_larger_than_n_is_an_error(tiny_testbed, capsys):
    rc = cli_main(["eval", str(tiny_testbed), "--n", "2", "--k", "1", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pass@4" in err and "n=2" in err


def test_eval_missing_answer_field_is_an_error(tiny_testbed, tmp_path, capsys):
    bench = tmp_path / "noanswer.jsonl"
    bench.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n")
    rc = cli_main(["eval", str(tiny_testbed), "--benchmarks", str(bench), "--n", "2", "--max-new-tokens", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'answer'" in err and "noanswer.jsonl" in err and "line 1" in err


def test_eval_missing_checkpoint_and_benchmark(tmp_path, tiny_testbed, capsys):
    assert cli_main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["eval", str(tiny_testbed), "--benchmarks", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert cli_main(["eval", str(tiny_testbed), "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err


def test_format_table_average_row():
    result = {"benchmarks": {
        "a": {"num_problems": 2, "n": 16, "avg@16": 0.5, "maj@16": 1.0, "pass@1": 0.5, "pass@16": 1.0},
        "b": {"num_problems": 3, "n": 4, "avg@4": 0.25, "maj@4": 0.0, "pass@1": 0.25, "pass@4": 0.5},
    }}
    result["average"] = ev._average(result["benchmarks"])
    assert result["average"]["avg@n"] == pytest.approx(0.375)
    assert result["average"]["pass@1"] == pytest.approx(0.375)
    assert "pass@16" not in result["average"]  # only the k every benchmark has
    table = ev.format_table(result)
    assert "average" in table and "0.3750" in table
