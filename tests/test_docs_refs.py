"""Shipped text cites only what ships: no reference to a planning document, a tracker number or a
file outside the repository, and every ``docs/X.md`` (and ``#anchor``) it links exists.

:func:`find_bad_references` is the checker. It runs over the files this test names and over
the whole tree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SCANNED_DIRS = ("stalerl", "tests", "benchmarks", "docs", "examples")
SUFFIXES = (".py", ".md")

#: (pattern, what it is). The checker's own file is not scanned: it has to spell the patterns.
FORBIDDEN = [
    (re.compile(r"\bSPEC\b"), "a planning document that does not ship"),
    (re.compile(r"\bthe brief\b", re.I), "a planning document that does not ship"),
    (re.compile(r"\bissues? #?\d+", re.I), "a tracker number (state the target or cite docs/ instead)"),
    (re.compile(r"shared/seeds|/work/"), "a path outside the repository"),
]
DOC_LINK = re.compile(r"(?<![\w/.-])docs/([\w./-]+?\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\((?!https?:|#)([^)#\s]+\.md)(?:#([\w-]+))?\)")

#: Files written against the rule from the start (the whole-tree test covers them too).
CLEAN_NOW = [
    "docs/DESIGN.md", "docs/METRICS.md",
    "stalerl/__init__.py", "stalerl/_lazy.py", "stalerl/training/__init__.py",
    "stalerl/training/config_help.py", "stalerl/staleness/__init__.py", "stalerl/rollout/__init__.py",
    "stalerl/studies/__init__.py",
    "tests/test_api.py", "tests/test_config.py", "tests/test_metrics_table.py", "tests/test_objectives_user.py",
    "tests/fixtures/nan_objective.py", "tests/fixtures/user_objectives.py",
]


def anchors(path: Path) -> set[str]:
    """Anchors of a Markdown file: explicit ``<a id="...">`` and GitHub's heading slugs."""
    text = path.read_text()
    found = set(re.findall(r'<a id="([\w-]+)"', text))
    for heading in re.findall(r"^#+ +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def _link_problem(target: Path, anchor: str | None) -> str | None:
    if not target.is_file():
        return f"links {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}, which does not exist"
    if anchor and anchor not in anchors(target):
        return f"links #{anchor} in {target.name}, which has no such anchor"
    return None


def find_bad_references(path: Path) -> list[str]:
    """``"file:line: what"`` for every forbidden citation or broken ``docs/`` link in ``path``."""
    problems = []
    rel = path.relative_to(ROOT)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for pattern, what in FORBIDDEN:
            for match in pattern.finditer(line):
                problems.append(f"{rel}:{number}: {match.group(0)!r}: {what}")
        links = [(ROOT / "docs" / m.group(1), m.group(2)) for m in DOC_LINK.finditer(line)]
        if path.suffix == ".md":
            links += [((path.parent / m.group(1)).resolve(), m.group(2)) for m in MD_LINK.finditer(line)]
        for target, anchor in links:
            problem = _link_problem(target, anchor)
            if problem:
                problems.append(f"{rel}:{number}: {problem}")
    return problems


def shipped_text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED_DIRS:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in SUFFIXES and p.is_file()]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def test_checker_flags_each_kind_of_bad_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text('# Title\n<a id="stale-k"></a>\n## Mini-batch statistics\n')
    sample = tmp_path / "docs" / "B.md"
    lines = ["as " + "SP" + "EC §3 says", "see the " + "brief", "the " + "issue 7 target", "`shared/" + "seeds/x.txt`",
             "docs/MISSING.md", "docs/A.md#nowhere", "[a](A.md#nope)",
             "fine: docs/A.md#stale-k, docs/A.md#mini-batch-statistics, [a](A.md), SPEC_NAMES, target >= 1.5x TRL"]
    sample.write_text("\n".join(lines) + "\n")
    problems = find_bad_references(sample)
    assert [p.split(":")[1] for p in problems] == ["1", "2", "3", "4", "5", "6", "7"], problems


def test_files_written_against_the_rule_cite_only_what_ships():
    problems = [p for name in CLEAN_NOW for p in find_bad_references(ROOT / name)]
    assert problems == []


def test_whole_tree_cites_only_what_ships():
    problems = [p for path in shipped_text_files() for p in find_bad_references(path)]
    assert problems == [], "\n".join(problems)
