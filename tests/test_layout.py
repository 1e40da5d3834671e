"""The library's shape: no import cycles between sscjax's modules (data flows io -> data -> models -> engine ->
cascade/explain -> cli), counting the imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import sscjax

ROOT = Path(sscjax.__file__).parent


def imported_names() -> dict[str, set[str]]:
    """{module: every sscjax name it imports (modules, or module.attribute)}, from the source of every module under
    sscjax/."""
    paths = {}
    for path in ROOT.rglob("*.py"):
        parts = ("sscjax", *path.relative_to(ROOT).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sscjax"):
                found[name] |= {str(node.module)} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found[name] |= {a.name for a in node.names if a.name.startswith("sscjax")}
    return found


def module_imports() -> dict[str, set[str]]:
    """{module: the sscjax modules it imports}; `from a import b` imports a (its __init__ runs) and b if a module.
    A module's own packages are left out: Python has started them before the module, whatever it imports."""
    found = imported_names()
    return {
        name: {n for n in names if n in found and n != name and not name.startswith(n + ".")}
        for name, names in found.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_library_imports_itself_through_others():
    graph = module_imports()
    assert {"sscjax.train", "sscjax.runs", "sscjax.run_files", "sscjax.models"} <= set(graph)
    assert "sscjax.runs" in graph["sscjax.run_files"]
    assert find_cycle(graph) == []


def test_the_library_never_imports_the_cli():
    assert not [name for name, names in imported_names().items() if any(n.startswith("sscjax.cli") for n in names)]


# The library's layers, lowest first: a module imports only from its own layer and those below it.
LAYERS = (
    ("errors", "domain", "configs", "networks", "io", "metrics", "quality", "results"),  # settings, files, numbers
    ("lung",),
    ("data", "phantom", "runs", "plots", "report", "scan_report"),  # cohorts, splits, slices, batches, figures, pages
    ("models",),
    ("train", "run_files", "provenance", "heatmaps"),  # the engine, run folders, the heat-map engine
    ("lnet", "snet", "authors_runs"),  # the two networks' tasks and inference
    ("cascade", "explain"),  # what users run
    ("dicom_out",),  # their results as DICOM objects for PACS
)


def layer_of(module: str) -> int:
    """The index in LAYERS of an sscjax module (by its first name under sscjax)."""
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_imports_flow_one_way_from_files_to_what_users_run():
    graph = {name: names for name, names in module_imports().items() if name != "sscjax"}
    assert {n.split(".")[1] for n in graph} == {top for names in LAYERS for top in names}
    upward = [(a, b) for a, names in graph.items() for b in names if layer_of(b) > layer_of(a)]
    assert upward == []
    assert layer_of("sscjax.cascade") > layer_of("sscjax.snet") > layer_of("sscjax.models") > layer_of("sscjax.io")
