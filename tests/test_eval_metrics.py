"""Tests of stalerl.evaluation.metrics: pass@k, avg@n, maj@n, summarize."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from stalerl.evaluation import (
    avg_at_n,
    default_ks,
    maj_at_n,
    majority_vote,
    pass_at_k,
    pass_at_k_array,
    summarize,
)


def _closed_form(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _brute_force(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_closed_form_and_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = pass_at_k(n, c, k)
            assert got == pytest.approx(_closed_form(n, c, k), abs=1e-12)
            assert got == pytest.approx(_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_stable():
    # C(1024, 512) overflows float64; the product form does not.
    for c in (0, 1, 7, 300, 1000, 1024):
        for k in (1, 16, 128, 512):
            want = _closed_form(1024, c, k)  # exact big-int arithmetic
            assert pass_at_k(1024, c, k) == pytest.approx(want, abs=1e-9)
    assert pass_at_k(16, 3, 1) == pytest.approx(3 / 16)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k
    for args in [(4, 1, 5), (4, 5, 1), (-1, 0, 1), (4, -1, 1), (4, 1, 0), (4, 1, -2), (4.0, 1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)


def test_pass_at_k_array():
    c = np.array([0, 1, 3, 8, 2])
    for k in (1, 2, 4, 8):
        got = pass_at_k_array(8, c, k)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, [pass_at_k(8, int(ci), k) for ci in c], rtol=0, atol=0)
    got = pass_at_k_array(np.array([4, 8]), np.array([1, 1]), 2)
    np.testing.assert_allclose(got, [pass_at_k(4, 1, 2), pass_at_k(8, 1, 2)])
    assert pass_at_k_array(4, np.array([], dtype=int), 1).shape == (0,)
    with pytest.raises(ValueError):
        pass_at_k_array(4, [5], 1)
    with pytest.raises(ValueError):
        pass_at_k_array(4, [1], 5)
    with pytest.raises(ValueError):
        pass_at_k_array(4, [0.5], 1)


def test_avg_at_n():
    m = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    assert avg_at_n(m) == pytest.approx((0.5 + 1 + 0) / 3)
    assert avg_at_n([[True, False], [True]]) == pytest.approx(0.75)  # ragged: per-problem means
    with pytest.raises(ValueError):
        avg_at_n([])
    with pytest.raises(ValueError):
        avg_at_n([[]])


def test_majority_vote():
    assert majority_vote(["3", "4", "4", "3"]) == 0  # tie: the first answer to appear wins
    assert majority_vote(["3", "4", "4", "3", "4"]) == 1
    assert majority_vote([None, None, "5"]) == 2  # None never votes
    assert majority_vote([None, None]) is None
    assert majority_vote([" 7", "7 ", "8"]) == 0  # stripped before counting
    assert majority_vote(["a", "A", "b"], key=str.lower) == 0


def test_maj_at_n_matrix_and_function():
    answers = [
        ["1", "2", "2", None],  # majority "2" (index 1): correct
        ["5", "6", "5", "6"],  # tie, "5" first: wrong
        [None, None, None, None],  # no answer: wrong
        ["9", None, None, None],  # single vote "9": correct
    ]
    correct = np.array(
        [[False, True, True, False], [False, True, False, True], [False] * 4, [True, False, False, False]]
    )
    assert maj_at_n(answers, correct) == pytest.approx(2 / 4)
    golds = ["2", "6", "0", "9"]
    assert maj_at_n(answers, lambda p, a: a == golds[p]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        maj_at_n(answers, correct[:2])
    with pytest.raises(ValueError):
        maj_at_n([], correct)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8]
    assert default_ks(128)[-1] == 128


def test_summarize():
    rng = np.random.default_rng(0)
    m = rng.random((6, 8)) < 0.3
    out = summarize(m)
    assert out["n"] == 8 and out["num_problems"] == 6
    assert out["avg@8"] == pytest.approx(m.mean())
    assert out["pass@1"] == pytest.approx(out["avg@8"])
    for k in (1, 2, 4, 8):
        want = np.mean([_closed_form(8, int(c), k) for c in m.sum(1)])
        assert out[f"pass@{k}"] == pytest.approx(want)
    assert "maj@8" not in out
    pk = [out[f"pass@{k}"] for k in (1, 2, 4, 8)]
    assert pk == sorted(pk)  # pass@k grows with k
    answers = [["1"] * 8 for _ in range(6)]
    with_maj = summarize(m, answers=answers, ks=[3])
    assert set(with_maj) == {"n", "num_problems", "avg@8", "maj@8", "pass@3"}
    assert with_maj["maj@8"] == pytest.approx(m[:, 0].mean())
    for bad in ([1, 9], [0]):
        with pytest.raises(ValueError):
            summarize(m, ks=bad)
    with pytest.raises(ValueError):
        summarize(np.zeros((0, 4), dtype=bool))
    with pytest.raises(ValueError):
        summarize([[True, False], [True]])
