"""``stalerl train --help-config [KEY]``: every config key with its type, default and docstring.

The text comes from the config dataclasses themselves (:mod:`stalerl.training.config`): the type
from the annotation (a ``Literal`` lists its choices), the default from the field, and the help
from the string literal written right under the field, read from the source with :mod:`ast`.
Nothing is written twice, so the help cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from typing import Any, Literal

from stalerl.training.config import ConfigError, TrainConfig

__all__ = ["field_docs", "config_rows", "config_help", "format_type"]


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (``""`` where none)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, [*body[1:], None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = ""
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                        and isinstance(after.value.value, str):
                    doc = inspect.cleandoc(after.value.value)
                docs[node.target.id] = doc
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def format_type(tp: Any) -> str:
    """A type as a user reads it: ``float``, ``int | None``, ``list[int]``, ``'sync' | 'async'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(format_type(a) for a in args)
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(format_type(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def config_rows(cls: type = TrainConfig, prefix: str = "") -> list[dict[str, Any]]:
    """One row per key: ``key``, ``type``, ``default`` and ``doc``, sections in declaration order."""
    rows: list[dict[str, Any]] = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += config_rows(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append({"key": prefix + f.name, "type": format_type(tp), "default": default, "doc": docs[f.name]})
    return rows


def _sections(cls: type = TrainConfig) -> dict[str, str]:
    """Section name -> the first line of its class docstring."""
    hints = typing.get_type_hints(cls)
    return {f.name: inspect.cleandoc(hints[f.name].__doc__ or "").splitlines()[0]
            for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def _plain(doc: str) -> str:
    """Sphinx markup as plain text: ``x`` and :mod:`x` become x."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", doc.replace("``", ""))


def config_help(key: str | None = None) -> str:
    """The help text of every key, of one section (``optim``) or of one key (``optim.lr``).

    >>> print(config_help("stale.mode").splitlines()[1])
      stale.mode: 'sync' | 'async' = 'sync'
    """
    rows = config_rows()
    sections = _sections()
    if key:
        rows = [r for r in rows if r["key"] == key or r["key"].startswith(key + ".")]
        if not rows:
            top = [r["key"] for r in config_rows() if "." not in r["key"]]
            raise ConfigError(
                f"--help-config {key!r}: no such section or key; sections: {', '.join(sections)}; "
                f"top-level keys: {', '.join(top)}"
            )
    lines: list[str] = []
    current = None
    for row in rows:
        section = row["key"].split(".")[0] if "." in row["key"] else ""
        if section != current:
            current = section
            if lines:
                lines.append("")
            lines.append(f"[{section}] {_plain(sections[section])}" if section else "[top level] Run-wide keys.")
        lines.append(f"  {row['key']}: {row['type']} = {row['default']!r}")
        for line in _plain(row["doc"]).splitlines():
            lines.append(f"      {line}")
    return "\n".join(lines)
