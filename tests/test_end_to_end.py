"""`dvc repro` of the whole pipeline on a tiny twin in a temporary git repo, then the
center-holdout experiment and `dvc metrics diff`, as a user would run them."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from assurexray.evaluation.calibration import fit_temperature
from assurexray.evaluation.predictions import read_predictions
from assurexray.params import RUNTIME_KEYS

pytestmark = pytest.mark.slow  # full `dvc repro` runs: only with -m slow (CI runs them)

REPO = Path(__file__).resolve().parents[1]

# A tiny, fast configuration: every stage runs, nothing is large.
TINY = {
    "data": {"synthetic": {"n_images": 90, "min_side": 128, "max_side": 256}},
    "preprocess": {"cache_size": 64},
    # the default model and initial weights (tf_efficientnet_lite0 from its package), small input
    "train": {"image_size": 48, "batch_size": 16, "epochs": 2, "warmup_epochs": 0},
    "explain": {"per_class": 1, "road_percentiles": [50]},
    "analysis": {"bootstrap_iterations": 50},
    "robustness": {"severities": 1},
    "ood": {"images_per_set": 20},
    "serve": {"drift_window": 30},
    "anomaly": {"image_size": 32, "train": {"epochs": 1}, "identity_lesions": 4, "gallery": 1},
}


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values, nested mappings merged, new keys added."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def init_project(root: Path, overrides: dict) -> Path:
    """A git + DVC repository at ``root`` with this checkout's pipeline and code, and
    params.yaml = the repository's with ``overrides`` merged in."""
    for name in ("stages", "src", "data/external"):  # data/external: the default data.tracked_path
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    # metrics/seed_spread.json: a git-tracked input of the report stage (scripts/seed_spread.sh)
    for name in ("dvc.yaml", ".gitignore", "metrics/seed_spread.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.org"], root)
    run(["git", "config", "user.name", "ci"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return init_project(tmp_path_factory.mktemp("project"), TINY)


def test_repro_experiment_and_metrics_diff(project):
    run(["dvc", "repro"], project)
    for out in ("metrics/evaluate.json", "models/model.pt", "data/quality.csv"):
        assert (project / out).exists(), out
    anomaly = json.loads((project / "metrics/anomaly.json").read_text())
    assert set(anomaly["architectures"]) == {"unet", "reversed", "patchcore", "padim"}
    assert set(anomaly["comparison"]) == {"unet", "reversed", "patchcore", "padim", "classifier"}
    for arch in ("unet", "reversed"):
        assert (project / f"models/anomaly/{arch}.pt").exists()
        assert anomaly["architectures"][arch]["localization"]["overall"]["n"] > 0
    assert "up to date" in run(["dvc", "status"], project).lower()
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline run"], project)

    # An evaluation-only param reruns its evaluation stage, never training.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["robustness"]["severities"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(["dvc", "repro", "--dry"], project)
    assert "Running stage 'robustness'" in dry
    assert "Running stage 'train'" not in dry
    run(["git", "checkout", "params.yaml"], project)

    # The experiment up to evaluate (the stages after it were run above): the center split
    # retrains and re-evaluates, and metrics diff compares it with the committed baseline.
    run(["dvc", "exp", "run", "-S", "split=center", "evaluate"], project)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project))
    evaluated = diff["metrics/evaluate.json"]
    assert evaluated, "metrics diff shows no change between the splits"
    for change in evaluated.values():
        assert {"old", "new"} <= set(change)
    split = json.loads((project / "metrics/split.json").read_text())
    assert split["test"]["images"] > 0
    assert set(split["test"]["by_center"]) <= {"2", "3"}, "center split tested on center 1"
    run(["git", "checkout", "--", "."], project)        # back to the baseline run, for the
    run(["dvc", "checkout", "--force"], project)        # tests below
    assert "up to date" in run(["dvc", "status"], project).lower()


def changed(value):
    """Another value of the same kind, for every scalar inside ``value``."""
    if isinstance(value, dict):
        return {k: changed(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-changed" if isinstance(value, str) else value


def test_runtime_settings_leave_dvc_status_clean(project):
    run(["dvc", "repro"], project)  # a no-op after the test above; the full run when run alone
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    for key in RUNTIME_KEYS:  # a key, or a whole section (tune): change each of its settings
        *parents, leaf = key.split(".")
        holder = params
        for part in parents:
            holder = holder[part]
        holder[leaf] = changed(holder[leaf])
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert "up to date" in run(["dvc", "status"], project).lower()
        params["train"]["lr"] *= 2  # a result-affecting key, for contrast
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert "train.lr" in run(["dvc", "status"], project)
    finally:
        path.write_text(original)


def test_an_identical_rerun_leaves_every_later_stage_cached(project):
    """Timings and memory live in files no stage reads: retraining to the same weights, or
    rerunning the reference stage, changes nothing a later stage depends on."""
    run(["dvc", "repro"], project)
    ood = (project / "metrics/ood.json").read_bytes()
    for stage in ("train", "reference"):
        run(["dvc", "repro", "--force", "--single-item", stage], project)
    status = run(["dvc", "status"], project)
    assert "up to date" in status.lower(), status
    assert (project / "metrics/ood.json").read_bytes() == ood
    resources = json.loads((project / "dvclive/train/resources.json").read_text())
    assert resources["epoch_seconds"] > 0 and resources["peak_memory_mb"] > 0


def test_temperature_is_fitted_on_validation_not_test(project):
    run(["dvc", "repro"], project)
    temperature = json.loads((project / "metrics/calibration.json").read_text())["temperature"]
    val, test = (read_predictions(project / f"data/predictions/{p}.csv") for p in ("val", "test"))
    on_val, on_test = (fit_temperature(np.asarray(p.logits), np.asarray(p.y_true))
                       for p in (val, test))
    assert abs(on_val - on_test) > 1e-3, "val and test give the same T: the check cannot tell"
    assert temperature == pytest.approx(on_val, rel=1e-6)
