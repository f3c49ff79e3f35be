"""The import layers of ``docs/design.md`` ("Layers"), read from the source with ``ast``.

Every import of every module under ``src/gridfield`` (module level and inside functions) is mapped to
the unit it imports (``gridfield.<unit>...``); a unit may import its own modules and the units of lower
layers. Inside a layer of several units (peers) only the edges of ``PEER_IMPORTS`` are allowed, and a
unit in ``ONLY`` may import nothing but the units listed there. A second rule: an import inside a
function defers an optional (or slow-to-import) dependency of ``OPTIONAL`` or says why on its line:
``# deferred: <reason>`` (a broken cycle, for example).
"""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "gridfield"

#: Lowest first. ``""`` is the root package ``gridfield/__init__.py`` (it re-exports ``Grid``, ``Support``).
LAYERS: list[tuple[str, ...]] = [
    ("errors", "outdir", "threads", "memory", "machine"),
    ("functional",),
    ("fast",),
    ("grids", ""),
    ("fields",),
    ("models",),
    ("presets",),
    ("checkpoints", "gtk", "render", "data", "metrics", "metrics_sdf", "report"),
    ("training",),
    ("tasks", "analyses"),
    ("viewer",),
    ("cli",),
]
#: The edges allowed between peers (units of one layer): importer -> imported units.
PEER_IMPORTS: dict[str, set[str]] = {
    "outdir": {"errors"},
    "memory": {"errors"},
    "": {"grids"},  # the root package re-exports the grid interface
    "render": {"checkpoints"},  # render/outputs.py writes NeRF checkpoints
    "data": {"render"},  # Blender scenes and the scene maker build camera rays
    "metrics_sdf": {"data"},  # ground-truth occupancy from the meshes
    "report": {"data"},  # the SDF figures draw the reference surface
    "analyses": {"tasks"},  # the analyses fit images with the image task's fit
}
#: Units narrower than their layer: they may import only these units (and their own modules).
ONLY: dict[str, set[str]] = {
    # memory: gtk_fn refuses what cannot fit with the guard's available_bytes and format_bytes
    "gtk": {"errors", "memory", "functional", "fast", "grids", "fields"},
}

#: Imports a function may defer without a comment: the ``mesh`` extra, packages used only when present,
#: build tools, and dependencies that are slow to import and needed by a few commands only (so that
#: ``import gridfield`` and ``gridfield --help`` stay light).
OPTIONAL: dict[str, str] = {
    "trimesh": "mesh extra",
    "igl": "mesh extra (libigl)",
    "embreex": "mesh extra",
    "cv2": "not a dependency: faster image resizing when installed",
    "ninja": "build tool, looked up at the first compilation",
    "torch.utils.cpp_extension": "slow to import, needed only to compile a fast path",
    "matplotlib": "slow to import, figures only",
    "imageio": "image and GIF files only",
    "PIL": "image files only (pillow)",
    "tifffile": "TIFF files only",
    "skimage": "slow to import, sample images and marching cubes only",
    "tyro": "the CLI parser",
    "tqdm": "progress bars",
    "pycolmap": "colmap extra (COLMAP sparse models)",
    "imageio_ffmpeg": "video extra (MP4 writing)",
}
#: Files the function-level rule does not check (none: every module follows it).
DEFERRED_RULE_EXCLUDED: tuple[str, ...] = ()
DEFERRED = re.compile(r"#\s*deferred:\s*\S")


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/gridfield/a/b.py`` -> ``gridfield.a.b`` (a package's ``__init__.py`` -> the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> list[tuple[ast.stmt, list[str], bool]]:
    """``(node, imported module names, inside a function)`` for every import statement of ``tree``.

    ``from a import b`` names ``a.b`` when that is a module of ``known``, else ``a``; relative imports
    are resolved against ``module``.
    """
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.append((child, [a.name for a in child.names], in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - child.level + 1]
                    base = ".".join(pkg + ([child.module] if child.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
                out.append((child, sorted(set(names)), in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return out


def unit(module: str) -> str | None:
    """The unit of a gridfield module (``gridfield.grids.dense`` -> ``grids``; the root -> ``""``), else None."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ""


def layer_of(u: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if u in layer), None)


def layer_name(i: int) -> str:
    return "/".join(u or ROOT for u in LAYERS[i])


def edge_error(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (both gridfield modules), or None when it may."""
    a, b = unit(importer), unit(imported)
    if a == b:
        return None
    la, lb = layer_of(a), layer_of(b)
    for mod, u, lay in ((importer, a, la), (imported, b, lb)):
        if lay is None:
            return f"{mod} is in no layer: add {u!r} to LAYERS in tests/test_layers.py and to docs/design.md"
    if a in ONLY and b not in ONLY[a]:
        return f"{importer} imports {imported} ({a} may import only {', '.join(sorted(ONLY[a]))})"
    if lb > la:
        return f"{importer} imports {imported} (layer {layer_name(la)} -> higher layer {layer_name(lb)})"
    if lb == la and b not in PEER_IMPORTS.get(a, set()):
        allowed = ", ".join(sorted(PEER_IMPORTS.get(a, set()))) or "none"
        return f"{importer} imports {imported} (peers in layer {layer_name(la)}: {a or ROOT} may import {allowed})"
    return None


def deferred_error(node: ast.stmt, names: list[str], lines: list[str], where: str) -> str | None:
    """Why a function-level import is not allowed, or None (optional dependency or a ``# deferred:`` comment)."""
    if any(n == opt or n.startswith(opt + ".") for n in names for opt in OPTIONAL):
        return None
    if isinstance(node, ast.ImportFrom) and any(
            f"{n}.{a.name}" == opt for n in names for a in node.names for opt in OPTIONAL):
        return None  # from torch.utils import cpp_extension
    span = lines[node.lineno - 1 : node.end_lineno]  # the statement, and a comment line right above it
    if node.lineno > 1 and lines[node.lineno - 2].strip().startswith("#"):
        span.append(lines[node.lineno - 2])
    if any(DEFERRED.search(line) for line in span):
        return None
    return (f"{where}:{node.lineno}: function-level import of {', '.join(names)}: move it to the top, "
            "or add '# deferred: <reason>'")


def check(files: dict[Path, str], src: Path = SRC) -> tuple[list[str], list[str]]:
    """``(layer violations, function-level import violations)`` of the sources ``{path: text}``."""
    known = {module_name(p, src) for p in files}
    layers, deferred = [], []
    for path, text in sorted(files.items()):
        mod, rel = module_name(path, src), path.relative_to(src).as_posix()
        check_deferred = not any(fnmatch(rel, pat) for pat in DEFERRED_RULE_EXCLUDED)
        lines = text.splitlines()
        for node, names, in_function in imports(ast.parse(text, str(path)), mod, path.name == "__init__.py", known):
            layers += [e for n in names if unit(n) is not None and (e := edge_error(mod, n))]
            if in_function and check_deferred and (e := deferred_error(node, names, lines, rel)):
                deferred.append(e)
    return layers, deferred


@pytest.fixture(scope="module")
def sources() -> dict[Path, str]:
    files = {p: p.read_text() for p in sorted((SRC / ROOT).rglob("*.py"))}
    assert len(files) > 40, f"expected the gridfield sources under {SRC / ROOT}"
    return files


def test_no_module_imports_a_higher_layer(sources):
    layers, _ = check(sources)
    assert not layers, "import edges against the layer order (docs/design.md, Layers):\n" + "\n".join(layers)


def test_function_level_imports_defer_an_optional_dependency_or_say_why(sources):
    _, deferred = check(sources)
    assert not deferred, "\n".join(deferred)


def test_the_checker_sees_what_it_should(tmp_path):
    """A fake tree: upward edges at module and function level, relative imports, peers, ONLY, the comment."""
    fake = {
        "gridfield/__init__.py": "from gridfield.grids.base import Grid\n",
        "gridfield/grids/__init__.py": "",
        "gridfield/grids/base.py": "from . import dense\nfrom ..errors import InputError\n",
        "gridfield/grids/dense.py": "import torch\n\ndef f():\n    from gridfield.models import build_field\n",
        "gridfield/errors.py": "from gridfield import grids\n",
        "gridfield/gtk/__init__.py": "from gridfield.models import make_grid\nfrom gridfield.grids import base\n",
        "gridfield/data/meshes.py": "def f():\n    import trimesh.ray\n    from gridfield.report import figures\n",
        "gridfield/report/figures.py": (
            "from gridfield.data import meshes\n\n"
            "def g():\n    # deferred: breaks a cycle\n    from gridfield.fields import Field\n"
            "    from torch.utils import cpp_extension\n    import numpy\n"),
        "gridfield/fields/__init__.py": "",
        "gridfield/models.py": "",
        "gridfield/newthing.py": "from gridfield.errors import InputError\n",
    }
    files = {}
    for rel, text in fake.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files[path] = text
    layers, deferred = check(files, tmp_path)
    assert sorted(layers) == sorted([
        "gridfield.grids.dense imports gridfield.models (layer grids/gridfield -> higher layer models)",
        "gridfield.errors imports gridfield.grids "
        "(layer errors/outdir/threads/memory/machine -> higher layer grids/gridfield)",
        "gridfield.gtk imports gridfield.models (gtk may import only errors, fast, fields, functional, grids, memory)",
        "gridfield.data.meshes imports gridfield.report.figures (peers in layer "
        "checkpoints/gtk/render/data/metrics/metrics_sdf/report: data may import render)",
        "gridfield.newthing is in no layer: add 'newthing' to LAYERS in tests/test_layers.py and to docs/design.md",
    ])
    assert sorted(deferred) == sorted([
        "gridfield/grids/dense.py:4: function-level import of gridfield.models: move it to the top, "
        "or add '# deferred: <reason>'",
        "gridfield/data/meshes.py:3: function-level import of gridfield.report.figures: move it to the top, "
        "or add '# deferred: <reason>'",
        "gridfield/report/figures.py:7: function-level import of numpy: move it to the top, "
        "or add '# deferred: <reason>'",
    ])
