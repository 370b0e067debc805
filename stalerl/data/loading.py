"""Loading question/answer sets (training prompts and benchmarks) from local files or the Hub.

Every loader returns plain rows ``{"prompt_question": str, "answer": str, "source": str,
"index": int}``; the prompt text itself is built later by
:func:`stalerl.data.templates.format_prompt`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterable, Iterator

from stalerl.errors import UserError

__all__ = ["DatasetError", "KNOWN_DATASETS", "load_prompts", "LOCAL_SUFFIXES"]

#: Local file types :func:`load_prompts` reads.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

#: Hub datasets with known field names and default split.
KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "HuggingFaceH4/MATH-500": {"question_field": "problem", "answer_field": "answer", "split": "test"},
    "HuggingFaceH4/aime_2024": {"question_field": "problem", "answer_field": "answer", "split": "train"},
    "agentica-org/DeepScaleR-Preview-Dataset": {
        "question_field": "problem",
        "answer_field": "answer",
        "split": "train",
    },
}


class DatasetError(UserError):
    """A data set could not be loaded or has malformed rows; the message says where."""


def _where(path: str, kind: str, number: int) -> str:
    return f"{path}, {kind} {number}"


def field_value(record: dict[str, Any], path: str) -> tuple[bool, Any]:
    """``(found, value)`` of a field given by a dotted path (``reward_model.ground_truth``)."""
    node: Any = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_messages(value: Any) -> bool:
    """A non-empty list of chat messages ``{"role": ..., "content": ...}`` (verl's ``prompt``)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def _make_row(
    record: Any,
    *,
    where: str,
    question_field: str,
    answer_field: str,
    source: str,
    index: int,
    with_extra: bool = False,
) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object (a mapping of fields), got {type(record).__name__}")
    fields = sorted(record)
    values = {}
    for name in (question_field, answer_field):
        found, value = field_value(record, name)
        if not found or value is None:
            what = "is missing" if not found else "is null"
            raise DatasetError(
                f"{where}: field {name!r} {what}; the row has fields {fields}. "
                "Pass question_field=/answer_field= to choose other fields (a dotted path such as "
                "reward_model.ground_truth reaches a nested one)."
            )
        values[name] = value
    question = values[question_field]
    if isinstance(question, list):
        if not _is_messages(question):
            raise DatasetError(
                f"{where}: field {question_field!r} is a list but not chat messages "
                "(a list of {'role': ..., 'content': ...} mappings)"
            )
        question = [{"role": m["role"], "content": m["content"]} for m in question]
    elif not isinstance(question, str):
        raise DatasetError(
            f"{where}: field {question_field!r} must be a string or a list of chat messages, "
            f"got {type(question).__name__}"
        )
    elif not question.strip():
        raise DatasetError(f"{where}: field {question_field!r} is empty")
    answer = values[answer_field]
    if isinstance(answer, (dict, list)):
        raise DatasetError(
            f"{where}: field {answer_field!r} must be a string or a number, got {type(answer).__name__}"
        )
    answer = str(answer)  # numbers in JSON / Parquet become strings
    row = {"prompt_question": question, "answer": answer, "source": source, "index": index}
    if with_extra:  # the row's other fields, for reward functions (verl's data_source, extra_info)
        top = question_field.split(".")[0]
        row["extra"] = {k: v for k, v in record.items() if k != top}
    return row


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path}, line {lineno}: not UTF-8 text (byte {exc.start}); "
                                   "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path}, line {lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            except RecursionError:
                raise DatasetError(f"{path}, line {lineno}: the JSON value is nested too deeply to be a row") from None


def _json_records(path: str) -> tuple[str, Iterable[tuple[int, Any]]]:
    """Records of a ``.json`` file: a list of objects, an object holding one such list, or
    JSON lines (what ``datasets`` writes with ``to_json``). Returns (kind, (number, record))."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except RecursionError:
        raise DatasetError(f"{path}: the JSON value is nested too deeply to hold rows") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: JSON lines
            return "line", list(_iter_jsonl(path))
        raise DatasetError(
            f"{path}, line {exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
        ) from exc
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
        else:
            raise DatasetError(
                f"{path}: expected a list of objects (or an object holding exactly one list), "
                f"got an object with keys {sorted(data)[:20]}"
            )
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of objects, got {type(data).__name__}")
    return "row", [(i + 1, rec) for i, rec in enumerate(data)]


def _parquet_records(path: str) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read Parquet ({type(exc).__name__}: {exc})") from exc
    return [(i + 1, rec) for i, rec in enumerate(table.to_pylist())]


def _load_local(
    path: str, question_field: str, answer_field: str, limit: int | None, with_extra: bool = False
) -> list[dict[str, Any]]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        if os.path.getsize(path) == 0:
            raise DatasetError(f"{path}: the file is empty")
        kind, records = "line", _iter_jsonl(path)
    elif suffix == ".json":
        kind, records = _json_records(path)
    elif suffix == ".parquet":
        kind, records = "row", _parquet_records(path)
    else:
        raise DatasetError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {list(LOCAL_SUFFIXES)}"
        )
    rows: list[dict[str, Any]] = []
    for index, (number, record) in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(
            _make_row(
                record,
                where=_where(path, kind, number),
                question_field=question_field,
                answer_field=answer_field,
                source=path,
                index=index,
                with_extra=with_extra,
            )
        )
    if not rows and limit != 0:
        raise DatasetError(f"{path}: the file has no rows")
    return rows


def _load_hub(
    name: str, split: str | None, question_field: str, answer_field: str, limit: int | None,
    with_extra: bool = False,
) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DatasetError(f"loading {name!r} by name needs the 'datasets' package") from exc
    split = split or KNOWN_DATASETS.get(name, {}).get("split")
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DatasetError(
            f"could not load dataset {name!r} (split {split!r}) with datasets.load_dataset: "
            f"{type(exc).__name__}: {str(exc)[:300]}. If this machine is offline, download it "
            "once elsewhere (e.g. datasets.load_dataset(...).to_json('data.jsonl')) and pass the "
            "local .jsonl/.json/.parquet file instead."
        ) from exc
    if isinstance(ds, dict):  # DatasetDict (no split given)
        if len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DatasetError(f"dataset {name!r} has splits {sorted(ds)}; pass split=")
    rows: list[dict[str, Any]] = []
    for index, record in enumerate(ds):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(
            _make_row(
                record,
                where=f"{name} (split {split!r}), row {index + 1}",
                question_field=question_field,
                answer_field=answer_field,
                source=name,
                index=index,
                with_extra=with_extra,
            )
        )
    if not rows and limit != 0:
        raise DatasetError(f"dataset {name!r} (split {split!r}) has no rows")
    return rows


def load_prompts(
    source: str,
    *,
    split: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    with_extra: bool = False,
) -> list[dict[str, Any]]:
    """Load question/answer rows from a local file or a ``datasets`` Hub name.

    Args:
        source: a path to a ``.jsonl`` (one JSON object per line; blank lines skipped),
            ``.json`` (a list of objects, an object holding one such list, or JSON lines) or
            ``.parquet`` file; otherwise a Hub name loaded with
            ``datasets.load_dataset(source, split=split)`` (needs network or a warm cache).
        split: the Hub split; for the names in :data:`KNOWN_DATASETS` it defaults to their
            usual split (MATH-500: ``test``, AIME 2024 and DeepScaleR: ``train``). Ignored for
            local files.
        question_field: the field holding the problem text; default ``"problem"`` (or the
            :data:`KNOWN_DATASETS` entry of a known name).
        answer_field: the field holding the reference answer; default ``"answer"`` (idem).
            Numbers are converted to strings.
        limit: keep only the first ``limit`` rows.
        with_extra: also return each row's other fields as ``"extra"`` (every top-level field
            but the question's), for reward functions that take them.

    Both field names may be dotted paths into nested fields (verl's parquet layout:
    ``question_field="prompt"``, a list of chat messages, and
    ``answer_field="reward_model.ground_truth"``). ``source`` may also be a directory or a glob
    pattern of ``.jsonl``/``.json``/``.parquet`` files, read with ``datasets.load_dataset``
    (:func:`_load_files`).

    Returns:
        A list of ``{"prompt_question": str, "answer": str, "source": str, "index": int}``,
        ``index`` being the 0-based position of the row in the source; ``prompt_question`` is a
        list of ``{"role", "content"}`` messages where the question field holds chat messages.

    Raises:
        DatasetError: (a ``ValueError``) for a missing or empty file, an unsupported file
            type, a malformed JSONL line (with the file name and 1-based line number), a row
            missing a field (with the file, line/row, the missing field and the fields the row
            has), or a Hub name that could not be loaded (suggesting a local file).
    """
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")
    known = KNOWN_DATASETS.get(source, {})
    question_field = question_field or known.get("question_field", "problem")
    answer_field = answer_field or known.get("answer_field", "answer")
    src = os.path.expanduser(str(source))
    if os.path.isfile(src):
        return _load_local(src, question_field, answer_field, limit, with_extra)
    if os.path.isdir(src) or glob.has_magic(src):
        return _load_files(src, question_field, answer_field, limit, with_extra)
    if src.lower().endswith(LOCAL_SUFFIXES) or src.startswith((".", "/", "~")):
        raise DatasetError(f"{src}: no such file")
    return _load_hub(str(source), split, question_field, answer_field, limit, with_extra)


def _load_files(
    pattern: str, question_field: str, answer_field: str, limit: int | None, with_extra: bool
) -> list[dict[str, Any]]:
    """Rows of every data file of a directory or glob pattern, each file read with
    ``datasets.load_dataset("json" | "parquet", data_files=file)``; a file that ``datasets``
    cannot read is read again by stalerl's own reader, whose error names the file and line."""
    import datasets

    base = os.path.join(pattern, "*") if os.path.isdir(pattern) else pattern
    files = sorted(f for f in glob.glob(base) if f.lower().endswith(LOCAL_SUFFIXES) and os.path.isfile(f))
    if not files:
        raise DatasetError(f"{pattern}: no {'/'.join(LOCAL_SUFFIXES)} files there")
    rows: list[dict[str, Any]] = []
    for path in files:
        builder = "parquet" if path.lower().endswith(".parquet") else "json"
        try:
            ds = datasets.load_dataset(builder, data_files=path, split="train")
        except Exception as exc:
            _load_local(path, question_field, answer_field, None)  # raises the precise error, if it finds one
            raise DatasetError(f"{path}: datasets.load_dataset({builder!r}) failed: {type(exc).__name__}: {exc}") from exc
        for number, record in enumerate(ds, start=1):
            if limit is not None and len(rows) >= limit:
                return rows
            rows.append(_make_row(record, where=_where(path, "row", number), question_field=question_field,
                                  answer_field=answer_field, source=path, index=len(rows), with_extra=with_extra))
    if not rows and limit != 0:
        raise DatasetError(f"{pattern}: the files have no rows")
    return rows
