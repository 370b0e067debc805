"""docs/METRICS.md lists every key a run writes: a tiny run and every objective write only keys
that are in its tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from stalerl import objectives
from stalerl.training.logger import read_jsonl
from stalerl.training.loop import train

METRICS_MD = Path(__file__).resolve().parent.parent / "docs" / "METRICS.md"


def table_keys(text: str) -> list[str]:
    """The backticked first cell of every table row (``| `key` | meaning | unit |``)."""
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.M)


def listed(key: str, keys: list[str]) -> bool:
    """``key`` is in the table, directly or through a ``{placeholder}`` (one path component)."""
    for entry in keys:
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[a-z_]+\})", entry))
        if re.fullmatch(pattern, key):
            return True
    return False


KEYS = table_keys(METRICS_MD.read_text())


def test_listed_matches_placeholders_within_one_component():
    keys = ["eval/pass@{k}", "train/grad_norm"]
    assert listed("eval/pass@16", keys) and listed("train/grad_norm", keys)
    assert not listed("eval/pass@1/x", keys) and not listed("train/grad_norm_max", keys)


def test_table_has_each_key_once_and_known_namespaces():
    assert len(KEYS) == len(set(KEYS)) and len(KEYS) > 60
    namespaces = {k.split("/")[0] + "/" for k in KEYS if "/" in k}
    assert namespaces == {"rollout/", "train/", "actor/", "eval/", "timing_s/", "perf/", "data/"}


#: Shares not spelled ``_frac`` (docs/METRICS.md, "How a key is built"): verl's names, the accuracy
#: estimators named as in the papers' tables, and AC-MIS-PO's acceptance target (a setting).
SHARES_NAMED_OTHERWISE = {"actor/pg_clipfrac", "actor/pg_clipfrac_lower", "rollout/accuracy", "eval/accuracy",
                          "eval/avg@{n}", "eval/maj@{n}", "eval/pass@{k}", "actor/accept_target"}


def test_table_keys_follow_the_grammar():
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([^|]+?) \|$", METRICS_MD.read_text(), flags=re.M)
    units = {key: unit for key, unit in rows if "/" in key}
    assert len(units) > 60
    for key, unit in units.items():
        assert re.fullmatch(r"[a-z_]+/[a-z0-9_@{}]+", key), key
        assert not key.endswith(("_rate", "_fraction", "_count", "_avg", "_sec", "_ms")), key
        assert (unit == "seconds") == key.startswith("timing_s/"), key  # time's unit in its namespace only
        if unit == "fraction" and key not in SHARES_NAMED_OTHERWISE:
            assert key.endswith("_frac"), key


def test_tiny_run_writes_only_listed_keys(make_config):
    # math-verify reward (the rollout/count_* keys), staleness 2, evaluation every step, and a NaN
    # at update 3 that ends the run in step 2 (the crash event's keys)
    nan_objective = Path(__file__).parent / "fixtures" / "nan_objective.py"
    result = train(make_config("steps=3", "stale.staleness=2", "eval.every=1", "reward.function=null",
                               f"objective.name={nan_objective}:NaNAtUpdates", "objective.hparams={nan_from: 3}",
                               "optim.max_nonfinite_in_row=1"))
    assert result.crashed_at == 2
    written = {}
    for name in ("metrics.jsonl", "updates.jsonl", "diagnostics.jsonl", "events.jsonl"):
        for record in read_jsonl(result.run_dir / name):
            written.update(dict.fromkeys(record, name))
    assert {"rollout/count_ok", "eval/pass@1", "actor/pg_clipfrac", "train/staleness", "event", "reason"} <= set(written)
    assert written["event"] == "events.jsonl" and written["timing_s/step"] == "metrics.jsonl"
    assert {k: f for k, f in written.items() if not listed(k, KEYS)} == {}


@pytest.mark.parametrize("name", objectives.available(presets=True))
def test_every_objective_reports_only_listed_keys(name):
    gen = torch.Generator().manual_seed(0)
    old_log_prob = -torch.rand(6, 5, generator=gen)
    log_prob = old_log_prob + 0.3 * torch.randn(6, 5, generator=gen)
    rollout_log_prob = old_log_prob + 0.1 * torch.randn(6, 5, generator=gen)
    advantages, mask = torch.randn(6, generator=gen), torch.ones(6, 5)
    obj = objectives.build(name)
    stats = obj.batch_stats(log_prob, old_log_prob, advantages, mask, rollout_log_prob=rollout_log_prob)
    out = obj(log_prob, old_log_prob, advantages, mask, rollout_log_prob=rollout_log_prob, batch_stats=stats)
    assert out.metrics
    assert [k for k in out.metrics if not listed(k, KEYS)] == []
