"""Tests of the embedded CPU testbed: task, tokenizer, model config, warm start and cache."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from stalerl.testbed import model as tb_model
from stalerl.testbed.task import (
    TESTBED_TEMPLATE,
    Problem,
    evaluate_expression,
    generate_problems,
    problem_split,
)
from stalerl.testbed.solution import sampled_solution, worked_solution
from stalerl.testbed.tokenizer import build_char_tokenizer
from stalerl.testbed.warmstart_data import training_problems
from stalerl.testbed.warmstart import (
    MARKER,
    extract_boxed,
    load_testbed,
    sample_accuracy,
    warm_start,
)

# ------------------------------------------------------------------------------- task


def test_generate_problems_deterministic():
    a = generate_problems(200, seed=3)
    b = generate_problems(200, seed=3)
    c = generate_problems(200, seed=4)
    assert a == b
    assert a != c
    assert generate_problems(200, split="test", seed=3) == generate_problems(200, split="test", seed=3)
    # a prefix of a longer request is the shorter request
    assert generate_problems(50, seed=3) == a[:50]


def test_splits_disjoint_and_by_hash():
    train = generate_problems(1500, split="train", seed=0)
    test = generate_problems(300, split="test", seed=0)
    other_train = generate_problems(1500, split="train", seed=1)
    test_prompts = {p.prompt for p in test}
    assert not test_prompts & {p.prompt for p in train}
    assert not test_prompts & {p.prompt for p in other_train}
    assert all(problem_split(p.expression) == "test" for p in test)
    assert all(problem_split(p.expression) == "train" for p in train)
    # unique within a list
    assert len({p.prompt for p in train}) == len(train)
    # aliases of the held-out split
    assert generate_problems(10, split="heldout") == generate_problems(10, split="test")


def test_answers_and_solutions_correct():
    probs = generate_problems(600, seed=7)
    assert {p.level for p in probs} == {1, 2, 3}
    for p in probs:
        assert isinstance(p, Problem)
        assert p.prompt == TESTBED_TEMPLATE.format(expression=p.expression)
        assert int(p.answer) == eval(p.expression)  # noqa: S307  (digits and + - * ( ) only)
        assert evaluate_expression(p.expression) == int(p.answer)
        assert p.solution.endswith("\\boxed{" + p.answer + "}")
        assert extract_boxed(p.solution) == p.answer
        assert len(p.prompt) <= 40 and len(p.solution) <= 60
        # each worked step is arithmetically right
        for step in p.solution.split(". ")[:-1]:
            lhs, rhs = step.rstrip(".").rsplit("=", 1)
            assert eval(lhs) == int(rhs)  # noqa: S307
        assert p.level == 3 or "(" not in p.prompt
        assert "(" in p.prompt if p.level == 3 else True
        row = p.to_row()
        assert row["prompt"] == p.prompt and row["answer"] == p.answer


def test_sampled_solution_takes_every_valid_order():
    # 3*4-(5+6): the group and the product are both ready; 5+6 and 3*4 may swap operands; the
    # subtraction comes last and keeps its order: 2 orders x 2 x 2 operand orders = 8 solutions
    rng = random.Random(0)
    seen = {sampled_solution("3*4-(5+6)", rng) for _ in range(200)}
    firsts = ("5+6=11. ", "6+5=11. ", "3*4=12. ", "4*3=12. ")
    assert len(seen) == 8 and all(s.endswith("12-11=1. \\boxed{1}") and s.startswith(firsts) for s in seen)
    assert worked_solution("3*4-(5+6)") == "5+6=11. 3*4=12. 12-11=1. \\boxed{1}"
    # 2+3*4: the product is the only ready reduction (the sum's right operand belongs to it)
    assert {sampled_solution("2+3*4", rng, swap=0.0) for _ in range(50)} == {"3*4=12. 2+12=14. \\boxed{14}"}
    # a-b+c: left to right only (b+c first would be wrong), and "-" never swaps its operands
    assert {sampled_solution("9-4+2", rng) for _ in range(50)} == {"9-4=5. 5+2=7. \\boxed{7}", "9-4=5. 2+5=7. \\boxed{7}"}


def test_sampled_solutions_are_verifiable():
    rng = random.Random(1)
    for p in generate_problems(400, seed=5):
        text = sampled_solution(p.expression, rng)
        assert text.endswith("\\boxed{" + p.answer + "}")
        steps = text.split(". ")[:-1]
        assert len(steps) == sum(p.expression.count(op) for op in "+-*")
        for step in steps:
            lhs, rhs = step.rstrip(".").rsplit("=", 1)
            assert eval(lhs) == int(rhs)  # noqa: S307


def test_warm_start_data_shows_both_orders_deterministically():
    a = training_problems(300, seed=2, levels=(1, 2, 3))
    assert a == training_problems(300, seed=2, levels=(1, 2, 3))
    canonical = training_problems(300, seed=2, levels=(1, 2, 3), solutions="canonical")
    assert [p.expression for p in a] == [p.expression for p in canonical]
    assert all(p.solution == worked_solution(p.expression) for p in canonical)
    differs = sum(x.solution != y.solution for x, y in zip(a, canonical, strict=True))
    assert 0.3 * len(a) < differs < len(a)  # most solutions have a choice, taken about half the time
    with pytest.raises(ValueError, match="solutions must be"):
        training_problems(3, seed=0, levels=(1,), solutions="any")


def test_levels_mix_and_errors():
    probs = generate_problems(30, levels=(2,))
    assert all(p.level == 2 and p.expression.count("+") + p.expression.count("-")
               + p.expression.count("*") == 2 for p in probs)
    assert generate_problems(0) == []
    with pytest.raises(ValueError, match="non-negative"):
        generate_problems(-1)
    with pytest.raises(ValueError, match="unknown split"):
        generate_problems(3, split="dev-ish")
    with pytest.raises(ValueError, match="unknown level"):
        generate_problems(3, levels=(4,))
    with pytest.raises(ValueError, match="distinct"):
        generate_problems(400, split="test", levels=(1,), unique=True)
    # by default an exhausted level repeats its problems; unique=False draws independently
    ps = generate_problems(400, split="test", levels=(1,))
    assert len(ps) == 400 and 100 < len({p.prompt for p in ps}) < 400
    assert len(generate_problems(400, split="test", levels=(1,), unique=False)) == 400


# -------------------------------------------------------------------------- tokenizer


def test_tokenizer_roundtrip():
    tok = build_char_tokenizer()
    assert tok.padding_side == "left"
    assert (tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token) == ("<pad>", "<eos>", "<bos>", "<unk>")
    samples = [p.prompt + p.solution for p in generate_problems(50, seed=1)]
    samples += ["  two  spaces \\boxed{ -3 } {}\\", "Q: (1+2)*3=? A: 3*3=9. \\boxed{9}", "a\nb", ""]
    for s in samples:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(s)  # one token per character
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == s
        assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == s
    # left padding for generation batches
    enc = tok(["ab", "abcd"], padding=True, add_special_tokens=False)
    assert enc["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert enc["attention_mask"][0] == [0, 0, 1, 1]


# ------------------------------------------------------------------------------ model


def test_model_config_and_forward():
    from transformers import AutoModelForCausalLM, Qwen3Config

    tok = build_char_tokenizer()
    for size in ("tiny", "small"):
        cfg = tb_model.testbed_model_config(len(tok), size)
        assert isinstance(cfg, Qwen3Config) and cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="unknown testbed model size"):
        tb_model.testbed_model_config(len(tok), "huge")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tb_model.testbed_model_config(len(tok), "tiny"))
    enc = tok(["Q: 1+2=? A: ", "Q: 3*4-5=? A: "], return_tensors="pt", padding=True, add_special_tokens=False)
    out = model(**enc)
    assert out.logits.shape == (2, enc["input_ids"].shape[1], len(tok))
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------------- warm start


def test_warm_start_tiny_cache_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = warm_start(size="tiny", cache_dir=tmp_path, steps=8, progress=False)
    assert path.parent == tmp_path and path.name.startswith("testbed-tiny-")
    assert (path / MARKER).is_file()
    info = json.loads((path / "warmstart.json").read_text())
    assert info["steps"] == 8 and info["final_loss"] > 0
    assert 0.0 <= info["heldout_accuracy_t1"] <= 1.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # temp dir cleaned

    # loadable through the generic Auto* code path
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok("Q: 1+2=? A: ", add_special_tokens=False)["input_ids"]) == "Q: 1+2=? A: "
    model2, tok2 = load_testbed(path)
    assert tok2.padding_side == "left" and not model2.training
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    probs = generate_problems(6, split="test", levels=(1,))
    acc1 = sample_accuracy(model2, tok2, probs, max_new_tokens=24, seed=1)
    acc2, comps = sample_accuracy(model2, tok2, [p.to_row() for p in probs], max_new_tokens=24, seed=1,
                                  return_details=True)
    assert acc1 == acc2 and len(comps) == 6

    # second call reuses the cache: nothing rewritten
    mtime = (path / MARKER).stat().st_mtime_ns
    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert warm_start(size="tiny", cache_dir=tmp_path, steps=8, progress=False) == path
    assert (path / MARKER).stat().st_mtime_ns == mtime
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime

    # the environment variable is the default cache location
    os.environ["STALERL_CACHE"] = str(tmp_path)
    try:
        assert warm_start(size="tiny", steps=8, progress=False) == path
    finally:
        del os.environ["STALERL_CACHE"]

    # deterministic: a forced retrain gives the same weights
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    assert warm_start(size="tiny", cache_dir=tmp_path, steps=8, progress=False, force=True) == path
    assert (path / MARKER).stat().st_mtime_ns != mtime
    model3, _ = load_testbed(path)
    for k, v in model3.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_warm_start_ignores_killed_dir(tmp_path):
    path = warm_start(size="tiny", cache_dir=tmp_path, steps=0, progress=False)
    # simulate a warm start killed before completion: marker missing, weights garbage
    (path / MARKER).unlink()
    (path / "model.safetensors").write_bytes(b"garbage")
    again = warm_start(size="tiny", cache_dir=tmp_path, steps=0, progress=False)
    assert again == path and (path / MARKER).is_file()
    load_testbed(path)  # the garbage was replaced by a complete checkpoint


def test_concurrent_warm_starts_train_once(tmp_path, monkeypatch):
    """Two processes (here: threads, whose separate flocks conflict alike) asking for the same
    checkpoint on a cold cache: one trains, the other waits for it and loads its result."""
    import threading
    import time

    from stalerl.testbed import warmstart

    calls = []
    original = warmstart._train_and_save

    def slow_train_and_save(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other caller to reach the lock
        return original(*args, **kwargs)

    monkeypatch.setattr(warmstart, "_train_and_save", slow_train_and_save)
    warmstart.build_char_tokenizer()  # transformers' lazy imports are not thread-safe: import up front
    paths, errors = [], []

    def call():
        try:
            paths.append(warm_start(size="tiny", cache_dir=tmp_path, steps=0, progress=False))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1, f"trained {len(calls)} times"
    assert len(paths) == 2 and paths[0] == paths[1] and (paths[0] / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_warm_start_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown testbed size"):
        warm_start(size="huge", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="steps"):
        warm_start(size="tiny", cache_dir=tmp_path, steps=-1)
