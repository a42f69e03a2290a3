"""The package's size and layering, as figures that can be compared from one commit to another.

    .venv/bin/python benchmarks/layering.py                 # this checkout
    .venv/bin/python benchmarks/layering.py /path/to/clone  # another checkout (say, a git worktree at an old commit)
    .venv/bin/python benchmarks/layering.py --list          # and the modules behind each figure

Reads the sources only (Python's `ast`; nothing is imported), so any commit can be measured with
any interpreter. The figures:

- modules: the `.py` files under `simpsons/`;
- lines: their lines, as `wc -l` counts them;
- imports: the import edges between those modules (one per importing module and imported module);
- imports running back up: the edges that lie on a cycle, i.e. from a module to one that itself
  imports it, directly or through a chain (the edges inside a strongly connected component of the
  import graph); no cycle, no edge running back up, whatever order the layers are drawn in;
- modules in cycles: the modules those edges join;
- imports running back up between folders: the same, with each subpackage of `simpsons/` taken as
  one unit (a loop through folders, like data -> checks -> tracking/ -> data, where no module
  imports itself back): the module edges between two units that lie on a cycle of units;
- modules a DictConfig reaches: modules with a function that takes a parameter annotated
  `DictConfig` (Hydra's untyped config), and, the looser count, modules that name `DictConfig` at all.

An edge is what runs: imports inside functions count, those under `if TYPE_CHECKING:` do not.
`from simpsons.pkg import name` is an edge to `simpsons.pkg.name` when that is a module, else to
`simpsons.pkg`. The implicit import of a package's `__init__` on the way to a submodule is not an
edge: every submodule would otherwise close a cycle with a package that re-exports it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "simpsons"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted((root / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: anywhere, but under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _resolve_relative(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    base = name.split(".") if is_package else name.split(".")[:-1]
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports."""
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        source = _resolve_relative(name, node, path.name == "__init__.py") if node.level else node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            targets.add(submodule if submodule in known else source)
    return {target for target in targets if target in known and target != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the graph's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def edges_back_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The import edges that lie on a cycle: both ends in one strongly connected component."""
    component_of = {}
    for number, component in enumerate(strongly_connected(graph)):
        for member in component:
            component_of[member] = number
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if component_of[source] == component_of[target]
    )


def unit_of(module: str) -> str:
    """The top-level module or subpackage of `simpsons` that `module` is, or lies in."""
    return ".".join(module.split(".")[:2])


def edges_back_up_between_units(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The module edges between two units (subpackages or top-level modules) that lie on a cycle of units."""
    units: dict[str, set[str]] = {}
    for source, targets in graph.items():
        units.setdefault(unit_of(source), set()).update(unit_of(target) for target in targets)
    for unit, targets in units.items():
        targets.discard(unit)
    loops = {(source, target) for source, target in edges_back_up(units)}
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if (unit_of(source), unit_of(target)) in loops
    )


def _annotation_names_dictconfig(annotation: ast.expr | None) -> bool:
    return annotation is not None and "DictConfig" in ast.unparse(annotation)


def dictconfig_modules(root: Path) -> tuple[list[str], list[str]]:
    """(modules with a function taking a DictConfig parameter, modules naming DictConfig at all)."""
    taking, naming = [], []
    for name, path in modules(root).items():
        source = path.read_text()
        if "DictConfig" not in source:
            continue
        naming.append(name)
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                arguments = node.args
                every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                if any(_annotation_names_dictconfig(getattr(argument, "annotation", None)) for argument in every):
                    taking.append(name)
                    break
    return taking, naming


def figures(root: Path) -> dict[str, object]:
    found = modules(root)
    graph = import_graph(root)
    back = edges_back_up(graph)
    taking, naming = dictconfig_modules(root)
    return {
        "modules": len(found),
        "lines": sum(len(path.read_bytes().splitlines()) for path in found.values()),
        "imports": sum(len(targets) for targets in graph.values()),
        "imports running back up": back,
        "modules in cycles": sorted({module for edge in back for module in edge}),
        "imports running back up between folders": edges_back_up_between_units(graph),
        "modules taking a DictConfig": taking,
        "modules naming DictConfig": naming,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--list", action="store_true", help="name the edges and modules behind each count")
    args = parser.parse_args()
    if not (args.root / PACKAGE).is_dir():
        print(f"error: {args.root} has no {PACKAGE}/ folder; give the root of a checkout", file=sys.stderr)
        return 2
    for key, value in figures(args.root).items():
        count = len(value) if isinstance(value, list) else value
        print(f"{key}: {count}")
        if args.list and isinstance(value, list):
            for item in value:
                print(f"    {' -> '.join(item) if isinstance(item, tuple) else item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
