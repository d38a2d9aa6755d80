"""Imports point one way. Walks the AST of every module under localaid/ (imports inside
functions count) and checks the layers README's "How it is built" describes:

    pure core   records, policy*, catalog, quantity, vram,      no I/O modules at all
                driver_support
    config      localaid.config.*                               core helpers only
    adapters    localaid.adapters.*                             never provisioning, CLI or the loop
    daemon      supervisor, observe, act, report                never provisioning or the CLI
    provision   localaid.provision.*                            never the CLI or the daemon's loop
    cli         localaid.cli.*                                  may use everything

and that no two modules import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "localaid"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The localaid module `name` refers to (a name inside a module → that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            if n == "localaid" or n.startswith("localaid."):
                target = _resolve(n)
                if target and target != module and target != "localaid":
                    out.add(target)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}

PURE = {"localaid.records", "localaid.policy", "localaid.policy_gpu", "localaid.policy_gpu_ladder",
        "localaid.policy_nodes", "localaid.policy_runner", "localaid.policy_tls",
        "localaid.policy_jobs",
        "localaid.policy_models", "localaid.policy_backup", "localaid.policy_disk", "localaid.driver_support",
        "localaid.catalog", "localaid.quantity", "localaid.vram", "localaid.distro"}
DAEMON = {"localaid.supervisor", "localaid.observe", "localaid.observe_tls", "localaid.observe_nodes", "localaid.act",
          "localaid.report"}


def _layer(m: str) -> str:
    if m in PURE:
        return "pure"
    if m in DAEMON:
        return "daemon"
    for prefix, layer in (("localaid.config", "config"), ("localaid.adapters", "adapters"),
                          ("localaid.provision", "provision"), ("localaid.cli", "cli")):
        if m == prefix or m.startswith(prefix + "."):
            return layer
    return "base"  # log, fsutil, paths, progress, procfs, __main__ ...


FORBIDDEN = {
    "pure": {"config", "adapters", "daemon", "provision", "cli", "base"},
    "base": {"adapters", "daemon", "provision", "cli"},
    "config": {"adapters", "daemon", "provision", "cli"},
    "adapters": {"config", "daemon", "provision", "cli"},
    "daemon": {"provision", "cli"},
    "provision": {"daemon", "cli"},
    "cli": set(),
}
BASE_EXCEPTIONS = {("localaid.__main__", "localaid.cli")}  # `python3 -m localaid` is the CLI


def test_the_walk_sees_the_package():
    assert {"localaid.records", "localaid.policy", "localaid.supervisor"} <= set(MODULES)
    assert "localaid.records" in GRAPH["localaid.policy"]
    assert any(m.startswith("localaid.provision.") for m in MODULES)
    assert any(m.startswith("localaid.cli") for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    layer = _layer(module)
    bad = sorted(t for t in GRAPH[module] if _layer(t) in FORBIDDEN[layer] and (module, t) not in BASE_EXCEPTIONS)
    assert not bad, f"{module} ({layer}) must not import {', '.join(f'{b} ({_layer(b)})' for b in bad)}"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH.get(v, ())):
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

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_is_too_long_to_hold_in_your_head():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"
