"""Tests of the generation engines (:mod:`stalerl.rollout.generation`, :mod:`stalerl.rollout.engine`).

Response lengths are forced where a test needs them exactly, by a logits processor that forbids
EOS before a per-prompt target length and forces it there (:class:`ForcedLengths` below), so the
expected layout is written down by hand from the targets.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from stalerl.models.logprobs import completion_log_probs
from stalerl.rollout import engine as continuous
from stalerl.rollout.generation import ENGINES, generate, rows_per_chunk
from stalerl.training.config import ConfigError, load_config

PROMPTS = ["12+34=", "7*8-1=", "100+2=", "3="]


@pytest.fixture(scope="module")
def policy(tiny_testbed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_testbed).eval(), AutoTokenizer.from_pretrained(tiny_testbed)


class ForcedLengths:
    """Response of prompt ``p`` is exactly ``targets[p]`` tokens (EOS the last), unless the cap cuts it."""

    def __init__(self, tokenizer, targets: dict[str, int]):
        self.by_prompt = {tuple(tokenizer(p, add_special_tokens=False)["input_ids"]): t for p, t in targets.items()}
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            first = next(i for i, t in enumerate(row) if t != self.pad)
            prompt = next(p for p in self.by_prompt if tuple(row[first:first + len(p)]) == p)
            done = len(row) - first - len(prompt)
            if done < self.by_prompt[prompt] - 1:
                scores[b, self.eos] = float("-inf")
            else:
                scores[b] = float("-inf")
                scores[b, self.eos] = 0.0
        return scores


# ============================================================================ layout and EOS


@pytest.mark.parametrize("engine", ENGINES)
def test_layout_left_padded_prompt_right_padded_response(policy, engine, one_thread):
    model, tok = policy
    targets = {"12+34=": 3, "7*8-1=": 1, "100+2=": 9, "3=": 5}
    torch.manual_seed(0)
    gen = generate(model, tok, PROMPTS, group_size=2, max_new_tokens=6, batch_size=3, engine=engine,
                   logits_processor=ForcedLengths(tok, targets), record_log_prob=True)
    lengths = [3, 3, 1, 1, 6, 6, 5, 5]                       # 9 is cut at max_new_tokens=6
    L = max(len(p) for p in PROMPTS)                         # the char tokenizer: one token per character
    R = 6
    assert gen.input_ids.shape == (8, L + R) and gen.response_mask.shape == (8, R)
    assert gen.response_mask.sum(-1).tolist() == lengths
    assert gen.truncated.tolist() == [False, False, False, False, True, True, False, False]
    for row, (prompt, n) in enumerate(zip([p for p in PROMPTS for _ in range(2)], lengths, strict=True)):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert gen.input_ids[row, L - len(ids):L].tolist() == ids
        assert gen.input_ids[row, :L - len(ids)].eq(tok.pad_token_id).all()
        assert gen.attention_mask[row].tolist() == [0] * (L - len(ids)) + [1] * (len(ids) + n) + [0] * (R - n)
        response = gen.input_ids[row, L:]
        assert response[n:].eq(tok.pad_token_id).all()                          # nothing after the end
        assert (response[n - 1] == tok.eos_token_id) != bool(gen.truncated[row])   # ends at EOS, or cut
        assert not response[:n - 1].eq(tok.eos_token_id).any()
        assert gen.rollout_log_prob[row, n:].eq(0).all()
        if not gen.truncated[row]:
            assert gen.rollout_log_prob[row, n - 1].item() == 0.0                   # a forced EOS: q = 1
        assert gen.texts[row] == tok.decode(response[:n], skip_special_tokens=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_truncation_at_max_new_tokens_and_an_eos_at_the_cap(policy, engine, one_thread):
    model, tok = policy
    gen = generate(model, tok, ["1=", "2="], max_new_tokens=4, engine=engine,
                   logits_processor=ForcedLengths(tok, {"1=": 4, "2=": 50}))
    assert gen.response_mask.sum(-1).tolist() == [4, 4]
    assert gen.truncated.tolist() == [False, True]          # EOS as the 4th token is an ending, not a cut
    assert gen.input_ids[0, -1].item() == tok.eos_token_id


def test_rows_that_end_leave_and_waiting_prompts_take_their_place(policy, one_thread):
    """With 2 rows at a time, the short rows end and the waiting rows are admitted while the long
    row still decodes: fewer decode passes than 2 static chunks would take."""
    model, tok = policy
    widths = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        gen = generate(model, tok, ["1=", "2=", "3=", "4="], max_new_tokens=8, batch_size=2, engine="continuous",
                       logits_processor=ForcedLengths(tok, {"1=": 8, "2=": 2, "3=": 2, "4=": 2}))
    finally:
        hook.remove()
    assert gen.response_mask.sum(-1).tolist() == [8, 2, 2, 2]
    decodes = [s for s in widths if s[1] == 1]
    assert max(s[0] for s in widths) == 2
    # the long row needs 7 decode passes after its prefill; all rows finish within them
    assert len(decodes) == 7


# ============================================================================ log-probs


@pytest.mark.parametrize("engine", ENGINES)
def test_sampler_log_probs_equal_teacher_forced_recomputation(policy, engine, one_thread):
    model, tok = policy
    torch.manual_seed(1)
    gen = generate(model, tok, PROMPTS, group_size=3, max_new_tokens=12, batch_size=5, engine=engine,
                   record_log_prob=True)
    lp, _ = completion_log_probs(model, gen.input_ids, gen.attention_mask, gen.response_mask.shape[1],
                                 temperature=1.0, compute_entropy=False)
    mask = gen.response_mask.bool()
    assert mask.sum() > 20
    torch.testing.assert_close(gen.rollout_log_prob[mask], lp[mask].float(), atol=1e-4, rtol=0)


def test_sampler_log_probs_match_transformers_warpers():
    """log q = log_softmax of transformers' TemperatureLogitsWarper then TopPLogitsWarper."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5)]:
        ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_p < 1:
            ref = TopPLogitsWarper(top_p)(None, ref)
        ours = continuous.sampler_log_probs(logits, temperature, top_p)
        assert torch.equal(ours.isinf(), ref.isinf())
        torch.testing.assert_close(ours, torch.log_softmax(ref, -1))


def test_inverse_cdf_never_picks_a_zero_probability_token():
    log_q = torch.log(torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4))
    u = torch.tensor([0.0, 0.4999, 0.5, 1 - 1e-16], dtype=torch.float64)
    assert continuous.sample_inverse_cdf(log_q, u).tolist() == [1, 1, 3, 3]


# ============================================================================ seeds and distribution


def test_same_seed_same_samples_whatever_the_batching(policy, one_thread):
    model, tok = policy

    def run(seed, **kwargs):
        torch.manual_seed(seed)
        return generate(model, tok, PROMPTS, group_size=3, max_new_tokens=10, record_log_prob=True,
                        engine="continuous", **kwargs)

    a, b = run(5), run(5, batch_size=2)
    c = run(5, batch_size=64, max_batch_tokens=3 * (6 + 10))
    for other in (b, c):
        assert torch.equal(a.input_ids, other.input_ids) and torch.equal(a.response_mask, other.response_mask)
        torch.testing.assert_close(a.rollout_log_prob, other.rollout_log_prob)
    assert not torch.equal(a.input_ids, run(6).input_ids)
    assert len({tuple(r) for r in a.input_ids.tolist()}) > 1        # rows have streams of their own


def test_token_budget_bounds_the_rows_at_once(policy, one_thread):
    model, tok = policy
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        generate(model, tok, PROMPTS[:3], group_size=4, max_new_tokens=10, batch_size=64, max_batch_tokens=50,
                 engine="continuous")
    finally:
        hook.remove()
    assert max(rows) == 3                                    # 3 x (6 + 10) = 48 <= 50 < 4 x 16
    # 4 short rows fill the budget (4 x (2 + 10) = 48); a longer prompt waits until it fits
    runs = []
    for budget in (48, None):
        torch.manual_seed(3)
        runs.append(generate(model, tok, ["3=", "12+34="], group_size=4, max_new_tokens=10, max_batch_tokens=budget))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids)
    assert rows_per_chunk(64, 50, 6, 10) == 3 and rows_per_chunk(64, 5, 6, 10) == 1 and rows_per_chunk(8, None, 6, 10) == 8


def test_engines_sample_the_same_distribution(policy, one_thread):
    """First tokens at T=0.7, top-p 0.9: each engine's counts pass a chi-square test against the
    exact q computed from the model's logits; the two engines' response lengths agree."""
    from scipy import stats

    model, tok = policy
    ids = tok(["12+34="], return_tensors="pt", add_special_tokens=False)["input_ids"]
    q = continuous.sampler_log_probs(model(input_ids=ids).logits[:, -1].detach(), 0.7, 0.9).exp()[0]
    support = q > 0
    n = 2000
    for engine in ENGINES:
        torch.manual_seed(11)
        gen = generate(model, tok, ["12+34="], group_size=n, temperature=0.7, top_p=0.9, max_new_tokens=1,
                       batch_size=n, engine=engine)
        first = gen.input_ids[:, ids.shape[1]]
        counts = torch.bincount(first, minlength=q.numel()).double()
        assert counts[~support].sum() == 0, f"{engine} sampled outside the nucleus"
        expected = q[support].double() * n
        chi2 = ((counts[support] - expected) ** 2 / expected).sum().item()
        assert stats.chi2.sf(chi2, int(support.sum()) - 1) > 1e-4, engine
    lengths = {}
    for engine in ENGINES:
        torch.manual_seed(12)
        gen = generate(model, tok, ["12+34="], group_size=300, max_new_tokens=6, batch_size=300, engine=engine)
        lengths[engine] = gen.response_mask.sum(-1).double()
    diff = lengths["continuous"].mean() - lengths["static"].mean()
    se = math.sqrt(lengths["continuous"].var() / 300 + lengths["static"].var() / 300)
    assert abs(diff) < 4 * se + 1e-9


# ============================================================================ config, loop, benchmark


def test_engine_and_budget_are_validated(tiny_overrides):
    with pytest.raises(ConfigError, match=r"rollout.engine: expected one of 'continuous', 'static', got 'fast'"):
        load_config(None, tiny_overrides("rollout.engine=fast"))
    with pytest.raises(ConfigError, match=r"rollout.max_batch_tokens must be >= 1, got 0"):
        load_config(None, tiny_overrides("rollout.max_batch_tokens=0"))
    assert load_config(None, tiny_overrides("rollout.max_batch_tokens=null")).rollout.max_batch_tokens is None
    with pytest.raises(ValueError, match="engine='fast'"):
        generate(None, None, [], engine="fast")


@pytest.mark.parametrize("engine", ENGINES)
def test_the_loop_trains_with_either_engine(make_config, engine):
    from stalerl.training.logger import read_jsonl
    from stalerl.training.loop import train

    config = make_config("steps=1", "objective.name=tis", f"rollout.engine={engine}", "rollout.batch_size=5",
                         "rollout.max_batch_tokens=400")
    result = train(config)
    assert result.crashed_at is None and result.steps_done == 1
    rows = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if "rollout/response_length_mean" in r]
    assert rows and all(0 < r["rollout/response_length_mean"] <= 24 for r in rows)
    assert any("eval/accuracy" in r for r in read_jsonl(result.run_dir / "metrics.jsonl"))


def test_benchmark_smoke(tiny_testbed, one_thread, capsys):
    spec = importlib.util.spec_from_file_location("bench_generation", Path(__file__).parents[1] / "benchmarks" / "generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--model", str(tiny_testbed), "--prompts", "12", "--max-new-tokens", "8",
                          "--batch-size", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert set(results) == {"heavy", "uniform"} and "continuous / static" in out
    assert results["uniform"]["tokens"] == 12 * 8
    assert all(r["ratio"] > 0 for r in results.values())
    assert bench.target_lengths("heavy", 1000, 64, 0).count(64) < 100          # a few at the cap, most short
