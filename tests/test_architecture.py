"""The architecture is enforced: import-linter's floors hold and name every module, there is no import cycle,
and no file or function of src/fgssl is too long to read (issue: one clear architecture)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

from conftest import ROOT

SRC = ROOT / "src" / "fgssl"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def _contract_modules():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in cfg if c["type"] == "layers")["layers"]
    return {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}


def test_lint_imports_passes():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT / "src",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_every_module_is_on_a_floor():
    top = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    named = {m.split(".")[1] for m in _contract_modules()}
    missing = sorted(top - named)
    assert not missing, f"not on any floor of the import-linter contract in pyproject.toml: {missing}"


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("fgssl", cache_dir=None)  # no .grimp_cache folder left in the repo
    modules = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in modules}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_files_and_functions_are_short():
    long_files, long_funcs = [], []
    for p in sorted(SRC.rglob("*.py")):
        text = p.read_text()
        rel = p.relative_to(ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_funcs.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long_files and not long_funcs, (long_files, long_funcs)
