"""Lazy package exports: a package ``__init__`` names its public objects without importing the
modules that define them until first use (PEP 562 module ``__getattr__``).

A package writes::

    __getattr__, __dir__ = lazy_exports(__name__, {"train": "stalerl.training.loop"})

so that importing the package stays cheap: torch and transformers load when a name that needs
them is first used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``names[name]`` (a module path) on
    first access of ``name`` and cache the object in the package namespace."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            setattr(sys.modules[package], name, value)  # later look-ups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
