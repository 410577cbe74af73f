"""The layout holds: imports go downwards only, no cycles between packages, no file over 500 lines.

Every ``import`` in ``modules/`` counts, including the ones inside functions: a lazy import is still
a dependency.  Layers, lowest first (a unit may import its own layer's other units or lower ones, and
the unit graph has no cycle):

0. the face library: records, errors, private files, images, detection, alignment, embedders, the TensorFlow ArcFace,
   matching, attributes, configs;
1. storage (the SQL layer: gallery, jobs, keys) and the settings tree;
2. the recognizer (the one recognition path over the library and a gallery store);
3. video compute and the batch folder run;
4. the job system;
5. the HTTP API; 6. the browser pages, the web service that joins them to the API and the server options
   (waitress, gunicorn); 7. the command lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "modules"

LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ["errors", "face", "files", "resources", "config", "images", "alignment", "detection", "embedders", "arcface_tf",
         "matching", "attributes"],
        0,
    ),
    "storage": 1,
    "settings": 1,
    "recognizer": 2,
    "video": 3,
    "batch": 3,
    "jobs": 4,
    "api": 5,
    "ui": 6,
    "server": 6,
    "web": 6,
    "cli": 7,
    "worker": 7,
}
LIBRARY = {u for u, layer in LAYERS.items() if layer == 0}
FORBIDDEN_FOR_LIBRARY = ("sqlalchemy", "alembic", "psycopg", "flask", "flask_openapi3", "waitress", "rq", "redis")


def _unit(module: str) -> str:
    """``modules.api.auth`` -> ``api``; ``modules.recognizer`` -> ``recognizer``."""
    return module.split(".")[1]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of everything ``path`` imports, in functions too (relative imports resolved)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                target = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "modules").rglob("*.py") if "migrations" not in p.parts)


def _unit_graph(root: Path = ROOT) -> dict[str, dict[str, set[str]]]:
    """``{unit: {imported unit: {importing files}}}`` between different units of ``modules``."""
    top = root / "modules" / "__init__.py"
    units = {_unit(_module_name(p, root)) for p in _sources(root) if p != top}
    graph: dict[str, dict[str, set[str]]] = {}
    for path in _sources(root):
        if path == root / "modules" / "__init__.py":
            continue
        src = _unit(_module_name(path, root))
        for target in _imports(path, root):
            if target.startswith("modules.") and (dst := _unit(target)) in units and dst != src:
                graph.setdefault(src, {}).setdefault(dst, set()).add(str(path.relative_to(root)))
    return graph


def _upward(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    return [
        f"{src} (layer {LAYERS.get(src)}) imports {dst} (layer {LAYERS.get(dst)}) in {sorted(files)}"
        for src, deps in graph.items()
        for dst, files in deps.items()
        if LAYERS.get(dst, 99) > LAYERS.get(src, -1)
    ]


def _cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    edges = {src: sorted(deps) for src, deps in graph.items()}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                if min(cycle[:-1]) == cycle[0]:  # each cycle once, from its smallest unit
                    found.append(cycle)
            else:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _sources() if p != MODULES / "__init__.py"}
    assert units - set(LAYERS) == set(), "add new packages to LAYERS (and the docstring)"


def test_imports_only_go_down():
    assert _upward(_unit_graph()) == []


def test_no_cycles_between_units():
    assert _cycles(_unit_graph()) == []


@pytest.mark.parametrize("forbidden", FORBIDDEN_FOR_LIBRARY)
def test_the_face_library_needs_no_database_http_or_queue(forbidden):
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if p != MODULES / "__init__.py" and _unit(_module_name(p)) in LIBRARY
        and any(i == forbidden or i.startswith(forbidden + ".") for i in _imports(p))
    ]
    assert offenders == []


def test_no_module_shadows_the_standard_library():
    import sys

    names = {p.stem for p in _sources()} | {p.name for p in MODULES.rglob("*") if p.is_dir()}
    assert sorted(names & set(sys.stdlib_module_names)) == []


def test_no_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_the_checks_find_upward_imports_and_cycles(tmp_path):
    """A scratch tree with a lazy upward import and a cycle: both are reported."""
    pkg = tmp_path / "modules"
    (pkg / "storage").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "storage" / "__init__.py").write_text("")
    (pkg / "storage" / "gallery.py").write_text("def f():\n    from ..api import create_app\n")
    (pkg / "api.py").write_text("from .storage import gallery\n")
    (pkg / "errors.py").write_text("from modules.storage.gallery import f\n")
    graph = _unit_graph(tmp_path)
    assert graph == {
        "storage": {"api": {"modules/storage/gallery.py"}},
        "api": {"storage": {"modules/api.py"}},
        "errors": {"storage": {"modules/errors.py"}},
    }
    assert len(_upward(graph)) == 2  # storage -> api, errors -> storage
    assert _cycles(graph) == [["api", "storage", "api"]]
