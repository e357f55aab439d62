"""The layering rule (DESIGN.md): ``components/`` and ``lm/`` import nothing from ``training/``,
nothing imports the CLI, and odqa's modules import each other without a circle.

Read from the source with :mod:`ast`, so imports inside functions count too: those are the
ones that made the old circle (api -> components -> rankers -> training.reranker -> api).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx

PACKAGE = Path(__file__).resolve().parent.parent / "odqa"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every odqa module ``path`` imports, at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from odqa.lm import connector`
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


GRAPH = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_components_and_lm_import_nothing_from_training():
    bad = {m: sorted(i for i in deps if i == "odqa.training" or i.startswith("odqa.training."))
           for m, deps in GRAPH.items() if m.startswith(("odqa.components", "odqa.lm"))}
    assert {m: d for m, d in bad.items() if d} == {}


def test_nothing_imports_the_cli():
    assert sorted(m for m, deps in GRAPH.items() if any(d == "odqa.cli" or d.startswith("odqa.cli.") for d in deps)
                  and not m.startswith("odqa.cli")) == []


def test_no_import_circles():
    graph = networkx.DiGraph([(m, d) for m, deps in GRAPH.items() for d in deps
                              if d != "odqa"])  # `import odqa` (the package's offline defaults) is a leaf
    assert sorted(networkx.simple_cycles(graph)) == []


def test_the_scan_sees_imports_inside_functions():
    # the reader trainer imports the pipeline loader inside a function; the scan must see it
    assert "odqa.api" in GRAPH["odqa.training.reader"]
    assert "odqa.lm.cross_encoder" in GRAPH["odqa.components.rankers"]
