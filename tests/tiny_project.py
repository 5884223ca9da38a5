"""A tiny copy of the project in a temporary git + DVC repository (for pipeline-level tests)."""
from pathlib import Path

from test_end_to_end import TINY, init_project, merge


def make_project(root: Path, overrides: dict | None = None) -> Path:
    """Code, dvc.yaml and the tiny params (plus ``overrides``), committed; nothing run yet."""
    return init_project(root, merge(TINY, overrides or {}))
