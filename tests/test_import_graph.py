"""No import cycles in our packages, and ``openenv_zmq`` imports neither the broker nor an env.

The graph is built statically with :mod:`ast` from every ``.py`` file, counting every import
(module level, in functions, under ``TYPE_CHECKING``). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg``. A module's implicit import of its parent
packages is not an edge: a package ``__init__`` importing its own submodules is no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_PACKAGES = sorted(p.parent.name for p in (REPO_ROOT / "envs").glob("*/__init__.py"))
PACKAGE_DIRS = [REPO_ROOT / "openenv_zmq", REPO_ROOT / "broker"] + [
    REPO_ROOT / "envs" / name for name in ENV_PACKAGES
]

Graph = Mapping[str, set[str]]


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """Every import in ``module`` as (absolute origin, names taken from it): ``import a.b`` gives
    ``("a.b", [])``, ``from .a import b, c`` in package ``p`` gives ``("p.a", ["b", "c"])``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                # Relative to the package itself for an __init__, else to the module's package.
                parts = module.split(".")
                keep = len(parts) - node.level + (path.name == "__init__.py")
                origin = ".".join([*parts[:keep], *([node.module] if node.module else [])])
            found.append((origin, [alias.name for alias in node.names]))
    return found


def import_graph(package_dirs: Iterable[Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``package_dirs`` it imports."""
    files: dict[str, Path] = {}
    for package_dir in package_dirs:
        files.update(module_files(package_dir))
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for origin, names in imports(module, path):
            submodules = {f"{origin}.{name}" for name in names} & files.keys()
            targets |= submodules
            if len(submodules) < len(names) or not names:
                targets.add(origin)
        graph[module] = (targets & files.keys()) - {module}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for every strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found = []
    for component in components:
        start = min(component)
        if len(component) > 1 or start in graph.get(start, ()):
            found.append(path_back(graph, start, set(component)))
    return found


def path_back(graph: Graph, start: str, within: set[str]) -> list[str]:
    """A shortest path from ``start`` back to itself through ``within`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph.get(node, set()) & within):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def test_no_import_cycles() -> None:
    graph = import_graph(PACKAGE_DIRS)
    assert "openenv_zmq.protocol.codec" in graph
    assert "broker.core" in graph
    found = [" -> ".join(cycle) for cycle in cycles(graph)]
    assert not found, "import cycle(s): " + "; ".join(found)


def test_openenv_zmq_imports_neither_the_broker_nor_an_env_package() -> None:
    forbidden = {"broker", *ENV_PACKAGES}
    assert {"echo_env", "cartpole_env"} <= forbidden
    wrong = sorted(
        f"{module} imports {name}"
        for module, path in module_files(REPO_ROOT / "openenv_zmq").items()
        for name, _ in imports(module, path)
        if name.split(".")[0] in forbidden
    )
    assert not wrong, wrong


def test_the_client_loads_types_without_the_env_interfaces() -> None:
    # A client reads models by their module:Class path; it never needs Environment itself.
    graph = import_graph(PACKAGE_DIRS)
    client = [module for module in graph if module.startswith("openenv_zmq.client")]
    assert "openenv_zmq.client.flows" in client
    assert "openenv_zmq.registry" in graph["openenv_zmq.client.state"]
    wrong = sorted(module for module in client if "openenv_zmq.env" in graph[module])
    assert not wrong, wrong
    assert "openenv_zmq.env" not in graph["openenv_zmq.registry"]


# ---------------------------------------------------------------- the checker itself


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg import one\nfrom pkg.sub import two\n",
        "one.py": "import json\nfrom pkg.sub.two import VALUE\n",
        "sub/__init__.py": "from . import two\nfrom .two import VALUE\n",
        "sub/two.py": "VALUE = 2\n\ndef later():\n    from ..one import helper\n",
        "three.py": "import pkg.sub\nfrom pkg import sub, VERSION\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph([package])
    assert graph == {
        "pkg": {"pkg.one", "pkg.sub.two"},
        "pkg.one": {"pkg.sub.two"},
        "pkg.sub": {"pkg.sub.two"},
        "pkg.sub.two": {"pkg.one"},
        "pkg.three": {"pkg", "pkg.sub"},
    }
    assert cycles(graph) == [["pkg.one", "pkg.sub.two", "pkg.one"]]
