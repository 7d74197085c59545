"""The house rules of the layered layout, read from the source with ast (nothing is imported).

Layers, lowest first: errors/_version → engine → theory → models → app → viz → studies, bench →
cli → the package root. A module may import its own layer or a lower one, never a higher one, and
tokendyn's modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tokendyn"

RANK = {
    "errors": 0,
    "_version": 0,
    "engine": 1,
    "theory": 2,
    "models": 3,
    "app": 4,
    "viz": 5,
    "studies": 6,
    "bench": 6,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,
}


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is_package) for every module under `root`."""
    out = {}
    for path in root.rglob("*.py"):
        parts = ["tokendyn", *path.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imports(name: str, path: Path, is_pkg: bool, known: set[str]) -> set[str]:
    """tokendyn modules imported by `name` (the deepest known module of each import; imports
    under `if TYPE_CHECKING:` do not run and are skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for sub in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, is_pkg, set(mods)) for name, (path, is_pkg) in mods.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(edges: dict[str, set[str]]) -> list[str]:
    """'a → b' for every import of a higher layer; unknown top-level modules are violations too."""
    out = []
    for source, targets in sorted(edges.items()):
        if layer(source) not in RANK:
            out.append(f"{source}: not in any layer (add it to a layer folder)")
            continue
        for target in sorted(targets):
            if RANK.get(layer(target), 99) > RANK[layer(source)]:
                out.append(f"{source} → {target}")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative). A package's
    __init__ re-exporting its own submodules is not a design cycle: those edges are left out."""
    edges = {src: {t for t in tgts if not t.startswith(src + ".")} for src, tgts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_a_higher_layer():
    assert violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tokendyn"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # the engine reaching up into the application layer
            {
                "engine/__init__.py": "",
                "engine/space.py": "from tokendyn.app.config import X\n",
                "app/__init__.py": "",
                "app/config.py": "X = 1\n",
            },
            ["tokendyn.engine.space → tokendyn.app.config"],
        ),
        (  # a relative import two levels up into the CLI
            {
                "theory/__init__.py": "",
                "theory/dmft/__init__.py": "",
                "theory/dmft/model.py": "from ...cli import app\n",
                "cli/__init__.py": "app = 1\n",
            },
            ["tokendyn.theory.dmft.model → tokendyn.cli"],
        ),
        ({"engine/__init__.py": "", "loose.py": ""}, ["tokendyn.loose: not in any layer"]),
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path, files, expected):
    found = violations(graph(_plant(tmp_path, files)))
    assert [f.split(" (")[0] for f in found] == expected


def test_a_planted_cycle_is_caught(tmp_path):
    root = _plant(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/a.py": "from tokendyn.engine import b\n",
            "engine/b.py": "from tokendyn.engine.a import f\n",
        },
    )
    assert cycles(graph(root)) == [["tokendyn.engine.a", "tokendyn.engine.b"]]


def test_type_checking_imports_are_ignored(tmp_path):
    root = _plant(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/a.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from tokendyn.app.x import Y\n",
            "app/__init__.py": "",
            "app/x.py": "Y = 1\n",
        },
    )
    assert violations(graph(root)) == []
