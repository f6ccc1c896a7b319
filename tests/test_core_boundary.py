"""core/ must stay free of QGIS: no qgis, PyQt, sip or processing import in any core module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("qgis", "PyQt4", "PyQt5", "PyQt6", "sip", "processing")
CORE_FILES = sorted((ROOT / "core").glob("*.py"))


def forbidden_imports(source: str) -> list[str]:
    """Top-level names of forbidden modules imported anywhere in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_core_has_modules():
    assert CORE_FILES, "core/ has no Python module"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_does_not_import_qgis(path: Path):
    assert forbidden_imports(path.read_text(encoding="utf-8")) == [], (
        f"{path.name} imports QGIS/Qt; keep core/ pure (move the code to processing_provider/ or ui/)"
    )


@pytest.mark.parametrize(
    "source",
    ["import qgis.core", "from qgis.PyQt.QtCore import QObject", "import sip", "from PyQt5 import QtCore",
     "import processing", "def f():\n    from qgis import utils", "importlib.import_module('qgis.core')"],
)
def test_checker_catches_forbidden_imports(source: str):
    assert forbidden_imports(source)


@pytest.mark.parametrize("source", ["import numpy", "from . import raster_io", "from .processing import x",
                                    "import osgeo.gdal", "import multiprocessing"])
def test_checker_allows_core_imports(source: str):
    assert forbidden_imports(source) == []
