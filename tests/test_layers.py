"""The layers import one way only: core <- targets <- runtime <- passes, models <- compiler.

An AST walk over every module (function-level imports included), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"core": 0, "targets": 1, "runtime": 2, "passes": 3, "models": 3, "compiler": 4}
FAMILIES = ("pruning", "depth", "quant", "fusion")
# What the compiler may import from the passes: the shared modules and each family's public API.
PASSES_PUBLIC = {"edgec.passes", "edgec.passes.base", "edgec.passes.context"} | {
    f"edgec.passes.{family}" for family in FAMILIES}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every edgec import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgec."):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("edgec.")]
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        where = path.relative_to(ROOT)
        family = where.parts[1] if package == "passes" and len(where.parts) > 2 else None
        for line, module, names in _imports(path):
            target = module.split(".")[1]
            if target not in RANK:
                bad.append(f"{where}:{line}: imports {module}, which is in no layer")
            elif target != package and RANK[target] >= RANK[package]:
                bad.append(f"{where}:{line}: {package} imports {module} (a layer at or above it)")
            parts = module.split(".")
            if family and target == "passes" and len(parts) > 2 and parts[2] in FAMILIES and parts[2] != family:
                bad.append(f"{where}:{line}: family {family} imports family {parts[2]}")
            if package == "compiler" and target == "passes":
                full = [module] if module in PASSES_PUBLIC else []
                if not full and not (module == "edgec.passes" and all(n in FAMILIES for n in names)):
                    bad.append(f"{where}:{line}: the compiler imports {module}, not a family's public API")
                bad += [f"{where}:{line}: the compiler imports the private name {n}" for n in names
                        if n.startswith("_")]
    return bad


@pytest.mark.parametrize("package", sorted(RANK))
def test_imports_go_down_only(package: str) -> None:
    assert _violations(package) == []


def test_the_walk_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a runtime module importing the compiler is caught."""
    module = tmp_path / "mod.py"
    module.write_text("def f():\n    from edgec.compiler.cli import main\n")
    assert _imports(module) == [(2, "edgec.compiler.cli", ["main"])]
