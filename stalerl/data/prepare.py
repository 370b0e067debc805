"""``stalerl data prepare``: verl-format Parquet from a local JSONL/JSON/Parquet file or a ``datasets`` name.

Each output row is what verl's ``RLHFDataset`` and reward loop read (verl's
``examples/data_preprocess`` layout)::

    prompt        [{"role": "user", "content": <question in the M2PO template>}]   (chat messages)
    data_source   the source name (e.g. "agentica-org/DeepScaleR-Preview-Dataset"), or --data-source
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": <reference answer, a string>}
    extra_info    {"index": <row in the source>, "split": ..., "question": <raw question>, "repeat": r}

The question goes through :func:`stalerl.data.templates.format_prompt` (``--template m2po``: the
M2PO paper's question template). verl always applies the tokenizer's chat template to ``prompt``:
for an instruct model that is the model's own template (the chat template stalerl uses with
``data.chat_template=true``); for a base model (the papers' Qwen3-Base) pass
``actor_rollout_ref.model.custom_chat_template`` = :data:`PLAIN_CHAT_TEMPLATE` so the prompt is the
template text alone, as ``stalerl train`` gives a base model.

``--repeat N`` writes every row N times (``extra_info.repeat`` = 0..N-1): with verl's single
``val_kwargs.n`` = 4, an AIME file repeated 4 times yields 16 samples per problem, so verl's
``val-core/<source>/acc/mean@4`` of that file is exactly the M2PO paper's AIME avg@16 while the
other benchmarks get avg@4.

Errors name the file and row (from :func:`stalerl.data.loading.load_prompts`).
"""

from __future__ import annotations

import os
from typing import Any

from stalerl.data.loading import DatasetError, load_prompts
from stalerl.data.templates import format_prompt

__all__ = ["PLAIN_CHAT_TEMPLATE", "prepare_verl", "verl_rows"]

PLAIN_CHAT_TEMPLATE = "{{ messages[0].content }}"
"""A pass-through chat template for base models (``actor_rollout_ref.model.custom_chat_template``)."""


def verl_rows(
    rows: list[dict[str, Any]],
    *,
    template: str = "m2po",
    data_source: str | None = None,
    split: str = "train",
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """verl rows (module docstring) for the question/answer rows of :func:`load_prompts`."""
    if repeat < 1:
        raise DatasetError(f"--repeat must be >= 1, got {repeat}")
    out = []
    for row in rows:
        content = format_prompt(row["prompt_question"], template)
        for r in range(repeat):
            out.append({
                "data_source": data_source or row["source"],
                "prompt": [{"role": "user", "content": content}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": row["answer"]},
                "extra_info": {"index": row["index"], "split": split, "question": row["prompt_question"], "repeat": r},
            })
    return out


def prepare_verl(
    source: str,
    output: str,
    *,
    split: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    template: str = "m2po",
    data_source: str | None = None,
    repeat: int = 1,
) -> int:
    """Write ``output`` (a ``.parquet`` file) in verl's format; returns the number of rows written."""
    if not str(output).endswith(".parquet"):
        raise DatasetError(f"--out {output}: the output must be a .parquet file")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = load_prompts(source, split=split, question_field=question_field, answer_field=answer_field, limit=limit)
    out = verl_rows(rows, template=template, data_source=data_source, split=split or "train", repeat=repeat)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out), output)
    return len(out)


def main(args) -> int:
    """``stalerl data prepare`` (arguments from :func:`add_arguments`)."""
    n = prepare_verl(
        args.source, args.out, split=args.split, question_field=args.question_field, answer_field=args.answer_field,
        limit=args.limit, template=args.template, data_source=args.data_source, repeat=args.repeat,
    )
    print(f"wrote {n} rows to {args.out}")
    return 0


def add_arguments(p) -> None:
    """The arguments of ``stalerl data prepare``."""
    p.add_argument("source", help="a .jsonl/.json/.parquet file or a datasets name (e.g. agentica-org/DeepScaleR-Preview-Dataset)")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--split", default=None, help="datasets split (default: the known dataset's usual split)")
    p.add_argument("--question-field", default=None, help="field with the problem text (default: problem)")
    p.add_argument("--answer-field", default=None, help="field with the reference answer (default: answer)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N rows")
    p.add_argument("--template", default="m2po", help="m2po (the M2PO paper's), plain, or a format string with {question}")
    p.add_argument("--data-source", default=None, help="data_source written in every row (default: the source name)")
    p.add_argument("--repeat", type=int, default=1, help="write every row N times (AIME: 4, for avg@16 with val n=4)")
