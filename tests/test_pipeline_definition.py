"""dvc.yaml is the single source of truth: every stage depends on the code it runs."""
import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]


def imported_modules(path: Path) -> set[str]:
    """assurexray modules imported by a file, followed transitively through the library."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "assurexray" or len(parts) < 2:
                    continue
                module = parts[1]
                file = REPO / "src" / "assurexray" / f"{module}.py"
                if file.exists() and module not in seen:
                    seen.add(module)
                    todo.append(file)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_imported_module(name):
    stage = STAGES[name]
    script = f"stages/{name}.py"
    assert script in stage["cmd"], f"stage {name} should run {script}"
    deps = set(stage["deps"])
    assert script in deps
    needed = {f"src/assurexray/{m}.py" for m in imported_modules(REPO / script)}
    assert needed <= deps, f"stage {name} misses deps {sorted(needed - deps)}"
    stale = {d for d in deps if d.startswith("src/") and d not in needed}
    assert not stale, f"stage {name} lists modules it does not import: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_param_sections_exist(name):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in STAGES[name].get("params", []):
        assert key.split(".")[0] in params, f"stage {name} lists unknown param {key}"
