"""Tests of stalerl.rewards: boxed extraction, the math-verify worker pool, reward functions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from stalerl.rewards import (
    MathReward,
    MathVerifier,
    RewardBatch,
    VerifyResult,
    last_boxed,
    load_reward_fn,
    make_reward,
    wrap_for_parse,
)

FIXTURES = Path(__file__).parent / "fixtures"
CHECKS = f"{FIXTURES / 'verifier_checks.py'}:check"
USER = FIXTURES / "user_rewards.py"


# ---------------------------------------------------------------------------------- last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{5}.", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"set \boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed {7}", "7"),
        (r"$\boxed 5$", "5"),
        (r"answer: \boxed 42.", "42"),
        (r"\fbox{3}", "3"),
        (r"\boxed{1} and finally \fbox{x+1}", "x+1"),
        (r"\boxed{}", ""),
        ("no box here", None),
        ("", None),
        (r"\boxed{\frac{1}{2", None),  # truncated: unbalanced
        (r"\boxed{3} but then \boxed{4", None),  # the last one is unbalanced
        (r"\boxedfoo{3}", None),  # another macro
        (r"\boxed", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_nested_boxes_and_non_str():
    assert last_boxed(r"\boxed{a \boxed{b}}") == "b"
    assert last_boxed(None) is None  # type: ignore[arg-type]


def test_wrap_for_parse():
    assert wrap_for_parse(" 11 ") == r"\boxed{11}"
    assert wrap_for_parse(r"\frac12") == r"\boxed{\frac12}"
    assert wrap_for_parse(r"\$18.90") == r"\boxed{\$18.90}"  # escaped dollar is not a delimiter
    assert wrap_for_parse(r"so $x$") == r"so $x$"
    assert wrap_for_parse(r"\boxed{3}") == r"\boxed{3}"


# ---------------------------------------------------------------------------------- verifier


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=2, timeout_s=3.0) as v:
        yield v


def test_verifier_matches_math_verify(verifier):
    cases = [
        ("11", r"\boxed{11}", True),
        ("11", r"The answer is \boxed{11}.", True),
        ("1/2", r"\frac{1}{2}", True),
        ("0.5", r"\frac12", True),  # bare \frac12 only parses once wrapped in \boxed{}
        (r"\frac12", "0.5", True),
        ("12", "13", False),
        (r"\$18.90", "18.90", True),
        (r"\text{(C)}", "C", True),
        ("x^2+1", "1+x^2", True),
        (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True),
        ("1", "The answer is $1$", True),
        (r"10\%", "10", False),  # as math-verify 0.9.0 decides
    ]
    res = verifier.verify_batch([c[0] for c in cases], [c[1] for c in cases])
    for (gold, pred, want), r in zip(cases, res, strict=True):
        assert isinstance(r, VerifyResult)
        assert r.status == "ok", (gold, pred, r)
        assert r.correct is want, (gold, pred, r)
        assert r.extracted


def test_verifier_agrees_with_math_verify_directly(verifier):
    from math_verify import parse, verify

    pairs = [("11", "11.0"), ("1/2", r"\frac{1}{2}"), (r"\pi", "3.14"), ("(1,2)", "(1, 2)")]
    res = verifier.verify_batch([g for g, _ in pairs], [p for _, p in pairs])
    for (g, p), r in zip(pairs, res, strict=True):
        direct = verify(parse(wrap_for_parse(g)), parse(wrap_for_parse(p)))
        assert r.correct == direct, (g, p)


def test_verifier_no_answer_and_fast_path(verifier):
    before = verifier.stats["fast_path"]
    res = verifier.verify_batch(["1", "1", "2", "3"], [None, "   ", " 2 ", r"\text{}"])
    assert res[0] == VerifyResult(False, False, "no_answer")
    assert res[1] == VerifyResult(False, False, "no_answer")
    assert res[2] == VerifyResult(True, True, "ok")
    assert verifier.stats["fast_path"] == before + 1
    assert not res[3].correct
    assert verifier.verify_batch([], []) == []
    with pytest.raises(ValueError, match="length"):
        verifier.verify_batch(["1"], [])


INTEGER_PAIRS = [("12", "13"), ("7", "007"), ("5", "+5"), ("0", "-0"), ("-12", "-012"), ("5", "-5"),
                 ("1000000", "1000001"), ("123456789012345", "123456789012346"), (" 42 ", "42")]


def test_integer_fast_path_agrees_with_math_verify():
    from stalerl.rewards.verifier import integer_verdict, math_verify_check

    for g, p in INTEGER_PAIRS:
        assert integer_verdict(g, p) == math_verify_check(g, p, 5)[0], (g, p)
    for g, p in [("12", "12.0"), ("1/2", "0.5"), ("1234567890123456", "1234567890123456"), ("5", "5x"), ("", "5")]:
        assert integer_verdict(g, p) is None, (g, p)  # not two integer literals: math-verify decides


def test_verifier_decides_integers_without_a_worker(verifier):
    before = dict(verifier.stats)
    res = verifier.verify_batch([g for g, _ in INTEGER_PAIRS], [p for _, p in INTEGER_PAIRS])
    assert [r.correct for r in res] == [False, True, True, True, True, False, False, False, True]
    assert all(r.extracted and r.status == "ok" for r in res)
    assert verifier.stats["fast_path"] == before["fast_path"] + len(INTEGER_PAIRS)


def test_verifier_gold_first_not_symmetric(verifier):
    # gold is an equation-free number; the check must pass gold first without error.
    r = verifier.verify("2", r"\frac{4}{2}")
    assert r.correct and r.status == "ok"


def test_verifier_pathological_power_times_out_quickly(verifier):
    t0 = time.monotonic()
    res = verifier.verify_batch(["1", "3"], [r"9^{9^{9^{9^{9^{9}}}}}", "3.0"])
    elapsed = time.monotonic() - t0
    assert res[0].status == "timeout" and not res[0].correct
    assert res[1] == VerifyResult(True, True, "ok")
    assert elapsed < verifier.timeout_s + 3.0


def test_verifier_hung_worker_is_killed_and_batch_goes_on():
    with MathVerifier(num_workers=2, timeout_s=1.0, _check_fn=CHECKS) as v:
        golds = ["a", "sleep", "b", "crash", "c", "sleep", "d"]
        preds = ["A", "x", "B", "x", "z", "x", "D"]
        t0 = time.monotonic()
        res = v.verify_batch(golds, preds)
        elapsed = time.monotonic() - t0
        assert [r.status for r in res] == ["ok", "timeout", "ok", "error", "ok", "timeout", "ok"]
        assert [r.correct for r in res] == [True, False, True, False, False, False, True]
        # two hangs of 1 s on two workers, plus respawns; nowhere near the 600 s sleep
        assert elapsed < 10.0
        assert v.stats["respawns"] >= 3
        # the pool keeps working after the respawns
        assert v.verify_batch(["e"], ["E"]) == [VerifyResult(True, True, "ok")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_verifier_memory_limit():
    with MathVerifier(num_workers=1, timeout_s=10.0, memory_limit_mb=512, _check_fn=CHECKS) as v:
        res = v.verify_batch(["memory", "q"], ["x", "Q"])
    assert res[0].status == "error" and not res[0].correct
    assert res[1].correct


def test_verifier_worker_runs_one_thread_without_torch(tmp_path, monkeypatch):
    # the trainer's own thread setting must not reach the workers: a check is one Python thread
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    out = tmp_path / "worker.json"
    # (a long timeout: this check imports math-verify, which a real worker does before it is ready)
    with MathVerifier(num_workers=1, timeout_s=120, _check_fn=f"{FIXTURES / 'verifier_checks.py'}:report_environment") as v:
        assert v.verify(str(out), "anything").status == "ok"
    assert json.loads(out.read_text()) == {"os_threads": 1, "torch_imported": False, "OMP_NUM_THREADS": "1",
                                           "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_verifier_close_is_idempotent():
    v = MathVerifier(num_workers=1, _check_fn=CHECKS)
    procs = [w.proc for w in v._pool.workers]
    v.close()
    v.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        v.verify_batch(["1"], ["2"])


def test_verifier_worker_startup_failure_is_clear():
    with pytest.raises(RuntimeError, match="failed to start"):
        MathVerifier(num_workers=1, _check_fn="stalerl_no_such_module_xyz:check")


def test_verifier_bad_arguments():
    with pytest.raises(ValueError):
        MathVerifier(num_workers=0)
    with pytest.raises(ValueError):
        MathVerifier(timeout_s=0)


# ---------------------------------------------------------------------------------- MathReward


def test_math_reward_scores(verifier):
    reward = MathReward(format_score=0.1, verifier=verifier)
    completions = [
        r"Thinking... so the answer is \boxed{\frac12}.",  # correct (gold 0.5)
        r"I get \boxed{3}",  # extracted, wrong
        "I don't know",  # no box
        "",  # empty
        r"\boxed{}",  # empty box: not extracted
        r"first \boxed{4} then \boxed{11}",  # last box counts
        r"\boxed{\frac{1}{2",  # truncated
    ]
    answers = ["0.5", "4", "1", "1", "1", 11, "1/2"]
    b = reward(completions, answers)
    assert isinstance(b, RewardBatch)
    assert b.scores == [1.0, 0.1, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert b.correct == [True, False, False, False, False, True, False]
    assert b.extracted == [True, True, False, False, False, True, False]
    assert b.counts == {"ok": 3, "no_answer": 3, "empty": 1, "timeout": 0, "error": 0}
    assert sum(b.counts.values()) == len(completions)
    assert b.answers[0] == r"\frac12" and b.answers[2] is None
    assert b.accuracy == pytest.approx(2 / 7)
    m = b.metrics()
    assert m["reward/accuracy"] == pytest.approx(2 / 7)
    assert m["reward/count_empty"] == 1.0
    reward.close()  # does not close a shared verifier
    assert verifier.verify("1", "1").correct


def test_math_reward_released_code_format_score(verifier):
    b = MathReward(format_score=0.0, verifier=verifier)([r"\boxed{3}", r"\boxed{4}"], ["4", "4"])
    assert b.scores == [0.0, 1.0]
    assert make_reward("math_code", verifier=verifier).format_score == 0.0
    assert make_reward("math", verifier=verifier).format_score == 0.1


def test_math_reward_timeout_counts_as_extracted_wrong(verifier):
    b = MathReward(verifier=verifier)([r"\boxed{9^{9^{9^{9^{9^{9}}}}}}"], ["1"])
    assert b.counts["timeout"] == 1
    assert b.scores == [0.1] and b.correct == [False] and b.extracted == [True]


def test_math_reward_length_mismatch(verifier):
    with pytest.raises(ValueError, match="length"):
        MathReward(verifier=verifier)(["a"], [])


def test_math_reward_owns_its_verifier():
    with MathReward(num_workers=1) as r:
        assert r([r"\boxed{2}"], ["2"]).scores == [1.0]
        v = r.verifier
    assert v._closed


# ---------------------------------------------------------------------------------- user rewards


def test_load_reward_fn_from_file():
    fn = load_reward_fn(f"{USER}:length_reward")
    b = fn(["abcd", "ab"], ["1", "2"])
    assert isinstance(b, RewardBatch)
    assert b.scores == [1.0, 0.0]
    assert b.correct == [True, False]


def test_load_reward_fn_from_module():
    fn = load_reward_fn("math:fsum")  # importable, callable; wrong signature shows at call time
    assert callable(fn)
    with pytest.raises(ValueError, match="math:fsum"):
        fn(["a"], ["b"])


@pytest.mark.parametrize(
    "path, match",
    [
        ("no_colon_here", "must look like"),
        ("stalerl_no_such_module_xyz:fn", "cannot import"),
        ("/no/such/file.py:fn", "cannot import"),
        (f"{USER}:missing", "attribute not found"),
        (f"{USER}:NOT_CALLABLE", "not callable"),
    ],
)
def test_load_reward_fn_errors(path, match):
    with pytest.raises(ValueError, match=match) as ei:
        load_reward_fn(path)
    assert path in str(ei.value)


@pytest.mark.parametrize(
    "name, match",
    [("wrong_length", "returned 1 scores for 2"), ("not_finite", "non-finite"), ("not_numbers", "list of numbers")],
)
def test_user_reward_bad_outputs(name, match):
    fn = load_reward_fn(f"{USER}:{name}")
    with pytest.raises(ValueError, match=match) as ei:
        fn(["a", "b"], ["1", "2"])
    assert name in str(ei.value)
