"""Prompts and benchmarks: loading question/answer rows and formatting prompts.

* :func:`load_prompts` -- rows ``{"prompt_question", "answer", "source", "index"}`` from a local
  ``.jsonl``/``.json``/``.parquet`` file or a ``datasets`` Hub name (:data:`KNOWN_DATASETS`).
* :func:`format_prompt` / :data:`M2PO_TEMPLATE` -- the M2PO paper's question template, plain or
  custom templates, optionally wrapped in a tokenizer's chat template.
"""

from stalerl.data.loading import KNOWN_DATASETS, LOCAL_SUFFIXES, DatasetError, load_prompts
from stalerl.data.templates import M2PO_TEMPLATE, PLAIN_TEMPLATE, TEMPLATES, format_prompt

__all__ = [
    "load_prompts",
    "DatasetError",
    "KNOWN_DATASETS",
    "LOCAL_SUFFIXES",
    "format_prompt",
    "M2PO_TEMPLATE",
    "PLAIN_TEMPLATE",
    "TEMPLATES",
]
