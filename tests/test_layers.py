"""Imports in ``olla/`` run one way: each module imports only from its own layer or below, and
nothing imports in a circle. ``docs/ARCHITECTURE.md`` draws the same layers.

Imports under ``if TYPE_CHECKING:`` are not counted: they name types, they do not run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "olla"

#: lowest first; a module's layer is the one of its longest matching prefix
LAYERS: tuple[tuple[str, ...], ...] = (
    # small shared helpers, config, the seams, the figures olla keeps, and who this process is
    (
        "olla",
        "olla.util",
        "olla.config",
        "olla.interfaces",
        "olla.telemetry",
        "olla.daemon.workers",
    ),
    ("olla.profiles",),
    # the fleet's state: endpoints, health, discovery, the catalogue, balancing, stickiness
    ("olla.fleet",),
    # the request path
    ("olla.proxy",),
    ("olla.anthropic",),
    # fleet model management: pull, create, copy, delete, push and blobs on every machine
    ("olla.manage",),
    ("olla.web",),
    ("olla.guard",),
    # the daemon: the composition root, reload, the supervisor, twistd's entry point
    ("olla.daemon",),
    ("olla.__main__",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "olla" or name.startswith("olla.")}


def _layer(module: str) -> int:
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the docs)")
    return best[0]


GRAPH = {_module_name(p): _runtime_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    """If a module imports another, then that one is in the same layer or below."""
    upward = sorted(dep for dep in GRAPH[module] if _layer(dep) > _layer(module))
    assert upward == [], f"{module} (layer {_layer(module)}) imports upward: {upward}"


def test_no_import_cycles() -> None:
    """If the runtime imports are followed, then no module reaches itself again."""
    known = set(GRAPH)

    def resolve(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]  # ``from olla.x import y`` where y is a name
        return name

    edges = {m: {resolve(d) for d in deps} - {m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == 2:
            return
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail, module]))
        state[module] = 1
        for dep in sorted(edges.get(module, ())):
            if dep != "olla":  # the package's __init__ holds only __version__
                visit(dep, [*trail, module])
        state[module] = 2

    for module in sorted(edges):
        visit(module, [])


def test_the_rule_bites() -> None:
    """If a low module imported a high one, then the rule would catch it."""
    assert _layer("olla.web.site") > _layer("olla.proxy.exchange") > _layer("olla.util.errors")
    assert _layer("olla.proxy.routing") == _layer("olla.proxy")
