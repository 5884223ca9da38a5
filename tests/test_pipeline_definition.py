"""dvc.yaml is the single source of truth: every stage depends on the code it runs."""
import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]


TEMPLATES = SRC / "assurexray" / "reporting" / "templates"
FILE_NAME = re.compile(r"[\w-]+(\.[\w-]+)+")
TEMPLATE_REFERENCE = re.compile(r'{%-?\s*(?:include|import|from)\s+"([^"]+)"')


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
    ``__init__.py`` files hold no code and are not counted. Package data the code names
    (document templates, published.yaml) counts too: a stage reads it at run time.
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
        seen |= data_files(ast.walk(tree))
    return seen


def data_files(nodes) -> set[Path]:
    """Package data named by a string in the code: a document template (with the partials it
    includes or imports) or a file beside the modules (published.yaml)."""
    names = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    found = {d / n for n in names if FILE_NAME.fullmatch(n) and not n.endswith(".py")
             for d in (TEMPLATES, TEMPLATES.parent) if (d / n).is_file()}
    todo = [f for f in found if f.parent == TEMPLATES]
    while todo:
        for name in TEMPLATE_REFERENCE.findall(todo.pop().read_text()):
            if TEMPLATES / name not in found:
                found.add(TEMPLATES / name)
                todo.append(TEMPLATES / name)
    return found


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


def test_dvc_yaml_is_laid_out_with_generated_code_deps_last():
    """Every stage reads cmd, params, outs, then deps: data first, the generated code deps last
    under the marker; the file is exactly what scripts/sync_stage_deps.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_stage_deps", REPO / "scripts" / "sync_stage_deps.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    lines = (REPO / "dvc.yaml").read_text().splitlines()
    assert sync.synced(lines) == lines, "run `python scripts/sync_stage_deps.py`"
    assert lines.count(sync.MARKER) == len(STAGES)
    for name, stage in STAGES.items():
        keys = [k for k in stage if k in ("cmd", "params", "outs", "metrics", "deps")]
        assert keys[0] == "cmd" and keys[-1] == "deps", f"stage {name}: keys in order {keys}"
        code = [d for d in stage["deps"] if d == stage_script(name) or d.startswith("src/")]
        assert stage["deps"][-len(code):] == code, f"stage {name}: code deps are not last"
