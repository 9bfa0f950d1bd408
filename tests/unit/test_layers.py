"""The layers point one way: every import of every module (function-level and TYPE_CHECKING
ones included) is checked against the rules in docs/architecture.md."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "pycri"
GENERATED_API = ("github", "gogoproto")  # containerd's generated modules (build/gen)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from pycri.service import records" imports the module pycri.service.records
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    """The unit the rules speak of: a subpackage of pycri, or a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _pycri_modules(imports: set[str], known: set[str]) -> set[str]:
    return {name for name in imports if name in known}


def test_the_rules_see_every_module_and_function_level_imports() -> None:
    graph = _graph()
    assert "pycri.service.exits" in graph and "pycri.events.monitor" in graph
    # cli imports the daemon inside a function: such imports count too
    assert "pycri.daemon" in graph["pycri.cli"]


def _offending(
    layers: set[str], forbidden: tuple[str, ...], *, inverse: bool = False
) -> list[tuple[str, str]]:
    """(module, import) pairs of modules in ``layers`` (or outside them, ``inverse``) that
    import a name starting with one of ``forbidden``."""
    return [
        (module, name)
        for module, imports in _graph().items()
        if (_layer(module) in layers) != inverse
        for name in imports
        if name.startswith(forbidden)
    ]


def test_events_and_store_never_import_service() -> None:
    bad = _offending({"events", "store"}, ("pycri.service",))
    assert not bad, f"events/ or store/ import the RPC layer: {bad}"


def test_store_never_imports_events() -> None:
    bad = _offending({"store"}, ("pycri.events",))
    assert not bad, f"store/ imports events/: {bad}"


def test_only_containerd_touches_the_generated_api() -> None:
    forbidden = (*(f"{root}." for root in GENERATED_API), "pycri.containerd.api")
    bad = _offending({"containerd"}, forbidden, inverse=True)
    assert not bad, f"containerd's wire types used outside containerd/: {bad}"


def test_no_import_cycle_between_packages() -> None:
    graph = _graph()
    known = set(graph)
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph.items():
        for name in _pycri_modules(imports, known):
            if _layer(name) != _layer(module):
                edges[_layer(module)].add(_layer(name))
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles between packages: {cycles}"


# docs/architecture.md draws this stack; an import may only go down it (or stay in its layer).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"daemon", "cli", "check", "gc"}),
    frozenset({"api"}),
    frozenset({"service"}),
    frozenset({"events", "images", "net", "oci", "security", "stream", "testing"}),
    frozenset({"store"}),
    frozenset({"cio", "containerd"}),
    frozenset({"errors", "config", "paths", "fsutil", "cgroups", "metrics", "log", "pycri"}),
)


def _rank(layer: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if layer in members)


def test_every_package_has_a_layer() -> None:
    layers = {_layer(module) for module in _graph()}
    placed = set().union(*LAYERS)
    assert layers <= placed, (
        f"place these in LAYERS (and in docs/architecture.md): {layers - placed}"
    )


def test_imports_only_go_down_the_stack() -> None:
    graph = _graph()
    known = set(graph)
    upward = sorted(
        (module, name)
        for module, imports in graph.items()
        for name in _pycri_modules(imports, known)
        if _rank(_layer(name)) < _rank(_layer(module))
    )
    assert not upward, f"imports that climb the stack: {upward}"


def test_the_rpc_seam_depends_on_no_machinery() -> None:
    graph = _graph()
    allowed = {"errors", "containerd"}  # error classes it maps to statuses
    used = {
        _layer(name)
        for module, imports in graph.items()
        if _layer(module) == "api"
        for name in _pycri_modules(imports, set(graph))
    } - {"api"}
    assert used <= allowed, f"api/ reaches into {sorted(used - allowed)}"
