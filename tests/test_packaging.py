"""`pip install .` gives a working `assurexray` command: pyproject.toml declares every
third-party module src/ imports, at versions the lock file satisfies, and the installed package
runs in a venv that holds only the declared dependencies and their own requirements."""
from __future__ import annotations

import ast
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DECLARED = [Requirement(r) for r in
            tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]


def imported_distributions() -> set[str]:
    """Distributions of the third-party modules any file under src/ imports."""
    modules = set()
    for path in (REPO / "src/assurexray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    owners = md.packages_distributions()
    third = modules - set(sys.stdlib_module_names) - {"assurexray"}
    unknown = sorted(m for m in third if m not in owners)
    assert not unknown, f"imported but not installed: {unknown}"
    return {canonicalize_name(d) for m in third for d in owners[m]}


def test_every_imported_distribution_is_declared():
    missing = imported_distributions() - {canonicalize_name(r.name) for r in DECLARED}
    assert not missing, f"src/ imports these, pyproject.toml does not declare them: {sorted(missing)}"


def test_declared_versions_are_the_locked_ones():
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[canonicalize_name(name.split("[")[0])] = version.strip()
    for req in DECLARED:
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is declared but not in requirements.lock"
        assert req.specifier.contains(version), f"{req} does not admit the locked {version}"


def closure(requirements: list[Requirement]) -> list[md.Distribution]:
    """The installed distributions ``requirements`` need, following each one's own
    requirements (markers evaluated here, extras followed)."""
    seen: dict[str, md.Distribution] = {}
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = md.distribution(req.name)
        for text in seen[name].requires or []:
            todo += [(Requirement(text), e) for e in ("", *req.extras)]
    return list(seen.values())


def expose(dists: list[md.Distribution], site: Path) -> None:
    """Link each distribution's top-level files and folders into ``site``."""
    source = Path(sysconfig.get_paths()["purelib"])
    for dist in dists:
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and (source / top).exists():
                (site / top).symlink_to(source / top)


def test_installed_package_runs_with_only_its_declared_dependencies(tmp_path):
    project = tmp_path / "project"   # built from a copy: an in-tree build writes into the clone
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
                    project], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run([*pip, "--python", venv / "bin/python", "install", "--no-deps", "--no-index",
                    *sorted((tmp_path / "dist").glob("*.whl"))], check=True)
    site = Path(subprocess.run([venv / "bin/python", "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True).stdout.strip())
    expose(closure(DECLARED), site)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path))}
    cli = subprocess.run([venv / "bin/assurexray", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "tune" in cli.stdout and "serve" in cli.stdout
    every_module = ("import importlib, pkgutil, assurexray\n"
                    "for m in pkgutil.walk_packages(assurexray.__path__, 'assurexray.'):\n"
                    "    importlib.import_module(m.name)\n"
                    "print(assurexray.__file__)")
    imported = subprocess.run([venv / "bin/python", "-c", every_module], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert str(site) in imported.stdout, "imported the checkout, not the installed package"

