"""Imports in ``olla/`` run one way: each module imports only from its own layer or below, and
nothing imports in a circle. ``docs/ARCHITECTURE.md`` draws the same layers.

Imports under ``if TYPE_CHECKING:`` are not counted: they name types, they do not run. Except in
``olla/interfaces.py``: the seams name only values, even for the type checker.

And what the request path knows about a request is typed: no ``getattr`` on a request, no
``type: ignore`` anywhere in ``olla/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "olla"

#: lowest first; a module's layer is the one of its longest matching prefix
LAYERS: tuple[tuple[str, ...], ...] = (
    # small shared helpers, config, the seams and the values they name, the figures olla
    # keeps and the records it publishes, and who this process is
    (
        "olla",
        "olla.util",
        "olla.config",
        "olla.interfaces",
        "olla.fleet.values",
        "olla.telemetry",
        "olla.daemon.workers",
    ),
    ("olla.profiles",),
    # the fleet's state: endpoints, load, health, discovery, the catalogue, balancing, stickiness
    ("olla.fleet",),
    # the request path, in its order: the front (the request's context), the guard, the
    # plan, dispatch and exchange (proxy), the Anthropic route
    ("olla.front",),
    ("olla.guard",),
    ("olla.proxy",),
    ("olla.anthropic",),
    # fleet model management: pull, create, copy, delete, push and blobs on every machine
    ("olla.manage",),
    # the shared store (Redis/Valkey): the stores above backed by it, failing open
    ("olla.state",),
    # the web face: the site that runs the path, the internal API, the dashboard
    ("olla.web",),
    # the daemon: the composition root, reload, the supervisor, twistd's entry point
    ("olla.daemon",),
    ("olla.__main__",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, *, typing_too: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if (
            not typing_too
            and isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
        ):
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


# ------------------------------------------------------------------------------ interfaces


def _is_value(node: ast.ClassDef) -> bool:
    """A dataclass or an enum: data, no behaviour of its own."""
    decorators = [ast.unparse(d) for d in node.decorator_list]
    bases = [ast.unparse(b) for b in node.bases]
    return any(d.split("(")[0].endswith("dataclass") for d in decorators) or any(
        b.endswith("Enum") for b in bases
    )


def _implementations(module: str) -> list[str]:
    """The classes of ``module`` that are neither dataclasses nor enums."""
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.ClassDef) and not _is_value(n)]


def _modules(names: set[str]) -> set[str]:
    known = set(GRAPH)
    out = set()
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        out.add(name)
    return out


def test_interfaces_name_no_implementation() -> None:
    """If ``olla/interfaces.py`` names a type, even only for the type checker, then it comes
    from the bottom layer and from a module of values (dataclasses and enums) only."""
    named = _modules(_runtime_imports(PACKAGE / "interfaces.py", typing_too=True))
    upward = sorted(m for m in named if _layer(m) > _layer("olla.interfaces"))
    assert upward == [], f"interfaces.py names types from above its layer: {upward}"
    behaviour = {m: _implementations(m) for m in sorted(named)}
    assert {m: c for m, c in behaviour.items() if c} == {}, "interfaces.py names implementations"


def test_interfaces_rule_bites() -> None:
    """If interfaces.py named the endpoint registry, then the rule would catch it."""
    assert _layer("olla.fleet.endpoints") > _layer("olla.interfaces")
    assert "EndpointRegistry" in _implementations("olla.fleet.endpoints")
    assert _implementations("olla.fleet.values") == []


# ------------------------------------------------------------------------------ typed requests


def _request_getattrs(source: str) -> list[str]:
    """``getattr`` calls on anything that is (or belongs to) a request."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and "request" in ast.unparse(node.args[0]).lower()
        ):
            found.append(ast.unparse(node))
    return found


SOURCES = {_module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_getattr_on_requests(module: str) -> None:
    """If a module needs something about a request, then it reads its typed context
    (``olla.front.context``), never ``getattr`` on the request."""
    assert _request_getattrs(SOURCES[module]) == []


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_type_ignore(module: str) -> None:
    """If a module's types do not check, then it is fixed, not silenced with ``type: ignore``."""
    lines = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(SOURCES[module].splitlines(), 1)
        if "type: ignore" in line or "type:ignore" in line
    ]
    assert lines == []


def test_request_rules_bite() -> None:
    """If code read a request attribute with getattr, then the rule would catch it."""
    assert _request_getattrs("x = getattr(request, 'client_ip', None)")
    assert _request_getattrs("y = getattr(self._request.getClientAddress(), 'host', '')")
    assert not _request_getattrs("z = getattr(self.channel, 'site', None)")
