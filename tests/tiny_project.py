"""A tiny copy of the project in a temporary git + DVC repository (for pipeline-level tests)."""
import shutil
from pathlib import Path

import yaml

from test_end_to_end import REPO, TINY, run


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values, nested mappings merged, new keys added."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project(root: Path, overrides: dict | None = None) -> Path:
    """Code, dvc.yaml and the tiny params (plus ``overrides``), committed; nothing run yet."""
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY),
                   overrides or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.org"], root)
    run(["git", "config", "user.name", "ci"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root
