"""Faults never cost a user their run: two processes on one run directory, interrupts and kills in
the middle of a rewrite, a full disk (``RLIMIT_FSIZE``), a dying rollout worker. Each ends in one
line and a non-zero status, leaves the last checkpoint intact, and the run resumes into one
monotone history (``docs/REFUSALS.md``). Kills are simulated with ``monkeypatch`` or real signals
to real processes, never with a switch the loop reads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stalerl.cli.main import main as cli_main
from stalerl.training import checkpoint as ckpt
from stalerl.training import loop, rundir
from stalerl.training.logger import read_jsonl
from test_bad_input import refused, snapshot

REPO = Path(__file__).resolve().parents[1]


def raising_reward(completions, answers):
    """A user reward that fails on its first call."""
    raise ZeroDivisionError("the reward divided by zero")


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "event" not in r]


def _python(code: str, *, fsize: int | None = None) -> subprocess.Popen:
    """A Python process running ``code`` with this repository first on its path (and a file-size
    limit of ``fsize`` bytes)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def limit():
        if fsize is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, preexec_fn=limit,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def one_step_run(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_overrides("steps=1", "stale.staleness=0", "checkpoint_every=1",
                                              "data.eval_size=2", run_dir=run)]) == 0
    return run


# ============================================================================ one writer per run directory


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(one_step_run, capsys, caplog):
    run = one_step_run
    holder = _python(f"import sys, time\nfrom stalerl.training.rundir import RunLock\n"
                     f"lock = RunLock({str(run)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(600)\n")
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        refused(["train", "--resume", str(run), "steps=2"], capsys, str(run), f"in use by process {holder.pid}",
                unchanged=before)
        assert snapshot(run) == before  # the first writer's files are untouched
        fresh = run.parent / "fresh"
        fresh.mkdir()
        (fresh / rundir.LOCK_NAME).touch()
        second = _python(f"import time\nfrom stalerl.training.rundir import RunLock\n"
                         f"RunLock({str(fresh)!r}).acquire(); print('locked', flush=True); time.sleep(600)\n")
        try:
            assert second.stdout.readline().strip() == "locked"
            refused(["train", *_overrides_of(run), f"run_dir={fresh}"], capsys, f"in use by process {second.pid}")
        finally:
            second.kill()
            second.wait()
    finally:
        holder.kill()  # SIGKILL: the lock file still names it, but the kernel released the lock
        holder.wait()
    assert (run / rundir.LOCK_NAME).read_text().strip() == str(holder.pid)
    assert cli_main(["train", "--resume", str(run), "steps=2"]) == 0
    taken = [r.getMessage() for r in caplog.records if "no longer running" in r.getMessage()]
    assert taken and str(holder.pid) in taken[0]
    assert _steps(run) == [0, 1, 2]
    assert (run / rundir.LOCK_NAME).read_text() == ""  # released on exit


def _overrides_of(run: Path) -> list[str]:
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    return [f"model.path={saved['model']['path']}", "model.testbed_size=tiny", "model.device=cpu",
            f"reward.function={saved['reward']['function']}", "tensorboard=false", "plots=false", "progress=false"]


def test_lock_is_released_when_the_run_fails(make_config, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loop, "update", broken)
    with pytest.raises(RuntimeError, match="boom"):
        loop.train(make_config("steps=1", "stale.staleness=0", run_dir=run))
    with rundir.RunLock(run):  # free again, even in this very process
        pass


# ============================================================================ reruns after an interrupt


def _interrupt_at(monkeypatch, update_index: int) -> None:
    real = loop.update

    def ctrl_c(config, model, optimizer, objective, batch, rows, state, **kwargs):
        if state.updates == update_index:
            raise KeyboardInterrupt
        return real(config, model, optimizer, objective, batch, rows, state, **kwargs)

    monkeypatch.setattr(loop, "update", ctrl_c)


@pytest.mark.parametrize("checkpoint_every,expected_after_interrupt", [(0, [0, 1]), (1, [0, 1])])
def test_rerun_after_ctrl_c_keeps_one_monotone_history(tiny_overrides, tmp_path, monkeypatch, capsys,
                                                       checkpoint_every, expected_after_interrupt):
    """Interrupted in step 2 (before any checkpoint, or after the step-1 one): the plain command is
    refused (it would start a second history), ``--resume`` continues or starts over cleanly."""
    run = tmp_path / "run"
    overrides = tiny_overrides("steps=3", "stale.staleness=0", f"checkpoint_every={checkpoint_every}",
                               "data.eval_size=2", run_dir=run)
    _interrupt_at(monkeypatch, 2)
    assert cli_main(["train", *overrides]) == 130
    monkeypatch.undo()
    assert _steps(run) == expected_after_interrupt
    refused(["train", *overrides], capsys, "--resume", unchanged=snapshot(run / "metrics.jsonl"))
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert _steps(run) == [0, 1, 2, 3]


def test_a_kill_during_the_log_rewrite_loses_no_history(tiny_overrides, tmp_path, monkeypatch):
    """Resume rewrites the logs up to the checkpoint; a kill at the rename leaves the old file
    whole, and the next start removes the half-written temporary."""
    run = tmp_path / "run"
    assert cli_main(["train", *tiny_overrides("steps=2", "stale.staleness=0", "checkpoint_every=1",
                                              "keep_checkpoints=3", "data.eval_size=2", run_dir=run)]) == 0
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000002")  # as if killed before its checkpoint
    (run / "checkpoints" / "latest").write_text("step_000001")
    history = (run / "metrics.jsonl").read_bytes()

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def killed_at_rename(src, dst):
        if str(dst).endswith("metrics.jsonl"):
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(rundir.os, "replace", killed_at_rename)
    with pytest.raises(Killed):
        cli_main(["train", "--resume", str(run)])
    monkeypatch.undo()
    assert (run / "metrics.jsonl").read_bytes() == history  # steps 0, 1, 2 all still there
    assert list(run.glob(".metrics.jsonl.tmp-*"))
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert _steps(run) == [0, 1, 2]
    assert not list(run.glob(".*.tmp-*"))


# ============================================================================ full disk / file-size limit


def _resume_under_limit(run: Path, fsize: int) -> tuple[int, str]:
    proc = _python("import sys\nfrom stalerl.cli.main import main\n"
                   f"sys.exit(main(['train', '--resume', {str(run)!r}, 'steps=2']))\n", fsize=fsize)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


@pytest.mark.parametrize("failing,reason", [("model.safetensors", "File too large"),
                                            ("state.pt", "file-size limit")])
def test_file_size_limit_during_a_checkpoint_is_one_line_and_keeps_the_previous(one_step_run, failing, reason):
    """The limit lies below the size of ``failing`` and above every smaller file (the logs, and the
    weights when ``state.pt`` is to fail): safetensors' and torch's own write errors both become one line."""
    run = one_step_run
    first = run / "checkpoints" / "step_000001"
    weights, state = ((first / name).stat().st_size for name in ("model.safetensors", "state.pt"))
    assert weights < state
    fsize = weights // 2 if failing == "model.safetensors" else (weights + state) // 2
    rc, err = _resume_under_limit(run, fsize=fsize)
    assert rc == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if ": error: " in x]
    assert len(line) == 1 and f"could not write checkpoint {run / 'checkpoints' / 'step_000002'}" in line[0]
    assert reason in line[0] and f"previous checkpoint {first} is intact" in line[0]
    assert ckpt.checkpoint_problem(first) is None and not (run / "checkpoints" / "step_000002").exists()
    assert not list((run / "checkpoints").glob(".*"))
    assert cli_main(["train", "--resume", str(run), "steps=2"]) == 0
    assert _steps(run) == [0, 1, 2]


def test_file_size_limit_during_a_log_append_is_one_line_and_resumable(one_step_run):
    run = one_step_run
    diagnostics = (run / "diagnostics.jsonl").stat().st_size
    rc, err = _resume_under_limit(run, fsize=diagnostics + 64)  # the next per-update record does not fit
    assert rc == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if ": error: " in x]
    assert len(line) == 1 and f"could not append step 2 to {run / 'diagnostics.jsonl'}" in line[0]
    assert "File too large" in line[0]
    assert ckpt.latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_000001"
    assert cli_main(["train", "--resume", str(run), "steps=2"]) == 0
    assert _steps(run) == [0, 1, 2]
    assert [d["step"] for d in read_jsonl(run / "diagnostics.jsonl")] == [1, 1, 2, 2]


def test_checkpoint_directory_that_is_a_file_is_refused_before_work(one_step_run, capsys):
    run = one_step_run
    import shutil

    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("oops")
    refused(["train", "--resume", str(run)], capsys, str(run / "checkpoints"), unchanged=snapshot(run))


def test_testbed_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from stalerl.errors import UserError
    from stalerl.testbed.warmstart import warm_start

    cache = tmp_path / "cache"
    cache.write_text("a file")
    with pytest.raises(UserError, match=f"testbed cache {cache} is a file"):
        warm_start(size="tiny", steps=0, cache_dir=cache, progress=False)


# ============================================================================ a dying rollout worker


def _async(tiny_overrides, run, *extra):
    return tiny_overrides("steps=4", "stale.mode=async", "stale.staleness=2", "checkpoint_every=1",
                          "data.eval_size=0", *extra, run_dir=run)


def _worker_pid(run: Path) -> int:
    return [r for r in read_jsonl(run / "events.jsonl") if r.get("event") == "async_worker_start"][-1]["pid"]


def test_worker_killed_by_sigkill_ends_the_run_in_one_line(tiny_overrides, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = loop.update
    killed = {}

    def kill_worker_at_update_2(config, model, optimizer, objective, batch, rows, state, **kwargs):
        if state.updates == 2 and not killed:
            killed["pid"] = _worker_pid(run)
            os.kill(killed["pid"], signal.SIGKILL)  # what the kernel's OOM killer does
            killed["at"] = time.monotonic()
        return real(config, model, optimizer, objective, batch, rows, state, **kwargs)

    monkeypatch.setattr(loop, "update", kill_worker_at_update_2)
    rc = cli_main(["train", *_async(tiny_overrides, run)])
    ended = time.monotonic() - killed["at"]
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 1 and "Traceback" not in err
    line = [x for x in err.splitlines() if ": error: " in x]
    assert len(line) == 1 and "rollout worker died (killed by SIGKILL" in line[0]
    assert ended < 60  # noticed within seconds (generous for a loaded machine), never a hang
    assert not multiprocessing.active_children()
    with pytest.raises(ProcessLookupError):
        os.killpg(killed["pid"], 0)  # nothing of its process group is left
    last = ckpt.latest_checkpoint(run / "checkpoints")
    assert last is not None and ckpt.checkpoint_problem(last) is None
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert _steps(run) == [0, 1, 2, 3, 4]


def test_reward_that_raises_in_the_worker_is_one_line_as_in_sync(tiny_overrides, tmp_path, capsys):
    reward = f"reward.function={Path(__file__).resolve()}:raising_reward"
    sync = refused(["train", *tiny_overrides("steps=1", "stale.staleness=0", reward, run_dir=tmp_path / "s")],
                   capsys, "raising_reward", "ZeroDivisionError")
    t0 = time.monotonic()
    line = refused(["train", *_async(tiny_overrides, tmp_path / "a", reward)], capsys, "raising_reward",
                   "ZeroDivisionError")
    assert time.monotonic() - t0 < 120
    assert line.split(": error: ")[1] == sync.split(": error: ")[1]
    assert not multiprocessing.active_children()


def test_rerun_of_an_interrupted_study_resumes_half_done_runs(tmp_path, monkeypatch, capsys):
    """``stalerl reproduce`` again after an interrupt: finished runs are reused, the half-done one
    is resumed (never started as a second history in the same directory), the others start new."""
    import json

    import stalerl.training.loop as loop_module
    from stalerl.studies.reproduce import reproduce

    out = tmp_path / "study"
    calls = {}

    def fake_train(config, *, resume=None, progress=None):
        run = Path(config.run_dir)
        calls[run.name] = resume
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n")
        (run / "summary.json").write_text(json.dumps({"crashed_at": None, "steps_done": 3}))

    runs = out / "runs"
    (runs / "grpo-s0-seed0").mkdir(parents=True)  # finished before the interrupt
    (runs / "grpo-s0-seed0" / "summary.json").write_text(json.dumps({"crashed_at": None, "steps_done": 3}))
    (runs / "grpo-s0-seed0" / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.5}) + "\n")
    (runs / "no_tr-seed0").mkdir()  # interrupted mid-way: logs, no summary
    (runs / "no_tr-seed0" / "metrics.jsonl").write_text(json.dumps({"step": 0}) + "\n")
    monkeypatch.setattr(loop_module, "train", fake_train)
    reproduce("prosperity", out=out, quick=True, progress=False)
    assert "grpo-s0-seed0" not in calls
    assert calls["no_tr-seed0"] == runs / "no_tr-seed0"
    assert all(resume is None for name, resume in calls.items() if name != "no_tr-seed0")


def test_read_only_output_locations_are_refused_before_any_work(tiny_overrides, tiny_testbed, tmp_path,
                                                                  monkeypatch, capsys):
    """A directory where no file can be created (simulated: the tests run as root, for whom
    permission bits do not apply) is refused before a model is loaded or a sample computed."""
    import errno
    import tempfile

    import stalerl.evaluation.evaluate as ev

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = tempfile.mkstemp

    def no_write(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == read_only:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(rundir.tempfile, "mkstemp", no_write)
    monkeypatch.setattr(loop, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(ev, "evaluate_checkpoint", lambda *a, **k: pytest.fail("the evaluation ran"))
    refused(["train", *tiny_overrides(run_dir=read_only / "run")], capsys, str(read_only), "Permission denied")
    refused(["eval", str(tiny_testbed), "--out", str(read_only / "eval.json")], capsys, str(read_only),
            "not writable")
    assert list(read_only.iterdir()) == []


def test_degraded_tensorboard_and_curves_warn_and_keep_the_logs(tmp_path, monkeypatch):
    import builtins

    from stalerl.training.logger import RunLogger

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.warns(UserWarning, match="TensorBoard disabled .*no tensorboard here"):
        run_logger = RunLogger(tmp_path, tensorboard=True)
    assert run_logger._tb is None and (tmp_path / "metrics.jsonl").exists()
    run_logger.close()
    monkeypatch.setattr(builtins, "__import__", real_import)

    def broken(*args, **kwargs):
        raise RuntimeError("no curves")

    import stalerl.evaluation.plots as plots

    monkeypatch.setattr(plots, "learning_curves", broken)
    with pytest.warns(UserWarning, match="could not draw curves .*no curves"):
        loop._plots(tmp_path)
