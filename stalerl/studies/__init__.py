"""The seed papers' studies as data, and ``stalerl reproduce``.

* :data:`STUDIES` -- name -> :class:`Study` (conditions, the papers' claims and how the testbed
  checks each one, the paper's and the testbed's scale), in :mod:`stalerl.studies.definitions`.
* :func:`reproduce` -- run every condition of a study and write its verdicts, tables and figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalerl._lazy import lazy_exports
from stalerl.studies.definitions import STUDIES, Claim, Condition, Study

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from stalerl.studies.reproduce import reproduce

__getattr__, __dir__ = lazy_exports(__name__, {"reproduce": "stalerl.studies.reproduce"})

__all__ = ["STUDIES", "Study", "Condition", "Claim", "reproduce"]
