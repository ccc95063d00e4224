"""House rules that keep the code's shape (see shared/STYLE.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import napari_lit

SRC = Path(napari_lit.__file__).parent


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_core_and_bench_import_neither_qt_nor_napari():
    banned = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui")
    for sub in ("core", "bench", "models", "io", "training"):
        for path in (SRC / sub).rglob("*.py"):
            for mod in _imports(path):
                assert mod.split(".")[0] not in banned, f"{path.relative_to(SRC)} imports {mod}"


def test_plugin_import_is_light():
    """Discovering the plugin must not import torch, sam2 or napari."""
    code = (
        "import sys, napari_lit, napari_lit.cli, napari_lit.models, napari_lit.io;"
        "print(sorted(m for m in ('torch', 'sam2', 'napari', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(SRC / "napari.yaml")
    assert manifest.name == "napari-lit"
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))


def test_sample_data_has_ground_truth():
    from napari_lit._sample_data import synthetic_timelapse, synthetic_zstack

    for layers in (synthetic_timelapse(), synthetic_zstack()):
        (image, _, kind_i), (labels, _, kind_l) = layers
        assert kind_i == "image" and kind_l == "labels"
        assert image.shape == labels.shape and image.ndim == 3 and labels.max() > 0


PUBLIC_MODULES = [
    "napari_lit.core.frames", "napari_lit.core.zoom", "napari_lit.bench.flow", "napari_lit.core.tracker", "napari_lit.core.store",
    "napari_lit.core.adaptation", "napari_lit.core.session", "napari_lit.core.folder", "napari_lit.bench.interactive",
    "napari_lit.models.catalogue", "napari_lit.models.build", "napari_lit.models.trunk",
    "napari_lit.io.readers", "napari_lit.io.dataset", "napari_lit.io.tracks",
    "napari_lit.bench.metrics", "napari_lit.bench.runner", "napari_lit.bench.report",
    "napari_lit.bench.correction_report", "napari_lit.bench.tracking",
    "napari_lit.training.synthetic", "napari_lit.training.recipe", "napari_lit.training.real",
    "napari_lit.training.masked", "napari_lit.training.motion", "napari_lit.cli",
]


def _public_callables():
    import importlib
    import inspect

    for name in PUBLIC_MODULES:
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if inspect.isfunction(obj):
                yield f"{name}.{attr}", obj
            elif inspect.isclass(obj) and obj.__module__ == name and not issubclass(obj, Exception):
                yield f"{name}.{attr}", obj
                for meth_name, meth in vars(obj).items():
                    if meth_name.startswith("_") or not inspect.isfunction(getattr(meth, "__func__", meth)):
                        continue
                    yield f"{name}.{attr}.{meth_name}", getattr(meth, "__func__", meth)


def test_every_public_parameter_is_documented():
    """numpydoc rule of the house style: every parameter of a public callable is described."""
    import inspect

    missing = []
    for qualname, obj in _public_callables():
        doc = inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            params = inspect.signature(obj.__init__).parameters
        else:
            params = inspect.signature(obj).parameters
        if not doc.strip():
            missing.append(f"{qualname}: no docstring")
            continue
        for p in params:
            if p in ("self", "cls") or p.startswith("_"):
                continue
            if p not in doc:
                missing.append(f"{qualname}: {p}")
    assert not missing, "undocumented:\n" + "\n".join(missing)


def test_readme_test_command_is_the_one_ci_runs():
    root = SRC.parents[1]
    ci = (root / ".ci" / "run").read_text().strip().splitlines()
    command = ci[-1].strip()
    assert command.startswith(".venv/bin/python -m pytest")
    assert command in (root / "README.md").read_text()
    assert "bash scripts/install.sh" in ci and "bash scripts/install.sh" in (root / "README.md").read_text()
