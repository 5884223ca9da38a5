"""dvc.yaml is the single source of truth: every stage depends on the code it runs."""
import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]


def module_file(dotted: str) -> Path | None:
    """The source file of an ``assurexray`` module or package, if it exists."""
    base = SRC.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Library files a file imports, followed transitively (nested wings included).

    ``from assurexray.data import schema`` names the module ``data/schema.py``; ``from
    assurexray import NOT_FOR_CLINICAL_USE`` names the package file that defines it. Empty
    ``__init__.py`` files hold no code and are not counted.
    """
    seen: set[Path] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
                names = [n if module_file(n) else node.module for n in names]
            for name in names:
                if not name.startswith("assurexray"):
                    continue
                file = module_file(name)
                if file and file not in seen and file.stat().st_size:
                    seen.add(file)
                    todo.append(file)
    return seen


def stage_script(name: str) -> str:
    return f"stages/{name}.py"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_imported_module(name):
    stage = STAGES[name]
    script = stage_script(name)
    assert script in stage["cmd"], f"stage {name} should run {script}"
    deps = set(stage["deps"])
    assert script in deps
    needed = {str(f.relative_to(REPO)) for f in imported_files(REPO / script)}
    assert needed <= deps, f"stage {name} misses deps {sorted(needed - deps)}"
    stale = {d for d in deps if d.startswith("src/") and d not in needed}
    assert not stale, f"stage {name} lists modules it does not import: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_param_sections_exist(name):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in STAGES[name].get("params", []):
        assert key.split(".")[0] in params, f"stage {name} lists unknown param {key}"
