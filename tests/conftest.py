"""Shared fixtures: the real BTXRD reference files and a tiny synthetic twin."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_btxrd() -> Path:
    return shared_btxrd_dir()


def shared_btxrd_dir() -> Path:
    """The real BTXRD reference files: ../shared/btxrd beside the clone, or $ASSUREXRAY_SHARED.

    A fresh clone without them skips these tests with the reason shown in the summary
    (``pytest -rs``); under CI (``CI=true``, where they are always present) a missing copy fails.
    """
    path = Path(os.environ.get("ASSUREXRAY_SHARED") or REPO.parent / "shared") / "btxrd"
    if not (path / "dataset.csv").exists():
        reason = (f"{path} is missing: the real BTXRD reference files are not beside this clone "
                  "(set ASSUREXRAY_SHARED to the folder holding btxrd/)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory) -> Path:
    """A small BTXRD twin (with planted defects) generated once per test session."""
    from assurexray.data.synthetic.writer import generate_twin

    root = tmp_path_factory.mktemp("twin")
    return generate_twin(root, n_images=60, seed=7, defects=True, min_side=160, max_side=320)
