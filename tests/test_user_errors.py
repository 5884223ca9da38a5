"""User errors through `dvc repro`, as a user meets them: one line naming the key or file and
what to do, the stage's exit code 2, no traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_end_to_end import TINY, init_project

pytestmark = pytest.mark.slow  # each case starts dvc and a stage


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = init_project(tmp_path_factory.mktemp("errors"), TINY)
    (root / "binary.csv").write_bytes(bytes(range(256)) * 4)  # not text: an unreadable manifest
    return root


def repro_prepare(project: Path, edit) -> str:
    """`dvc repro prepare` with params.yaml changed by ``edit``; returns its whole output."""
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    try:
        proc = subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env,
                              capture_output=True, text=True)
    finally:
        path.write_text(original)
    assert proc.returncode != 0, "dvc repro should have failed"
    return proc.stdout + proc.stderr


def manifest(path: str):
    def edit(params):
        params["data"]["source"] = "manifest"
        params["data"]["manifest"]["path"] = path
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["train"].update(epoch=3), "unknown key 'train.epoch'"),
    (lambda p: p["train"].update(epochs="three"), "'train.epochs' must be int"),
    (lambda p: p["analysis"].update(ci_level=95), "'analysis.ci_level' must be in (0, 1)"),
    (lambda p: p["train"].update(image_size=512), "'train.image_size' must be"),
    (manifest("labels/missing.csv"), "'data.manifest.path' = labels/missing.csv: no such file"),
    (manifest("binary.csv"), "binary.csv: cannot read the manifest CSV"),
], ids=["unknown key", "wrong type", "out of range", "against another key", "missing manifest",
        "unreadable manifest"])
def test_user_error_is_one_line_and_exit_code_2(project, edit, message):
    output = repro_prepare(project, edit)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], output
    assert "exited with 2" in output, output
    assert "Traceback" not in output, output
