"""The import graph of the verifiers (`reward_fns`) and the task layer (`rl2f_plugin.tasks`) stays layered.

Read from the source with `ast` (every ``import`` statement, at module level and inside functions), so it
needs nothing imported:

* no module of `reward_fns` but `reward_fns.verl_reward` (verl's entry point, which looks tasks up) imports
  `rl2f_plugin`: the verifiers are the lowest layer and ``reward_fns/__init__`` must not pull the plugin in;
* `rl2f_plugin.tasks.registry` does not import `rl2f_plugin.tasks.builtin` (the package imports the built-in
  tasks after the registry);
* no cycle among these modules, counting that importing a module first runs its packages' ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("reward_fns", "rl2f_plugin/tasks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).glob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names of the modules `path` imports (``from pkg import mod`` counts as importing ``pkg.mod``
    when that is a module of ours)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    out.discard("__future__")
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_parser_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "rl2f_plugin.tasks" in graph["reward_fns.verl_reward"]  # imported inside compute_score
    assert "reward_fns.math_verifier" in graph["rl2f_plugin.tasks.builtin"]  # inside methods
    assert "rl2f_plugin.tasks.registry" in graph["rl2f_plugin.tasks.builtin"]  # relative, module level
    assert "rl2f_plugin.tasks.builtin" in graph["rl2f_plugin.tasks"]  # ``from . import builtin``


def test_verifiers_do_not_import_the_plugin():
    offenders = {name: sorted(i for i in imports if i == "rl2f_plugin" or i.startswith("rl2f_plugin."))
                 for name, imports in _graph().items()
                 if name.startswith("reward_fns") and name != "reward_fns.verl_reward"}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert _graph()["reward_fns"] == set()  # the package __init__ imports nothing at all


def test_registry_does_not_import_builtin():
    assert "rl2f_plugin.tasks.builtin" not in _graph()["rl2f_plugin.tasks.registry"]


def _edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module -> the modules of ours its imports run. Importing ``a.b.c`` first runs the ``__init__`` of ``a``
    and ``a.b``, unless the importer is inside that package (then it is already being imported)."""
    known = set(graph)
    edges: dict[str, set[str]] = {}
    for name, imports in graph.items():
        own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 2)}  # its packages and itself
        parts_of = ({".".join(t.split(".")[:k]) for k in range(1, t.count(".") + 2)} for t in imports)
        edges[name] = {m for parts in parts_of for m in parts if m in known and m not in own}
    return edges


def test_no_import_cycle():
    edges = _edges(_graph())
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
