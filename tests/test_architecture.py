"""The library's shape: one wing per concern, every import pointing down, small modules."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "assurexray"
# Lowest first. A module may import the base, its own wing and the wings listed before it.
# (The evaluation wing is pure numerics on predictions and needs no model; training reads it.)
BASE = {"__init__", "errors", "console", "checked_dataclasses", "jsonio", "params", "param_checks"}
WINGS = ["data", "evaluation", "training", "inference", "explain", "anomaly", "reporting", "serve"]
TOP = {"predict", "cli", "tune"}
MAX_LINES = 420


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def place(path: Path) -> str:
    """The base module, wing or top-level module a file belongs to."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_places(path: Path) -> set[str]:
    places = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                     if node.module == "assurexray" else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "assurexray" and len(parts) > 1:
                places.add(parts[1])
    return places


def rank(name: str) -> int:
    if name in BASE:
        return -1
    if name in TOP:
        return len(WINGS)
    return WINGS.index(name)


def test_every_module_has_a_known_place():
    unknown = {place(f) for f in library_files()} - BASE - TOP - set(WINGS)
    assert not unknown, f"add these to BASE, WINGS or TOP (and docs/architecture.md): {unknown}"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = place(path)
    if own in TOP:
        return
    up = {p for p in imported_places(path) - {own}
          if p not in BASE and p in WINGS + list(TOP) and rank(p) >= rank(own)}
    assert not up, f"{path.name} ({own}) imports wings above it: {sorted(up)}"


def test_wing_init_files_are_empty():
    inits = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert inits
    for init in inits:
        assert not init.read_text().strip(), f"{init} must stay empty (no re-exports)"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by concern"


def test_architecture_doc_names_every_wing():
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    present = {place(f) for f in library_files()} & set(WINGS)
    for wing in present:
        assert f"`{wing}/`" in doc, f"docs/architecture.md does not describe the {wing} wing"
