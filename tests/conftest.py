"""Shared fixtures: the real BTXRD reference files and a tiny synthetic twin."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_btxrd() -> Path:
    """../shared/btxrd beside the repository (present here and in CI, never at run time)."""
    path = REPO.parent / "shared" / "btxrd"
    if not (path / "dataset.csv").exists():
        raise RuntimeError(f"{path} is missing: the tests need ../shared/btxrd beside the clone")
    return path


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory) -> Path:
    """A small BTXRD twin (with planted defects) generated once per test session."""
    from assurexray.data.synthetic.writer import generate_twin

    root = tmp_path_factory.mktemp("twin")
    return generate_twin(root, n_images=60, seed=7, defects=True, min_side=160, max_side=320)
