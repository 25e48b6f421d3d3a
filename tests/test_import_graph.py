"""The package's module graph: the mathematics (forms) needs nothing from the solvers, the
runners or the learning package, and no two modules import each other in a cycle (module
level and function level alike: a lazy import still couples the two)."""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PKG = REPO / "fem_mfc"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The fem_mfc modules ``path`` imports (resolved relative imports; a name imported from
    a package counts as its submodule when one exists)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fem_mfc")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fem_mfc"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (PKG.parent / sub.replace(".", "/")).is_dir() else mod)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def test_forms_need_nothing_from_solvers_runners_or_learning():
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith(("fem_mfc.solvers", "fem_mfc.runs",
                                                      "fem_mfc.learning", "fem_mfc.cli")))
           for m, deps in g.items() if m.startswith("fem_mfc.forms")}
    assert not any(bad.values()), bad


def test_no_two_modules_import_each_other():
    g = graph()
    pairs = sorted((a, b) for a, deps in g.items() for b in deps
                   if a < b and a in g.get(b, set())
                   and not (b.startswith(a + ".") or a.startswith(b + ".")))   # package/member
    assert not pairs, pairs


def test_learning_needs_no_runner():
    """The mathematics of learning (networks, trainers, data) is used by the runners of
    ``fem_mfc.runs``, never the other way round, and knows nothing of the pipeline."""
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith(("fem_mfc.runs", "fem_mfc.pipeline",
                                                      "fem_mfc.cli")))
           for m, deps in g.items() if m.startswith("fem_mfc.learning")}
    assert not any(bad.values()), bad


def test_every_formulation_is_run_from_runs():
    """Each registry entry's runner lives in ``fem_mfc.runs`` (resolved without importing)."""
    from fem_mfc import registry
    for e in registry.ENTRIES:
        mod, fn = e.runner.split(":")
        assert mod.startswith("fem_mfc.runs."), e
        path = REPO / (mod.replace(".", "/") + ".py")
        assert path.is_file(), e
        assert any(isinstance(n, ast.FunctionDef) and n.name == fn
                   for n in ast.parse(path.read_text()).body), e
