"""Trainer options beyond the papers' settings: LR schedule, KL and entropy terms, overlong
handling, dynamic sampling, verl's data layout, user reward signatures, W&B, ``stalerl export``.

Expected values are worked out by hand or taken from verl's / transformers' own functions.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch

from stalerl.cli.main import main as cli_main
from stalerl.rewards.reward import RewardBatch, UserReward
from stalerl.rollout import groups
from stalerl.rollout.generation import Generation
from stalerl.staleness.buffer import expected_policy_version
from stalerl.training import loss_terms
from stalerl.training.config import ConfigError, load_config
from stalerl.training.logger import read_jsonl, trackers
from stalerl.training.loop import train
from stalerl.training.schedule import lr_ratio


def _steps(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" not in r]


def _assert_keys_listed(run_dir: Path) -> None:
    """Every key the run wrote has its row in docs/METRICS.md."""
    from test_metrics_table import KEYS, listed

    written = {k for name in ("metrics.jsonl", "updates.jsonl") for r in read_jsonl(run_dir / name) for k in r}
    assert not [k for k in written - {"step", "update"} if not listed(k, KEYS)]


# ============================================================================ config

@pytest.mark.parametrize("override,needle", [
    ("optim.schedule=exponential", "optim.schedule: expected one of 'constant', 'linear', 'cosine'"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio must lie in \[0, 1\]"),
    ("algorithm.kl_loss_type=k4", "algorithm.kl_loss_type: expected one of"),
    ("algorithm.kl_loss_coef=-0.1", "algorithm.kl_loss_coef must be a finite number >= 0"),
    ("algorithm.overlong_buffer_len=64", "algorithm.overlong_buffer_len=64 must be >= 0 and smaller than rollout.max_new_tokens=64"),
    ("algorithm.dynamic_sampling_max_tries=0", "algorithm.dynamic_sampling_max_tries must be >= 1"),
    ("logger=[tensorboard,mlflow]", r"logger: unknown tracker\(s\) \['mlflow'\]"),
])
def test_option_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_options_are_off_by_default():
    config = load_config(None, [])
    ac = config.algorithm
    assert (config.optim.schedule, config.optim.warmup_steps) == ("constant", 0)
    assert (ac.kl_loss_coef, ac.entropy_coeff, ac.overlong_buffer_len) == (0.0, 0.0, 0)
    assert not ac.mask_truncated_completions and not ac.dynamic_sampling
    assert trackers(config) == ["tensorboard"]
    assert trackers(load_config(None, ["tensorboard=false"])) == []
    assert trackers(load_config(None, ["logger=[wandb]"])) == ["wandb"]


# ============================================================================ LR schedule

def _peer_lrs(make_scheduler, n: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt)
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_schedules_match_verl_and_transformers():
    from transformers import get_linear_schedule_with_warmup
    from verl.utils.torch_functional import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    W, U = 3, 12
    ours = {kind: [lr_ratio(u, schedule=kind, warmup_steps=W, total_updates=U, min_lr_ratio=r) for u in range(U)]
            for kind, r in (("constant", 0.0), ("cosine", 0.1), ("linear", 0.0))}
    assert ours["constant"] == pytest.approx(_peer_lrs(lambda o: get_constant_schedule_with_warmup(o, W), U))
    assert ours["cosine"] == pytest.approx(
        _peer_lrs(lambda o: get_cosine_schedule_with_warmup(o, W, U, min_lr_ratio=0.1), U))
    assert ours["linear"] == pytest.approx(_peer_lrs(lambda o: get_linear_schedule_with_warmup(o, W, U), U))
    # by hand: warmup 0, 1/3, 2/3, then linear with a floor of 0.5 halfway: 0.5 + 0.5 * (1 - 1/2)
    assert lr_ratio(1, schedule="linear", warmup_steps=3, total_updates=5, min_lr_ratio=0.5) == pytest.approx(1 / 3)
    assert lr_ratio(4, schedule="linear", warmup_steps=3, total_updates=5, min_lr_ratio=0.5) == pytest.approx(0.75)


SCHEDULED = ("steps=4", "optim.schedule=cosine", "optim.warmup_steps=3", "optim.min_lr_ratio=0.1",
             "stale.staleness=2", "checkpoint_every=2", "keep_checkpoints=5", "data.eval_size=0")


def test_lr_schedule_runs_per_update_and_resumes_exactly(make_config, tmp_path):
    """train/lr of each update is lr * ratio(update); a run killed after its step-2 checkpoint and
    resumed continues the schedule (the scheduler's state is in the checkpoint)."""
    straight = train(make_config(*SCHEDULED, run_dir=tmp_path / "a")).run_dir
    updates = read_jsonl(straight / "updates.jsonl")
    lrs = [u["train/lr"] for u in updates]
    U = 8
    hand = [1e-3 * (u / 3 if u < 3 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (u - 3) / (U - 3))))
            for u in range(U)]
    assert lrs == pytest.approx(hand)
    killed = tmp_path / "b"
    shutil.copytree(straight, killed)
    shutil.rmtree(killed / "checkpoints" / "step_000004")
    (killed / "checkpoints" / "latest").write_text("step_000002")
    state = torch.load(killed / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 4
    result = train(make_config(*SCHEDULED, run_dir=killed), resume=killed)
    assert result.steps_done == 4
    assert read_jsonl(killed / "updates.jsonl") == updates


# ============================================================================ KL and entropy

KL_TYPES = ["k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl", "k1+", "k3+", "low_var_kl+"]


@pytest.mark.parametrize("kind", KL_TYPES)
def test_kl_estimators_equal_verl_kl_penalty(kind):
    from verl.trainer.ppo.core_algos import kl_penalty

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 5, generator=g, dtype=torch.float64) - 2
    lp1 = (ref + 0.5 * torch.randn(3, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    lp2 = lp1.detach().clone().requires_grad_(True)
    ours, theirs = loss_terms.kl_estimate(lp1, ref, kind), kl_penalty(lp2, ref, kind)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(lp1.grad, lp2.grad)


def test_kl_k3_by_hand():
    # log r = log pi - log pi_ref = 0.5: k3 = exp(-0.5) + 0.5 - 1
    value = loss_terms.kl_estimate(torch.tensor([[0.0]]), torch.tensor([[-0.5]]), "k3")
    assert value.item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)


def test_entropy_bonus_and_kl_term_by_hand():
    """extra = kl_coef * token-mean(kl) - entropy_coeff * token-mean(H), normalised by the
    mini-batch's token count (6 here, of which this micro-batch holds 3)."""
    from stalerl.objectives.base import BatchStats
    from stalerl.training.config import AlgorithmConfig

    terms = loss_terms.LossTerms(AlgorithmConfig(entropy_coeff=0.1))
    micro = {"response_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    entropy = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]], requires_grad=True)
    extra, metrics = terms(micro, torch.zeros(2, 3), entropy, BatchStats(num_tokens=6.0, num_seqs=4.0), "token-mean")
    assert extra.item() == pytest.approx(-0.1 * (1 + 2 + 3) / 6)
    assert metrics == {"actor/entropy_loss": pytest.approx(2.0)}
    extra.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.1 / 6, -0.1 / 6, 0], [-0.1 / 6, 0, 0]]))


def test_kl_loss_reference_loaded_once_frozen_and_logged(make_config, monkeypatch):
    loaded = []
    real = loss_terms.load_reference

    def spy(path, like):
        ref = real(path, like)
        loaded.append(ref)
        return ref

    monkeypatch.setattr(loss_terms, "load_reference", spy)
    run = train(make_config("steps=2", "stale.staleness=0", "algorithm.kl_loss_coef=0.5", "algorithm.kl_loss_type=k3",
                            "algorithm.entropy_coeff=0.01", "data.eval_size=0")).run_dir
    assert len(loaded) == 1
    ref = loaded[0]
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    updates = read_jsonl(run / "updates.jsonl")
    assert updates[0]["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    assert updates[-1]["actor/kl_loss"] > 1e-6 and updates[-1]["actor/kl_coef"] == 0.5
    assert all(u["actor/entropy_loss"] > 0 for u in updates)
    step = _steps(run)[-1]
    assert "actor/kl_loss" in step and "actor/entropy_loss" in step
    _assert_keys_listed(run)
    # off by default: no reference, no keys
    run = train(make_config("steps=1", "stale.staleness=0", "data.eval_size=0", run_dir=run.parent / "off")).run_dir
    assert len(loaded) == 1 and "actor/kl_loss" not in read_jsonl(run / "updates.jsonl")[0]


# ============================================================================ overlong, dynamic sampling

def test_overlong_penalty_is_dapo_eq13_by_hand():
    # L_max = 20, L_cache = 4: no penalty up to 16 tokens, then (16 - |y|) / 4, times the factor
    out = groups.overlong_penalty(torch.tensor([5, 16, 17, 18, 20]), 20, 4, 2.0)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -2.0])
    assert groups.overlong_penalty(torch.tensor([20]), 20, 0, 1.0).tolist() == [0.0]


def test_overlong_penalty_equals_verl_dapo_reward_manager(tiny_testbed):
    from types import SimpleNamespace

    import numpy as np
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.workers.reward_manager.dapo import DAPORewardManager

    lengths, R, Lp = [5, 16, 17, 18, 20], 20, 3
    n = len(lengths)
    attention = torch.zeros(n, Lp + R, dtype=torch.long)
    attention[:, :Lp] = 1
    for i, length in enumerate(lengths):
        attention[i, Lp:Lp + length] = 1
    data = DataProto.from_dict(
        tensors={"prompts": torch.full((n, Lp), 5), "responses": torch.full((n, R), 5), "attention_mask": attention},
        non_tensors={"reward_model": np.array([{"ground_truth": "1"}] * n, dtype=object),
                     "data_source": np.array(["x"] * n, dtype=object)})
    manager = DAPORewardManager(AutoTokenizer.from_pretrained(tiny_testbed), 0, compute_score=lambda **kw: 0.0,
                                max_resp_len=R, overlong_buffer_cfg=SimpleNamespace(enable=True, len=4,
                                                                                     penalty_factor=2.0, log=False))
    theirs = manager(data).sum(-1)
    torch.testing.assert_close(groups.overlong_penalty(torch.tensor(lengths), R, 4, 2.0), theirs)


def _gen(prompt_len: int, lengths: list[int], start: int, max_new: int) -> Generation:
    """Rows with left-padded prompts of ``prompt_len`` tokens and responses of ``lengths`` tokens;
    token values ``start + row`` identify the rows."""
    n, R = len(lengths), max(lengths)
    ids = torch.zeros(n, prompt_len + R, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros(n, R, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :prompt_len] = start + i
        attn[i, :prompt_len] = 1
        ids[i, prompt_len:prompt_len + length] = start + i
        attn[i, prompt_len:prompt_len + length] = 1
        resp[i, :length] = 1
    return Generation(ids, attn, resp, [f"t{start + i}" for i in range(n)],
                      torch.tensor([length >= max_new for length in lengths]))


class FakeRounds:
    """``sample_round`` returning prescribed rewards, one list per round (G = 2)."""

    def __init__(self, rounds: list[list[float]], max_new: int = 8):
        self.rounds, self.calls, self.max_new = rounds, [], max_new

    def __call__(self, n_prompts: int):
        rewards = self.rounds[len(self.calls)]
        self.calls.append(n_prompts)
        start = 100 * len(self.calls)
        gen = _gen(2 + len(self.calls), [3 + len(self.calls)] * len(rewards), start, self.max_new)
        return gen, RewardBatch(list(rewards), [r > 0 for r in rewards], [True] * len(rewards), {"ok": len(rewards)})


def _options(make_config, *extra):
    return make_config("rollout.prompts_per_step=2", "rollout.group_size=2", "optim.micro_batch_size=2", *extra)


def test_dynamic_sampling_drops_equal_groups_and_refills(make_config):
    config = _options(make_config, "algorithm.dynamic_sampling=true")
    fake = FakeRounds([[1, 1, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]])  # groups: equal|kept, kept|equal, kept|kept
    gen, scored, rewards, info = groups.collect_groups(fake, config, pad_id=0)
    assert fake.calls == [2, 2]  # two rounds of P prompts fill the batch
    assert rewards.tolist() == [0, 1, 0, 1]  # round 1 group 2, round 2 group 1
    assert gen.texts == ["t102", "t103", "t200", "t201"]
    assert gen.input_ids.shape == (4, 4 + 5)  # prompts (3, then 4 tokens) padded to 4 on the left, responses to 5
    assert gen.input_ids[0].tolist() == [0, 102, 102, 102, 102, 102, 102, 102, 0]  # prompt 3 + response 4
    assert gen.response_mask.sum(-1).tolist() == [4, 4, 5, 5]
    assert scored.counts == {"ok": 8}
    assert info["rollout/dynamic_sampling_tries"] == 2 and info["rollout/dynamic_sampling_dropped_groups"] == 2
    assert info["rollout/dynamic_sampling_unfilled"] == 0


def test_dynamic_sampling_gives_up_after_max_tries_and_counts(make_config):
    config = _options(make_config, "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_max_tries=2")
    fake = FakeRounds([[1, 1, 0, 0], [0, 1, 1, 1]])
    gen, _, rewards, info = groups.collect_groups(fake, config, pad_id=0)
    assert len(fake.calls) == 2 and len(gen.texts) == 4
    assert rewards.tolist() == [0, 1, 1, 1]  # the kept group, then the last dropped one
    assert info["rollout/dynamic_sampling_unfilled"] == 1


def test_overlong_penalty_is_added_before_the_equal_reward_filter(make_config):
    """Equal raw scores with different lengths in the buffer are not an equal group any more."""
    config = _options(make_config, "rollout.max_new_tokens=8", "algorithm.overlong_buffer_len=4",
                      "algorithm.dynamic_sampling=true")

    def one_round(n):
        gen = _gen(2, [4, 6, 3, 3], 0, 8)  # group 1: lengths 4 and 6 -> penalties 0, -0.5; group 2: equal
        return gen, RewardBatch([1.0] * 4, [True] * 4, [True] * 4, {})

    gen, _, rewards, info = groups.collect_groups(one_round, config, pad_id=0)
    assert rewards.tolist() == [1.0, 0.5, 1.0, 0.5]
    assert info["rollout/dynamic_sampling_tries"] == 2
    assert info["rollout/overlong_penalty_mean"] == pytest.approx(-0.125)


def test_mask_truncated_completions_zeroes_their_rows(make_config, tiny_testbed):
    from stalerl.data.prompts import PromptSampler, build_prompts
    from stalerl.rewards.reward import build_reward_fn
    from stalerl.rollout.batch import make_rollout_batch
    from stalerl.training.loop import load_policy

    config = make_config("rollout.max_new_tokens=3", "algorithm.mask_truncated_completions=true")
    model, tokenizer, _ = load_policy(config, progress=False)
    prompts, _ = build_prompts("testbed", split="train", size=8, tokenizer=tokenizer, data_config=config.data, seed=0)
    torch.manual_seed(0)
    batch = make_rollout_batch(config, model, tokenizer, PromptSampler(prompts, 0), build_reward_fn(config.reward), 0, False)
    lengths = batch.attention_mask[:, -3:].sum(-1)
    truncated = (lengths == 3) & (batch.input_ids[:, -1] != tokenizer.eos_token_id)
    assert truncated.any()
    assert batch.response_mask[truncated].sum() == 0
    assert (batch.response_mask[~truncated].sum(-1) == lengths[~truncated]).all()
    assert batch.info["rollout/truncated_frac"] == truncated.float().mean().item()


def _parity_reward(completions, answers):
    """All-equal rewards for prompts with an even answer (those groups get dropped), varied otherwise."""
    return [0.0 if int(a) % 2 == 0 else sum(ch.isdigit() for ch in c) / max(len(c), 1)
            for c, a in zip(completions, answers, strict=True)]


def test_dynamic_sampling_in_a_stale_run_keeps_the_generating_version(make_config):
    run = train(make_config("steps=4", "stale.staleness=2", "algorithm.dynamic_sampling=true", "data.eval_size=0",
                            f"reward.function={Path(__file__).resolve()}:_parity_reward")).run_dir
    steps = _steps(run)[1:]
    _assert_keys_listed(run)
    assert sum(s["rollout/dynamic_sampling_dropped_groups"] for s in steps) > 0
    assert all(s["rollout/zero_variance_group_frac"] == 0 for s in steps)
    for s in steps:
        first = (s["step"] - 1) * 2
        assert s["train/data_policy_version"] == expected_policy_version(first, 2)


# ============================================================================ data formats and rewards

def _verl_rows():
    return [
        {"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
         "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
         "extra_info": {"split": "train", "index": i}}
        for i in range(3)
    ]


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_parquet_layout_with_dotted_answer_field(tmp_path):
    from stalerl.data.loading import load_prompts

    path = _write_parquet(tmp_path / "train.parquet", _verl_rows())
    rows = load_prompts(str(path), question_field="prompt", answer_field="reward_model.ground_truth", with_extra=True)
    assert rows[1]["prompt_question"] == [{"role": "user", "content": "What is 1+1?"}]
    assert rows[1]["answer"] == "2"
    assert rows[1]["extra"]["data_source"] == "openai/gsm8k"
    assert rows[1]["extra"]["extra_info"] == {"split": "train", "index": 1}
    with pytest.raises(ValueError, match=r"train.parquet, row 1: field 'reward_model.answer' is missing"):
        load_prompts(str(path), question_field="prompt", answer_field="reward_model.answer")


def test_chat_messages_get_the_system_prompt_and_the_chat_template(tmp_path, tiny_testbed):
    from transformers import AutoTokenizer

    from stalerl.data.prompts import build_prompts
    from stalerl.training.config import DataConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_testbed)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    path = _write_parquet(tmp_path / "train.parquet", _verl_rows())
    data = DataConfig(question_field="prompt", answer_field="reward_model.ground_truth", system_prompt="Be brief.")
    prompts, skipped = build_prompts(str(path), split="train", size=None, tokenizer=tokenizer, data_config=data, seed=0)
    assert skipped == 0
    assert prompts[0].text == "<system>Be brief.<user>What is 0+1?<assistant>"
    assert prompts[0].extra["data_source"] == "openai/gsm8k"
    # a string question with chat_template=true gets the system message too
    text = (tmp_path / "q.jsonl")
    text.write_text(json.dumps({"problem": "2+2?", "answer": 4}) + "\n")
    data = DataConfig(template="plain", chat_template=True, system_prompt="S")
    prompts, _ = build_prompts(str(text), split="train", size=None, tokenizer=tokenizer, data_config=data, seed=0)
    assert prompts[0].text == "<system>S<user>2+2?<assistant>"


def test_a_directory_of_files_loads_with_datasets_and_keeps_line_errors(tmp_path):
    from stalerl.data.loading import DatasetError, load_prompts

    folder = tmp_path / "data"
    folder.mkdir()
    _write_parquet(folder / "a.parquet", _verl_rows()[:2])
    (folder / "b.jsonl").write_text(json.dumps(_verl_rows()[2]) + "\n")
    rows = load_prompts(str(folder), question_field="prompt", answer_field="reward_model.ground_truth")
    assert [r["answer"] for r in rows] == ["1", "2", "3"]
    assert [Path(r["source"]).name for r in rows] == ["a.parquet", "a.parquet", "b.jsonl"]
    assert len(load_prompts(str(folder / "*.parquet"), question_field="prompt",
                            answer_field="reward_model.ground_truth")) == 2
    (folder / "c.jsonl").write_text(json.dumps(_verl_rows()[0]) + '\n{"prompt": \n')
    with pytest.raises(DatasetError, match=r"c.jsonl, line 2: malformed JSON"):
        load_prompts(str(folder), question_field="prompt", answer_field="reward_model.ground_truth")


def test_user_reward_signatures(tmp_path):
    completions, answers = ["a", "b"], ["1", "2"]
    prompts, extras = ["p1", "p2"], [{"data_source": "s1", "extra_info": {"k": 1}}, {"data_source": "s2"}]
    seen = {}

    def trl_style(prompts, completions, data_source, **kwargs):
        seen["trl"] = (prompts, completions, data_source, sorted(kwargs))
        return [1.0, 0.0]

    def verl_style(data_source, solution_str, ground_truth, extra_info=None):
        seen.setdefault("verl", []).append((data_source, solution_str, ground_truth, extra_info))
        return {"score": float(ground_truth)}

    def old_style(c, a):
        return [0.5] * len(c)

    out = UserReward(trl_style, "trl")(completions, answers, prompts=prompts, extras=extras)
    assert out.scores == [1.0, 0.0]
    assert seen["trl"] == (prompts, completions, ["s1", "s2"], ["answers", "extra_info", "extras"])
    assert UserReward(verl_style, "verl")(completions, answers, prompts=prompts, extras=extras).scores == [1.0, 2.0]
    assert seen["verl"] == [("s1", "a", "1", {"k": 1}), ("s2", "b", "2", None)]
    assert UserReward(old_style, "old")(completions, answers, prompts=prompts, extras=extras).scores == [0.5, 0.5]


# ============================================================================ W&B, export

def _wandb_records(run_dir: Path) -> list:
    """The protobuf records of the offline run's ``.wandb`` file (a LevelDB-style log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, buf, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record or the last fragment of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _wandb_history(run_dir: Path, wait_s: float = 60.0) -> dict[int, dict]:
    """History rows by step, once the run's ``exit`` record is on disk (wandb's service process
    writes the file; on a loaded machine it can lag behind ``finish()``)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(run_dir)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    rows: dict[int, dict] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            rows.setdefault(record.history.step.num, {}).update(items)
    assert rows, f"no history records in the offline W&B run; records: {kinds}"
    return rows


def test_wandb_offline_gets_the_jsonl_metrics(make_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(make_config("steps=2", "stale.staleness=0", "logger=[wandb]", "data.eval_size=0")).run_dir
    history = _wandb_history(run)
    steps = _steps(run)
    assert sorted(history) == [r["step"] for r in steps] == [0, 1, 2]
    for record in steps[1:]:
        logged = history[record["step"]]
        for key in ("rollout/reward_mean", "train/grad_norm", "train/lr", "actor/pg_clipfrac"):
            assert logged[key] == pytest.approx(record[key])
    assert not (run / "tensorboard").exists()


def test_export_writes_a_directory_transformers_loads(make_config, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train(make_config("steps=2", "stale.staleness=0", "checkpoint_every=1", "keep_checkpoints=3",
                            "data.eval_size=4")).run_dir
    out = tmp_path / "exported"
    assert cli_main(["export", str(run), "--step", "1", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".json") == ["README.md", "model.safetensors"]
    assert not (out / "state.pt").exists()
    card = (out / "README.md").read_text()
    assert "step 1" in card and "objective.name" not in card and "name: m2po" in card
    assert "eval/accuracy" in card or "eval_accuracy_final" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Q: 1+1=? A: ", return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > ids.shape[1]
    from safetensors.torch import load_file

    saved = load_file(run / "checkpoints" / "step_000001" / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], exported[k]) for k in saved)
    capsys.readouterr()
    assert cli_main(["export", str(run), "--step", "7", str(tmp_path / "x")]) == 2
    assert "no checkpoint of step 7" in capsys.readouterr().err
