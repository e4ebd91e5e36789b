"""The package's import graph, measured over ``ast`` (issue "A house a newcomer can find their way in").

Every ``import latentcomm.x`` / ``from latentcomm.x import y`` / ``from latentcomm import x`` between
the package's modules is an edge (counted once per pair of modules; those inside functions are
counted apart too). Cycles are the strongly connected components of more than one module. Layers:
a module that imports nothing of the package is layer 0, any other is one above the highest module
it imports, computed on the graph with each cycle folded into one node; the imports that point back
up are those inside a cycle that a depth-first walk from the lowest modules meets as back edges (the
fewest to drop to break every cycle, by that walk).

    python -m benchmarks.import_graph [--json PATH]

Measured before the move (2026-12-04): 46 modules in 7 layers, 171 imports, 3 cycles (the five
training modules; learned <-> learned_context; codecs <-> video), 9 imports pointing back up.
After it (2026-12-07): 64 modules in 7 layers, 206 imports, no cycle, none pointing back up; 78 import
statements inside functions (the commands load the library only after their flags parse; torch, PyAV,
starlette, paho, diffusers and the other heavy or optional packages load where they are used).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, write_results

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "latentcomm"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every package import of one module."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name.split(".")[0] == PACKAGE)
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                if child.level:  # relative: resolve against this module's package
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - child.level + 1] + [child.module])
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in known else base, inner))
            visit(child, inner)

    visit(tree, False)
    return [(target, inner) for target, inner in found if target in known and target != name]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    out.append(sorted(component))
    return out


def back_edges(graph: dict[str, set[str]], members: set[str]) -> list[tuple[str, str]]:
    """A depth-first walk of one cycle's modules, from the one that imports the fewest others of it:
    the imports it meets pointing at a module still on its path."""
    seen: set[str] = set()
    active: set[str] = set()
    out: list[tuple[str, str]] = []

    def walk(node: str) -> None:
        seen.add(node)
        active.add(node)
        for t in sorted(graph[node] & members):
            if t in active:
                out.append((node, t))
            elif t not in seen:
                walk(t)
        active.discard(node)

    for start in sorted(members, key=lambda m: (len(graph[m] & members), m)):
        if start not in seen:
            walk(start)
    return out


def measure(root: Path = REPO) -> dict:
    mods = modules(root)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    in_functions = 0
    for name, path in mods.items():
        for target, inner in imports(name, path, known):
            graph[name].add(target)
            in_functions += inner
    components = strongly_connected(graph)
    group = {m: i for i, comp in enumerate(components) for m in comp}
    layer: dict[int, int] = {}
    for i, comp in enumerate(components):  # Tarjan emits components dependencies first
        deps = {group[t] for m in comp for t in graph[m]} - {i}
        layer[i] = 1 + max((layer[d] for d in deps), default=-1)
    cycles = [comp for comp in components if len(comp) > 1]
    back: list[tuple[str, str]] = []
    for comp in cycles:
        back += back_edges(graph, set(comp))
    edges = sum(len(v) for v in graph.values())
    return {
        "modules": len(mods),
        "imports": edges,
        "imports_inside_functions": in_functions,
        "layers": 1 + max(layer.values(), default=0),
        "cycles": cycles,
        "imports_pointing_back_up": [f"{a} -> {b}" for a, b in back],
        "layer_of": {m: layer[group[m]] for m in sorted(mods)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "import_graph.json",
        help="where to write the figures",
    )
    args = p.parse_args(argv)
    r = measure()
    print(f"{r['modules']} modules in {r['layers']} layers, {r['imports']} imports between them "
          f"({r['imports_inside_functions']} of the import statements inside functions), "
          f"{len(r['cycles'])} cycles, {len(r['imports_pointing_back_up'])} imports pointing back up")  # fmt: skip
    for comp in r["cycles"]:
        print("  cycle:", " <-> ".join(comp))
    for edge in r["imports_pointing_back_up"]:
        print("  back up:", edge)
    write_results(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
