"""The import graph runs one way: each layer imports only itself and the layers it names.

:data:`LAYERS` is the rule, written once. Every module of ``src/x0tta6bl4`` belongs to exactly
one layer (the one naming its longest prefix); every import of a project module, wherever it
stands in the file (top level, inside a function, under ``TYPE_CHECKING``, relative or
absolute), must land in the importer's own layer or in one its layer may import; the layers
form no cycle; no two modules import each other in a loop at run time (not even through an
import inside a function); and the I/O-free layers (the sans-IO protocol core, the node's
state machines, the policy) never import an event loop, a socket or a clock.
``docs/development.md`` shows the same table, and a test below holds it equal to
:data:`LAYERS`. The last tests prove the checks catch what they forbid, on a copy of the real
tree with one bad line added.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import x0tta6bl4

SRC = Path(x0tta6bl4.__file__).parent.parent
DOCS = SRC.parent / "docs" / "development.md"

FORBIDDEN_IN_IO_FREE = frozenset({"asyncio", "socket", "selectors", "trio", "anyio", "time"})
"""What an I/O-free module never imports: event loops, sockets, clocks (``now`` is passed in)."""


@dataclass(frozen=True)
class Layer:
    """Some modules (a package covers its submodules; the root package ``x0tta6bl4`` only
    itself), what they may import, and whether they must stay free of I/O."""

    modules: tuple[str, ...]
    may_import: tuple[str, ...]
    io_free: bool = False


_NODE_CORE = tuple(
    f"x0tta6bl4.node.{name}"
    for name in (
        "core",
        "neighbourhood",
        "channels",
        "reassembly",
        "overlay",
        "peers",
        "model",
        "drops",
    )
)
_EVERYTHING_BELOW_COMMANDS = (
    "check",
    "bench",
    "local",
    "node",
    "node.core",
    "controller.app",
    "controller.api",
    "controller",
    "dataplane",
    "protocol",
    "policy",
    "crypto",
    "tls",
    "identity",
    "base",
)

LAYERS: dict[str, Layer] = {
    # top first; a layer names every layer it imports directly
    "cli": Layer(("x0tta6bl4.cli", "x0tta6bl4.__main__"), ("commands", "base")),
    "commands": Layer(("x0tta6bl4.commands",), _EVERYTHING_BELOW_COMMANDS),
    "check": Layer(("x0tta6bl4.check",), ("local", "tls", "identity", "base")),
    "bench": Layer(
        ("x0tta6bl4.bench",),
        (
            "node",
            "node.core",
            "controller",
            "dataplane",
            "protocol",
            "crypto",
            "tls",
            "identity",
            "base",
        ),
    ),
    "local": Layer(("x0tta6bl4.local",), ("controller", "protocol", "tls", "identity", "base")),
    "node": Layer(
        ("x0tta6bl4.node",),
        ("node.core", "dataplane", "policy", "protocol", "crypto", "tls", "identity", "base"),
    ),
    "node.core": Layer(_NODE_CORE, ("protocol", "crypto"), io_free=True),
    "controller.app": Layer(
        ("x0tta6bl4.controller.app", "x0tta6bl4.controller.server"),
        ("controller.api", "controller", "tls", "identity", "base"),
    ),
    "controller.api": Layer(
        ("x0tta6bl4.controller.api", "x0tta6bl4.controller.ui"),
        ("controller", "policy", "tls", "base"),
    ),
    "controller": Layer(("x0tta6bl4.controller",), ("policy", "crypto", "tls", "identity", "base")),
    "dataplane": Layer(("x0tta6bl4.dataplane",), ("protocol", "base")),
    "protocol": Layer(("x0tta6bl4.protocol",), ("crypto",), io_free=True),
    "policy": Layer(("x0tta6bl4.policy",), ("identity", "base"), io_free=True),
    "crypto": Layer(("x0tta6bl4.crypto",), ("identity", "base")),
    "tls": Layer(("x0tta6bl4.tls",), ("identity", "base")),
    "identity": Layer(("x0tta6bl4.identity",), ("base",)),
    "base": Layer(
        (
            "x0tta6bl4",
            "x0tta6bl4._version",
            "x0tta6bl4.defaults",
            "x0tta6bl4.hostport",
            "x0tta6bl4.httpserver",
            "x0tta6bl4.logging",
            "x0tta6bl4.records",
        ),
        (),
    ),
}


# --------------------------------------------------------------------------- the checker


def _modules(src: Path) -> dict[str, Path]:
    """Every module under ``src/x0tta6bl4`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((src / "x0tta6bl4").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, layer in LAYERS.items():
        for prefix in layer.modules:
            covers = prefix != "x0tta6bl4" and module.startswith(prefix + ".")
            if (module == prefix or covers) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    return None if best is None else best[1]


@dataclass(frozen=True)
class _Import:
    line: int
    module: str
    typing_only: bool


def _under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, known: set[str]) -> list[_Import]:
    """Every import in ``path``: project modules resolved to the most specific module that
    exists, other modules by their full name; ``typing_only`` under ``if TYPE_CHECKING:``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[_Import] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(_Import(node.lineno, a.name, typing_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                resolved = candidate if candidate in known else target
                found.append(_Import(node.lineno, resolved, typing_only))
        for child in ast.iter_child_nodes(node):
            inner = typing_only or (
                isinstance(node, ast.If) and _under_type_checking(node) and child in node.body
            )
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def violations(src: Path) -> list[str]:
    """Every breach of :data:`LAYERS` in the tree under ``src``, one readable line each."""
    modules = _modules(src)
    known = set(modules)
    problems: list[str] = []
    for module, path in modules.items():
        layer_name = _layer_of(module)
        if layer_name is None:
            problems.append(f"{module}: belongs to no layer")
            continue
        layer = LAYERS[layer_name]
        where = path.relative_to(src)
        for imp in _imports(module, path, known):
            top = imp.module.split(".")[0]
            if top != "x0tta6bl4":
                if layer.io_free and top in FORBIDDEN_IN_IO_FREE:
                    problems.append(
                        f"{where}:{imp.line}: I/O-free layer {layer_name} imports {top}"
                    )
                continue
            target = _layer_of(imp.module)
            if target != layer_name and target not in layer.may_import:
                problems.append(
                    f"{where}:{imp.line}: {layer_name} -> {target} ({module} imports {imp.module})"
                )
    return problems


def module_cycles(src: Path) -> list[list[str]]:
    """Modules that import each other in a loop when the program runs (an import inside a
    function counts; one under ``TYPE_CHECKING`` does not), each loop sorted."""
    modules = _modules(src)
    known = set(modules)
    graph = {
        module: {
            imp.module
            for imp in _imports(module, path, known)
            if not imp.typing_only and imp.module in known and imp.module != module
        }
        for module, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
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
                loops.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return sorted(loops)


# --------------------------------------------------------------------------- the rule holds


def test_the_layers_form_no_cycle_and_name_only_layers() -> None:
    for name, layer in LAYERS.items():
        assert set(layer.may_import) <= set(LAYERS) - {name}, name
    remaining = dict(LAYERS)
    while remaining:
        leaves = [n for n, layer in remaining.items() if not set(layer.may_import) & set(remaining)]
        assert leaves, f"the layers import each other in a cycle: {sorted(remaining)}"
        for name in leaves:
            del remaining[name]


def test_every_import_follows_the_layers() -> None:
    assert len(_modules(SRC)) >= 100
    assert violations(SRC) == []


def test_no_modules_import_each_other_in_a_loop() -> None:
    assert module_cycles(SRC) == []


def test_the_io_free_layers_hold_what_they_should() -> None:
    protocol = [m for m in _modules(SRC) if _layer_of(m) == "protocol"]
    assert len(protocol) >= 10
    for module in _NODE_CORE:
        assert module in _modules(SRC), f"{module} moved: update LAYERS"
        assert LAYERS[_layer_of(module) or ""].io_free


def _docs_table() -> str:
    rows = ["| layer | modules | may import | I/O-free |", "|---|---|---|---|"]
    for name, layer in LAYERS.items():
        modules = ", ".join(f"`{m}`" for m in layer.modules)
        may = ", ".join(f"`{m}`" for m in layer.may_import) or "—"
        rows.append(f"| `{name}` | {modules} | {may} | {'yes' if layer.io_free else ''} |")
    return "\n".join(rows) + "\n"


def test_the_development_guide_shows_exactly_these_layers() -> None:
    assert _docs_table() in DOCS.read_text(), (
        "docs/development.md must hold this table, as written:\n" + _docs_table()
    )


# --------------------------------------------------------------------------- the checker bites


def _copy_of_the_tree(tmp_path: Path) -> Path:
    shutil.copytree(SRC / "x0tta6bl4", tmp_path / "x0tta6bl4")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + code)


def test_a_data_plane_import_of_the_control_plane_is_caught(tmp_path: Path) -> None:
    src = _copy_of_the_tree(tmp_path)
    _append(
        src / "x0tta6bl4/node/agent.py",
        "\n\ndef _late() -> None:\n    from x0tta6bl4.controller.models import NodeRecord\n",
    )
    found = violations(src)
    assert len(found) == 1
    assert "node -> controller (x0tta6bl4.node.agent imports x0tta6bl4.controller" in found[0]


def test_a_relative_import_upwards_is_caught(tmp_path: Path) -> None:
    src = _copy_of_the_tree(tmp_path)
    _append(src / "x0tta6bl4/controller/auth.py", "\nfrom .api import errors\n")
    found = violations(src)
    assert len(found) == 1
    assert "controller -> controller.api" in found[0]


def test_io_in_an_io_free_module_is_caught(tmp_path: Path) -> None:
    src = _copy_of_the_tree(tmp_path)
    _append(src / "x0tta6bl4/node/core.py", "\nimport asyncio\nfrom time import monotonic\n")
    _append(src / "x0tta6bl4/protocol/session.py", "\nimport socket as _s\n")
    found = violations(src)
    assert len(found) == 3
    assert sorted(f.rsplit(" ", 1)[1] for f in found) == ["asyncio", "socket", "time"]


def test_a_loop_hidden_in_a_function_is_caught(tmp_path: Path) -> None:
    src = _copy_of_the_tree(tmp_path)
    _append(
        src / "x0tta6bl4/check/runner.py",
        "\n\ndef _late() -> None:\n    from x0tta6bl4.check.checks_local import run_local\n",
    )
    assert violations(src) == []  # one layer: only the loop check sees it
    assert module_cycles(src) == [["x0tta6bl4.check.checks_local", "x0tta6bl4.check.runner"]]


def test_a_new_module_outside_every_layer_is_caught(tmp_path: Path) -> None:
    src = _copy_of_the_tree(tmp_path)
    (src / "x0tta6bl4/stray.py").write_text('"""Nowhere."""\n')
    assert violations(src) == ["x0tta6bl4.stray: belongs to no layer"]


def test_a_cycle_between_layers_is_caught(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setitem(LAYERS, "crypto", Layer(("x0tta6bl4.crypto",), ("protocol",)))
    with pytest.raises(AssertionError, match="cycle"):
        test_the_layers_form_no_cycle_and_name_only_layers()
