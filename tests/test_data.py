"""Tests of stalerl.data: prompt loading from files / Hub names, and prompt templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stalerl.data import (
    KNOWN_DATASETS,
    M2PO_TEMPLATE,
    DatasetError,
    format_prompt,
    load_prompts,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- loading


def test_load_jsonl_fixture():
    rows = load_prompts(str(FIXTURES / "tiny_math.jsonl"))
    assert len(rows) == 4
    assert rows[0] == {
        "prompt_question": "What is $1+1$?",
        "answer": "2",
        "source": str(FIXTURES / "tiny_math.jsonl"),
        "index": 0,
    }
    assert rows[1]["answer"] == "0.5"  # a JSON number becomes a string
    assert rows[2]["answer"] == r"\frac{1}{2}"
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert all(isinstance(r["answer"], str) for r in rows)


def test_load_limit_and_custom_fields(tmp_path):
    p = _write_jsonl(
        tmp_path / "q.jsonl",
        [json.dumps({"question": f"q{i}", "solution": i}) for i in range(5)] + ["{not json"],
    )
    rows = load_prompts(str(p), question_field="question", answer_field="solution", limit=3)
    assert [(r["prompt_question"], r["answer"]) for r in rows] == [("q0", "0"), ("q1", "1"), ("q2", "2")]
    assert load_prompts(str(p), question_field="question", answer_field="solution", limit=0) == []


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = _write_jsonl(
        tmp_path / "bad.jsonl",
        [json.dumps({"problem": "a", "answer": "1"}), "", '{"problem": "b", "answer": '],
    )
    with pytest.raises(DatasetError) as ei:
        load_prompts(str(p))
    msg = str(ei.value)
    assert "bad.jsonl" in msg and "line 3" in msg
    assert isinstance(ei.value, ValueError)


def test_missing_field_names_file_line_field_and_existing_fields(tmp_path):
    p = _write_jsonl(
        tmp_path / "missing.jsonl",
        [json.dumps({"problem": "a", "answer": "1"}), json.dumps({"problem": "b", "solution": "2"})],
    )
    with pytest.raises(DatasetError) as ei:
        load_prompts(str(p))
    msg = str(ei.value)
    assert "missing.jsonl" in msg and "line 2" in msg
    assert "'answer'" in msg and "problem" in msg and "solution" in msg


def test_non_object_line(tmp_path):
    p = _write_jsonl(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(DatasetError, match="line 1"):
        load_prompts(str(p))


def test_empty_files(tmp_path):
    for name in ("empty.jsonl", "empty.json"):
        p = tmp_path / name
        p.write_text("", encoding="utf-8")
        with pytest.raises(DatasetError, match="empty"):
            load_prompts(str(p))
    p = tmp_path / "blank.jsonl"
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no rows"):
        load_prompts(str(p))


def test_load_json_variants(tmp_path):
    recs = [{"problem": "a", "answer": 1}, {"problem": "b", "answer": "x"}]
    p1 = tmp_path / "list.json"
    p1.write_text(json.dumps(recs))
    p2 = tmp_path / "wrapped.json"
    p2.write_text(json.dumps({"data": recs}))
    p3 = tmp_path / "lines.json"  # what datasets' to_json writes
    p3.write_text("\n".join(json.dumps(r) for r in recs))
    for p in (p1, p2, p3):
        rows = load_prompts(str(p))
        assert [(r["prompt_question"], r["answer"]) for r in rows] == [("a", "1"), ("b", "x")]
    p4 = tmp_path / "bad.json"
    p4.write_text('[{"problem": "a", "answer": 1},\n {"problem": "b" "answer": 2}]')
    with pytest.raises(DatasetError, match=r"bad\.json, line 2"):
        load_prompts(str(p4))
    p5 = tmp_path / "missing.json"
    p5.write_text(json.dumps([{"problem": "a", "answer": 1}, {"problem": "b"}]))
    with pytest.raises(DatasetError, match=r"missing\.json, row 2.*'answer'"):
        load_prompts(str(p5))


def test_load_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    p = tmp_path / "bench.parquet"
    pd.DataFrame({"problem": ["p0", "p1", "p2"], "answer": [3, 4, 5], "level": [1, 2, 3]}).to_parquet(p)
    rows = load_prompts(str(p), limit=2)
    assert rows == [
        {"prompt_question": "p0", "answer": "3", "source": str(p), "index": 0},
        {"prompt_question": "p1", "answer": "4", "source": str(p), "index": 1},
    ]
    with pytest.raises(DatasetError) as ei:
        load_prompts(str(p), answer_field="solution")
    msg = str(ei.value)
    assert "bench.parquet" in msg and "row 1" in msg and "'solution'" in msg and "level" in msg


def test_parquet_fixture():
    rows = load_prompts(str(FIXTURES / "tiny_math.parquet"))
    assert [r["answer"] for r in rows] == ["2", "0.5", r"\frac{1}{2}", "11"]


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    p = tmp_path / "data.csv"
    p.write_text("problem,answer\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_prompts(str(p))
    with pytest.raises(ValueError):
        load_prompts(str(FIXTURES / "tiny_math.jsonl"), limit=-1)


def test_hub_name_offline_error(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(name, split=None, **kw):
        calls["args"] = (name, split)
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DatasetError) as ei:
        load_prompts("HuggingFaceH4/MATH-500")
    msg = str(ei.value)
    assert "HuggingFaceH4/MATH-500" in msg and "could not load" in msg and ".jsonl" in msg
    assert calls["args"] == ("HuggingFaceH4/MATH-500", "test")  # the known default split


def test_hub_name_loaded(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_list([{"problem": "p", "answer": 7, "id": 0}])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, **kw: ds)
    rows = load_prompts("HuggingFaceH4/aime_2024")
    assert rows == [{"prompt_question": "p", "answer": "7", "source": "HuggingFaceH4/aime_2024", "index": 0}]
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split=None, **kw: datasets.DatasetDict({"a": ds, "b": ds})
    )
    with pytest.raises(DatasetError, match="splits"):
        load_prompts("someone/unknown")


def test_known_datasets():
    for name in ("HuggingFaceH4/MATH-500", "HuggingFaceH4/aime_2024", "agentica-org/DeepScaleR-Preview-Dataset"):
        assert KNOWN_DATASETS[name]["question_field"] == "problem"
        assert KNOWN_DATASETS[name]["answer_field"] == "answer"


# ---------------------------------------------------------------------------------- templates


def test_m2po_template_text():
    # The question template of the M2PO paper (Prosperity before Collapse, App. B), as printed there
    # modulo its typographic apostrophe and the code quotes around its placeholders.
    paper = ("Please solve the following math problem: {{Question Description}}. The assistant first thinks about "
             "the reasoning process step by step and then provides the user with the answer. Return the final "
             "answer in \\boxed{} tags, for example \\boxed{1}. Let's solve this step by step.")
    expected = (
        "Please solve the following math problem: What is 2+3?. The assistant first thinks about "
        "the reasoning process step by step and then provides the user with the answer. Return "
        "the final answer in \\boxed{} tags, for example \\boxed{1}. Let's solve this step by step."
    )
    assert format_prompt("What is 2+3?") == expected
    assert format_prompt("What is 2+3?", "m2po") == expected
    assert "{question}" in M2PO_TEMPLATE
    assert expected.replace("What is 2+3?", "{{Question Description}}") == paper


def test_plain_and_custom_templates():
    assert format_prompt("Q", "plain") == "Q"
    assert format_prompt("Q", "Problem: {question}\nAnswer in \\boxed{{}}.") == "Problem: Q\nAnswer in \\boxed{}."
    with pytest.raises(ValueError, match="unknown template"):
        format_prompt("Q", "nonexistent")
    with pytest.raises(ValueError, match="format string"):
        format_prompt("Q", "{question} and {other}")


class _ChatTok:
    name_or_path = "fake/chat"
    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        assert add_generation_prompt is True and tokenize is False
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


class _BaseTok:
    name_or_path = "fake/base"
    chat_template = None


def test_chat_wrapping():
    out = format_prompt("Q", "plain", tokenizer=_ChatTok(), chat=True)
    assert out == "<|user|>Q<|assistant|>"
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt("Q", tokenizer=_BaseTok(), chat=True)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        format_prompt("Q", chat=True)
    assert format_prompt("Q", "plain", tokenizer=_BaseTok(), chat=False) == "Q"


def test_chat_wrapping_real_tokenizer():
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt("Q", tokenizer=fast, chat=True)
    fast.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    assert format_prompt("Q", "plain", tokenizer=fast, chat=True) == "[user]Q[assistant]"
