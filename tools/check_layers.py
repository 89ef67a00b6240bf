"""Checks that the parts of the alphagrad package depend on each other in one direction only.

Every module of the package is parsed, imports inside functions included (also
``importlib.import_module("alphagrad....")`` with a literal name). Each module belongs to a part
(the first name under ``alphagrad``), and the parts sit on floors:

    floor 0  errors, files, version
    floor 1  graph         (IR, tracing, cost models, the elimination engine, the classic orders)
    floor 2  tasks, orders
    floor 3  env
    floor 4  interpreter, agents   (these two must not import each other)
    floor 5  cli

An offence is
  * an import of a part on a higher floor (``upward``), or between interpreter and agents;
  * an import of another part's private module or name (``alphagrad.X._y`` from outside X);
  * an import of the package root ``alphagrad`` itself (``import alphagrad``,
    ``from alphagrad import __version__``); ``from alphagrad import graph`` names the part graph.
    The root ``alphagrad/__init__.py`` is a facade: it may import everything;
  * every import that closes an import cycle between parts;
  * a module in no part of the table (add the part to `FLOORS`).

    python tools/check_layers.py [PACKAGE_DIR]      # default: alphagrad/ beside tools/

Prints each offence as ``file:line: message`` and exits 1, or says the floors hold and exits 0.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

PACKAGE = "alphagrad"

#: The floor of each part; a part may import parts on its own floor or below.
FLOORS = {
    "errors": 0,
    "files": 0,
    "version": 0,
    "graph": 1,
    "tasks": 2,
    "orders": 2,
    "env": 3,
    "interpreter": 4,
    "agents": 4,
    "cli": 5,
}
#: Parts on one floor that must not import each other.
APART = (frozenset({"interpreter", "agents"}),)
ROOT = "(root)"


@dataclasses.dataclass(frozen=True, order=True)
class Offence:
    """One import that breaks the floors, at ``path:line``."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclasses.dataclass(frozen=True)
class _Import:
    path: str  # the importing file, as shown
    line: int
    source: str  # the importing module's part (or ROOT)
    target: str  # the dotted name imported: a module, or a module and a name in it


def _module_name(package_dir: str, path: str) -> str:
    """``alphagrad.graph._cost`` for ``<package_dir>/graph/_cost.py``; a package is its ``__init__``."""
    rel = os.path.relpath(path, package_dir)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join([PACKAGE, *rel])


def _part(module: str) -> str:
    bits = module.split(".")
    return ROOT if len(bits) == 1 else bits[1]


def _literal_import(node: ast.Call) -> str | None:
    """The module name of ``importlib.import_module("...")`` / ``__import__("...")`` with a literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _imports(package_dir: str, path: str, shown: str) -> Iterator[_Import]:
    """Every import of `path` (at any depth of the syntax tree) of a name under the package."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    module = _module_name(package_dir, path)
    source = _part(module)
    # The package that relative imports start from.
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                bits = package.split(".")
                base = ".".join(bits[: len(bits) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == PACKAGE:  # `from alphagrad import graph` imports the part graph
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:  # the module, and the names in it that are private (a private submodule, say)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Call):
            literal = _literal_import(node)
            targets = [literal] if literal else []
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield _Import(shown, node.lineno, source, target)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_part(package_dir: str, name: str) -> bool:
    return os.path.isfile(os.path.join(package_dir, name + ".py")) or os.path.isfile(
        os.path.join(package_dir, name, "__init__.py")
    )


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one part (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def check(package_dir: str) -> list[Offence]:
    """The offences of the package in `package_dir` (the directory holding its ``__init__.py``), sorted."""
    package_dir = os.path.abspath(package_dir)
    offences: list[Offence] = []
    between: list[_Import] = []  # imports from one part into another, for the cycles
    for directory, subdirs, files in os.walk(package_dir):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, name)
            shown = os.path.relpath(path)
            shown = path if shown.startswith("..") else shown
            module = _module_name(package_dir, path)
            if _part(module) not in FLOORS and _part(module) != ROOT:
                offences.append(Offence(shown, 1, f"{module} is in no part of the floor table; add "
                                                  f"{_part(module)!r} to FLOORS in tools/check_layers.py"))
                continue
            for imp in _imports(package_dir, path, shown):
                offences += _judge(package_dir, imp)
                dst = _part(imp.target)
                if imp.source != ROOT and dst in FLOORS and dst != imp.source:
                    between.append(imp)
    edges: dict[str, set[str]] = {}
    for imp in between:
        edges.setdefault(imp.source, set()).add(_part(imp.target))
    for component in _cycles(edges):
        names = ", ".join(sorted(component))
        for imp in between:
            if imp.source in component and _part(imp.target) in component:
                offences.append(Offence(imp.path, imp.line, f"{imp.source} imports {_part(imp.target)} "
                                                            f"({imp.target}), in the import cycle between {names}"))
    return sorted(set(offences))


def _judge(package_dir: str, imp: _Import) -> list[Offence]:
    """The offences of one import, apart from cycles."""
    if imp.source == ROOT:  # the facade may import everything
        return []
    dst = _part(imp.target)
    here = f"{imp.source} (floor {FLOORS[imp.source]}) imports {imp.target}"
    if dst == ROOT or (dst not in FLOORS and not _is_part(package_dir, dst)):
        return [Offence(imp.path, imp.line, f"{here}, from the package root; import it from the part that "
                                            "defines it (the root imports everything)")]
    if dst not in FLOORS:
        return [Offence(imp.path, imp.line, f"{here}, a part in no floor of FLOORS")]
    if dst == imp.source:
        return []
    found = []
    if any(_private(b) for b in imp.target.split(".")[2:]):
        found.append(f"{here}, private to {dst}; make what it needs public in alphagrad.{dst} (in __all__)")
    if FLOORS[dst] > FLOORS[imp.source]:
        found.append(f"{here}, upward (floor {FLOORS[dst]})")
    elif frozenset({imp.source, dst}) in APART:
        found.append(f"{here}; {imp.source} and {dst} must not import each other")
    return [Offence(imp.path, imp.line, message) for message in found]


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the offences; returns 1 if there are any, else 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    package_dir = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", PACKAGE)
    if not os.path.isfile(os.path.join(package_dir, "__init__.py")):
        print(f"{package_dir} is not a package directory (no __init__.py)", file=sys.stderr)
        return 2
    offences = check(package_dir)
    for offence in offences:
        print(offence)
    if offences:
        print(f"{len(offences)} import(s) break the floors", file=sys.stderr)
        return 1
    print("the floors hold: every import points down (or within its part), no cycles, no private imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
