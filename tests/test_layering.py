"""The package's layering: no import cycle (function-level imports included), no function-local
imports of the package's own modules, and every module imports on its own."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "attribshield"


def _modules():
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _resolve(name, node, is_pkg):
    """Absolute names an import node brings in (only attribshield's own modules)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = name if is_pkg else name.rpartition(".")[0]
    for _ in range(max(node.level - 1, 0)):
        base = base.rpartition(".")[0]
    mod = node.module or ""
    target = (base + "." + mod).strip(".") if node.level else mod
    names = [target]
    for a in node.names:  # ``from . import x`` brings in the submodule x
        if target + "." + a.name in MODULES:
            names.append(target + "." + a.name)
    return names


def _imports(name, path, is_pkg):
    """(imported module, is function-local) pairs, restricted to attribshield."""
    tree = ast.parse(path.read_text())
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    local.add(id(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _resolve(name, node, is_pkg):
                while target and target not in MODULES:  # ``from pkg.mod import func``
                    target = target.rpartition(".")[0]
                if target.startswith("attribshield"):
                    out.append((target, id(node) in local))
    return out


def _graph():
    """Edges between modules.  Importing ``a.b.c`` runs ``a.b``'s ``__init__`` too, so it adds an
    edge to every enclosing package, and a package's ``__init__`` has edges to the submodules it
    re-exports: a module that imports ``attribshield.evaluation._utils`` therefore depends on
    everything ``attribshield.evaluation`` loads.  Only the root ``attribshield/__init__`` is left
    out: it re-exports the public API and imports nothing that imports it back by name."""
    graph = {m: set() for m in MODULES}
    for name, (path, is_pkg) in MODULES.items():
        for target, _ in _imports(name, path, is_pkg):
            chain = target.split(".")
            for i in range(2, len(chain) + 1):
                dep = ".".join(chain[:i])
                # the importer's own enclosing packages are loaded before it: no edge back to them
                if dep == name or name == "attribshield" or name.startswith(dep + "."):
                    continue
                graph[name].add(dep)
    return graph


def _cycle(graph):
    color, stack = {}, []

    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in color:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(graph):
        if n not in color:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_finds_a_planted_cycle():
    graph = _graph()
    graph["attribshield.base"].add("attribshield.estimator")  # estimator imports base
    assert _cycle(graph) is not None


def test_no_function_local_imports_of_the_package():
    offenders = [f"{name}: {target}" for name, (path, is_pkg) in MODULES.items()
                 for target, local in _imports(name, path, is_pkg) if local]
    assert not offenders, "function-local imports of attribshield modules:\n" + "\n".join(offenders)


@pytest.mark.slow  # one fresh interpreter per module: ~4 s each (torch's import); the AST test above is fast
@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "attribshield.__main__"))
def test_module_imports_on_its_own(name):
    res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PKG.parent)}, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
