"""docs/OBJECTIVES.md states each objective's and preset's defaults as the code has them.

The config dataclasses are the reference: the "defaults" column of the objectives table and the
"is" column of the presets table are generated from them, and the tests fail when the checked-in
tables differ. After changing a default, rewrite the two columns with::

    PYTHONPATH=. python tests/test_objectives_docs.py
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from stalerl import objectives
from stalerl.objectives.base import BatchStatsConfig, ObjectiveConfig

OBJECTIVES_MD = Path(__file__).resolve().parent.parent / "docs" / "OBJECTIVES.md"
ROW = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \| (?P<cells>.*) \|$", flags=re.M)


def value_text(value) -> str:
    """A default as a user writes it on the command line (floats to 6 significant digits)."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def own_defaults(config_class) -> dict[str, object]:
    """The config's defaults, less the shared ones (``loss_agg_mode``, ...) left at the base value."""
    base = {f.name: f.default for f in dataclasses.fields(BatchStatsConfig)}
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is dataclasses.MISSING:
            continue
        if f.name in base and f.default == base[f.name]:
            continue
        out[f.name] = f.default
    return out


def pairs_text(values: dict[str, object]) -> str:
    return ", ".join(f"`{k}={value_text(v)}`" for k, v in values.items()) or "—"


def objective_defaults_cell(name: str) -> str:
    return pairs_text(own_defaults(objectives.REGISTRY[name].config_class))


def preset_cell(name: str) -> str:
    base, overrides, _ = objectives.PRESETS[name]
    return f"`{base}` with {pairs_text(overrides)}"


def table_rows(text: str, header: str) -> list[tuple[str, list[str]]]:
    """``(name, cells)`` of the table that follows the line starting with ``header``."""
    lines = text[text.index(header):].splitlines()
    rows = []
    for line in lines[2:]:
        m = ROW.match(line)
        if m is None:
            break
        rows.append((m["name"], [c.strip() for c in m["cells"].split("|")]))
    return rows


OBJECTIVES_HEADER = "| name | objective | defaults | source |"
PRESETS_HEADER = "| preset | is | used by |"


def regenerate(text: str) -> str:
    """``text`` with the generated columns rewritten from the code."""
    out = []
    section = None
    for line in text.splitlines(keepends=True):
        if line.startswith(OBJECTIVES_HEADER):
            section = "objectives"
        elif line.startswith(PRESETS_HEADER):
            section = "presets"
        m = ROW.match(line.rstrip("\n"))
        if section and m is not None:
            cells = [c.strip() for c in m["cells"].split("|")]
            if section == "objectives":
                cells[1] = objective_defaults_cell(m["name"])
            else:
                cells[0] = preset_cell(m["name"])
            line = f"| `{m['name']}` | " + " | ".join(cells) + " |\n"
        elif section and not line.startswith("|"):
            section = None
        out.append(line)
    return "".join(out)


# ---------------------------------------------------------------------------------------------


def test_objectives_table_lists_every_objective_with_the_code_defaults():
    rows = table_rows(OBJECTIVES_MD.read_text(), OBJECTIVES_HEADER)
    assert [name for name, _ in rows] == list(objectives.REGISTRY)
    for name, cells in rows:
        assert cells[1] == objective_defaults_cell(name), f"{name}: docs/OBJECTIVES.md says {cells[1]}"


def test_presets_table_lists_every_preset_with_its_overrides():
    rows = table_rows(OBJECTIVES_MD.read_text(), PRESETS_HEADER)
    assert [name for name, _ in rows] == list(objectives.PRESETS)
    for name, cells in rows:
        assert cells[0] == preset_cell(name), f"{name}: docs/OBJECTIVES.md says {cells[0]}"


def test_generated_columns_are_checked_in():
    text = OBJECTIVES_MD.read_text()
    assert regenerate(text) == text


def test_own_defaults_drop_only_shared_fields_at_their_base_value():
    assert own_defaults(ObjectiveConfig) == {}
    gspo = own_defaults(objectives.REGISTRY["gspo"].config_class)
    assert gspo == {"loss_agg_mode": "seq-mean-token-mean", "epsilon_low": 3e-4, "epsilon_high": 4e-4}
    assert objective_defaults_cell("m2po") == "`tau=0.04`, `trust_region_only=True`"
    assert preset_cell("grpo_verl") == "`grpo` with `dual_clip=3`"


def summary_numbers(summary: str) -> set[str]:
    """Numbers a summary states as values: not exponents (``^2``), not part of a name (``M2``),
    not the 1 of ``1-eps``, not a paper reference (``Algorithm 1``, ``eq. 5``)."""
    summary = re.sub(r"(Algorithm|eqs?\.|Fig\.|§)\s*\d+", "", summary)
    found = re.findall(r"(?<![\w.^])(\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.]|[-+]\w)", summary)
    return {value_text(float(x)) for x in found}


def test_summary_numbers_parse_as_expected():
    assert summary_numbers("Algorithm 1: x in [0.5,2] and rho in [0.996,1.001]; (log r)^2, M2, 1-eps") == {
        "0.5", "2", "0.996", "1.001"}


def test_every_number_in_a_summary_is_one_of_its_defaults():
    for name, cls in objectives.REGISTRY.items():
        defaults = {value_text(float(v)) for v in own_defaults(cls.config_class).values()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert summary_numbers(cls.summary) <= defaults, f"{name}: summary {cls.summary!r}, defaults {defaults}"


if __name__ == "__main__":
    OBJECTIVES_MD.write_text(regenerate(OBJECTIVES_MD.read_text()))
    print(f"wrote {OBJECTIVES_MD}")
