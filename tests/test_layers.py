"""The package's layers (docs/DESIGN.md#layers): imports flow one way, down, and no module imports
another package's private names; the README, the docs and the docstrings name modules that exist.

:func:`import_problems` is the checker: it reads every module of the package with ``ast``
(imports inside functions and under ``TYPE_CHECKING`` count too) and maps each module to its
layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "stalerl"

#: Bottom to top. A module may import from its own unit (the longest prefix listed here that
#: names it) and from units of a lower layer; units that share a layer do not import each other.
#: ``evaluation`` is two units: what the training loop calls (pass@k, diagnostics, plots) sits
#: below training; the ``stalerl eval`` and ``stalerl report`` commands, which read the
#: checkpoints and run directories training writes, sit above it. ``stalerl`` is the package's own
#: ``__init__`` (the top-level API) only.
LAYERS: list[list[str]] = [
    ["stalerl.errors", "stalerl.runtime", "stalerl._lazy"],
    ["stalerl.models", "stalerl.testbed", "stalerl.rewards", "stalerl.run_files"],
    ["stalerl.objectives", "stalerl.data"],
    ["stalerl.rollout"],
    ["stalerl.staleness"],
    ["stalerl.evaluation"],
    ["stalerl.training"],
    ["stalerl.evaluation.evaluate", "stalerl.evaluation.report"],
    ["stalerl.studies"],
    ["stalerl.cli", "stalerl.integrations", "stalerl"],
    ["stalerl.__main__"],
]

#: Private modules of the package root: helpers of every subpackage (a subpackage is inside
#: ``stalerl``), so not a private name *across* packages.
ROOT_PRIVATE = {"stalerl._lazy"}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """The longest prefix of ``module`` listed in :data:`LAYERS` (None: the module is in no layer)."""
    units = [u for layer in LAYERS for u in layer if module == u or (u != "stalerl" and module.startswith(u + "."))]
    return max(units, key=len) if units else None


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def top_package(module: str) -> str:
    """``stalerl.<name>`` (a subpackage, or a module at the root): what "a package" means here."""
    return ".".join(module.split(".")[:2])


def imports_of(path: Path, package: Path) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of every stalerl import in ``path``: ``name`` is the imported
    attribute, or None when the import names a module. A name a package exports lazily
    (``lazy_exports(__name__, {name: module})``) counts as imported from its module."""
    module = module_name(path, package)
    is_package = path.name == "__init__.py"
    found = []
    tree = ast.parse(path.read_text(), str(path))
    strings = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
               for t in n.targets if isinstance(t, ast.Name)}  # _ASYNC = "stalerl.staleness.async_rollout"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":  # imports on first use
            mapping = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], ast.Dict) else ast.Dict([], [])
            for key, value in zip(mapping.keys, mapping.values, strict=True):
                source = value.value if isinstance(value, ast.Constant) else strings.get(getattr(value, "id", None))
                if isinstance(key, ast.Constant) and isinstance(source, str):
                    found.append((value.lineno, source, key.value))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "stalerl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "stalerl":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                sub_path = package.parent / sub.replace(".", "/")
                if sub_path.with_suffix(".py").is_file() or (sub_path / "__init__.py").is_file():
                    found.append((node.lineno, sub, None))  # `from pkg import module`
                else:
                    found.append((node.lineno, source, alias.name))
    return found


def import_problems(package: Path = PACKAGE) -> list[str]:
    """``"file:line: what"`` for every import from a higher layer (or a sibling unit of the same
    layer) and every private name imported from another package."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        importer = module_name(path, package)
        rel = path.relative_to(package.parent)
        unit = unit_of(importer)
        if unit is None:
            problems.append(f"{rel}: module {importer} is in no layer; add it to LAYERS in tests/test_layers.py")
            continue
        for line, target, name in imports_of(path, package):
            target_unit = unit_of(target)
            if target_unit is None:
                problems.append(f"{rel}:{line}: imports {target}, which is in no layer")
            elif target_unit != unit and layer_of(target_unit) >= layer_of(unit):
                where = "the same layer" if layer_of(target_unit) == layer_of(unit) else "a higher layer"
                problems.append(f"{rel}:{line}: {unit} imports {target} ({target_unit}, {where})")
            if top_package(target) == top_package(importer) or target in ROOT_PRIVATE:
                continue
            private = [p for p in target.split(".") + [name or ""] if p.startswith("_") and not p.startswith("__")]
            if private:
                what = f"{target}.{name}" if name else target
                problems.append(f"{rel}:{line}: imports the private {what} of another package")
    return problems


def test_checker_flags_an_upward_import_and_a_private_name(tmp_path):
    package = tmp_path / "stalerl"
    for sub in ("rollout", "training", "rewards"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "training" / "loop.py").write_text("def make_batch():\n    pass\n\n\ndef _reward():\n    pass\n")
    (package / "rewards" / "reward.py").write_text("def build():\n    pass\n")
    (package / "rollout" / "batch.py").write_text(
        "from stalerl.rewards.reward import build\n"          # down a layer: fine
        "\n\ndef run():\n"
        "    from stalerl.training.loop import _reward, make_batch\n"  # up a layer, and private
        "    from ..training import loop\n"                   # up a layer, relative
    )
    (package / "rewards" / "__init__.py").write_text(
        "_BATCH = 'stalerl.rollout.batch'\n"
        "__getattr__, __dir__ = lazy_exports(__name__, {'build': 'stalerl.rewards.reward', 'run': _BATCH})\n")
    (package / "orphan.py").write_text("")
    problems = import_problems(package)
    assert sorted(p.split(": ", 1)[1] for p in problems) == sorted([
        "module stalerl.orphan is in no layer; add it to LAYERS in tests/test_layers.py",
        "stalerl.rollout imports stalerl.training.loop (stalerl.training, a higher layer)",
        "stalerl.rollout imports stalerl.training.loop (stalerl.training, a higher layer)",
        "imports the private stalerl.training.loop._reward of another package",
        "stalerl.rollout imports stalerl.training.loop (stalerl.training, a higher layer)",
        "stalerl.rewards imports stalerl.rollout.batch (stalerl.rollout, a higher layer)",
    ]), problems
    lines = sorted(p.split(": ", 1)[0] for p in problems if "rollout/batch.py" in p)
    assert lines == ["stalerl/rollout/batch.py:5"] * 3 + ["stalerl/rollout/batch.py:6"]


def test_checker_flags_a_sibling_of_the_same_layer(tmp_path):
    package = tmp_path / "stalerl"
    for sub in ("objectives", "data"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "data" / "prompts.py").write_text("from stalerl.objectives import core\n")
    (package / "objectives" / "core.py").write_text("")
    assert [p.split(": ", 1)[1] for p in import_problems(package)] == [
        "stalerl.data imports stalerl.objectives.core (stalerl.objectives, the same layer)"]


def test_every_import_flows_down_and_no_private_name_crosses_packages():
    problems = import_problems()
    assert problems == [], "\n".join(problems)


def test_the_layers_of_the_docs_are_the_layers_checked():
    """docs/DESIGN.md#layers lists the same units, bottom to top."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"^\| *\d+ *\|", line)]
    documented = [sorted(re.findall(r"`(stalerl[\w.]*)`", row.split("|")[2])) for row in rows]
    assert documented == [sorted(layer) for layer in LAYERS]


# ------------------------------------------------------------------------- module names in docs

MODULE_PATH = re.compile(r"(?<![\w/])stalerl/[\w/]+\.py\b")
DOTTED = re.compile(r"(?<![\w./])stalerl(?:\.\w+)+")


def _module_file(dotted: str) -> Path | None:
    path = ROOT / dotted.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(source: Path, name: str) -> bool:
    text = source.read_text()
    return bool(re.search(rf"^(?:\s*(?:async\s+)?def|\s*class)\s+{name}\b|^\s*{name}\s*[:=]|[\"']{name}[\"']|"
                          rf"import [^\n]*\b{name}\b", text, flags=re.M))


def name_problems(text: str) -> list[str]:
    """Module paths (``stalerl/x/y.py``) and dotted names (``stalerl.x.y[.attr]``) in ``text``
    that do not exist in the tree."""
    problems = []
    for path in set(MODULE_PATH.findall(text)):
        if not (ROOT / path).is_file():
            problems.append(f"{path}: no such file")
    for dotted in set(DOTTED.findall(text)):
        parts = dotted.split(".")
        known = max(i for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i])))
        rest = parts[known:]
        if rest and not rest[0].startswith("__") and not _defines(_module_file(".".join(parts[:known])), rest[0]):
            problems.append(f"{dotted}: no such module or name")
    return problems


def test_name_checker_flags_a_moved_module():
    assert name_problems("see `stalerl/training/logprobs.py` and stalerl.training.loop._make_reward") == [
        "stalerl/training/logprobs.py: no such file", "stalerl.training.loop._make_reward: no such module or name"]
    assert name_problems("`stalerl/models/logprobs.py`, stalerl.rollout.batch.make_rollout_batch, stalerl.staleness") == []


def test_readme_docs_and_docstrings_name_modules_that_exist():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for folder in ("stalerl", "benchmarks", "examples") for p in sorted((ROOT / folder).rglob("*.py"))]
    problems = [f"{path.relative_to(ROOT)}: {p}" for path in files for p in name_problems(path.read_text())]
    assert problems == [], "\n".join(problems)


if __name__ == "__main__":  # python tests/test_layers.py [PACKAGE_DIR]: list the problems of a tree
    found = import_problems(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PACKAGE)
    print("\n".join(found) or "no problems")
    sys.exit(1 if found else 0)
