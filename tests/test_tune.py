"""`assurexray tune`: the validated search space, and a real 1-epoch search on a tiny twin
(a failing trial, an interrupted tune resumed, every finished trial in `dvc exp show`, a study
rerun under the same name on the same commit)."""
import csv
import io
import sys

import optuna
import pytest

from assurexray.params import ParamsError, SearchDim, TuneParams
from assurexray.tune import _yaml_value, distributions
from test_end_to_end import run
from tiny_project import make_project

TUNE = [sys.executable, "-m", "assurexray.cli", "tune", "--set", "train.epochs=1"]


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": SearchDim("float", 0.1, 1.0)}, "tune.space.train.lrr"),
    ({"train": SearchDim("float", 0.1, 1.0)}, "tune.space.train"),
    ({"train.lr": SearchDim("float", 0.0, 1.0, log=True)}, "log range"),
    ({"train.lr": SearchDim("float", 1.0, 0.1)}, "low < high"),
    ({"train.epochs": SearchDim("int", 1.5, 3)}, "whole"),
    ({"model.backbone": SearchDim("choice")}, "at least one"),
])
def test_bad_search_space_is_named(space, message):
    with pytest.raises(ParamsError, match=message):
        TuneParams(space=space)


def test_space_becomes_optuna_distributions():
    dims = distributions({"train.lr": SearchDim("float", 1e-4, 1e-2, log=True),
                          "train.epochs": SearchDim("int", 1, 4),
                          "model.backbone": SearchDim("choice", choices=["resnet18", "resnet34"])})
    assert dims["train.lr"].log and dims["train.epochs"].high == 4
    assert dims["model.backbone"].choices == ("resnet18", "resnet34")
    assert _yaml_value(1e-05) == "0.00001" and _yaml_value(True) == "true"


def study(root, folder: str = ".tune") -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{root / folder / 'study.db'}")


def exp_show(root) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], root)))
    return {row["Experiment"]: row for row in rows if row["Experiment"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project (params.yaml's search space) with its data stages run and committed,
    and a study whose first trial is queued to fail: a dropout of 1.5, outside the space
    (Optuna warns and keeps it), makes the train stage stop with an error."""
    root = make_project(tmp_path_factory.mktemp("tune"))
    run(["dvc", "repro", "preprocess"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "data stages"], root)
    (root / ".tune").mkdir()
    optuna.create_study(study_name="tune", storage=f"sqlite:///{root / '.tune/study.db'}",
                        direction="maximize").enqueue_trial(
        {"model.dropout": 1.5})
    return root


@pytest.fixture(scope="module")
def first(project):
    return run([*TUNE, "--trials", "2"], project)


def test_a_failed_trial_is_kept_with_its_log_and_the_search_goes_on(project, first):
    trials = study(project).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    log = (project / trials[0].user_attrs["log"]).read_text()
    # the trial's params fail validation (model.dropout 1.5): its log names the key
    assert "'model.dropout' must be in [0, 1)" in log and "FAILED" in log
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("dvc exp run exited with code ") and reason in first
    assert trials[0].user_attrs["log"] in first


def test_trial_value_is_the_experiments_validation_auc(project, first):
    done = study(project).trials[1]
    shown = exp_show(project)
    assert study(project).trials[0].user_attrs["experiment"] not in shown
    row = shown[done.user_attrs["experiment"]]
    assert float(row["best_val_macro_auc"]) == pytest.approx(done.value, abs=1e-3)
    assert float(row["train.lr"]) == pytest.approx(done.params["train.lr"], rel=1e-6)
    assert row["train.epochs"] == "1"
    assert f"dvc exp apply {done.user_attrs['experiment']}" in first
    assert not run(["git", "status", "--porcelain", "params.yaml"], project).strip()


def test_an_interrupted_tune_resumes(project, first):
    # A tune killed mid-trial leaves it RUNNING with no experiment saved.
    before = study(project)
    killed = before.ask()
    killed.set_user_attr("experiment", f"tune-{before.user_attrs['token']}-{killed.number:03d}")
    out = run([*TUNE, "--trials", "4"], project)
    trials = study(project).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "FAIL", "COMPLETE"]
    assert {trials[1].user_attrs["experiment"], trials[3].user_attrs["experiment"]} <= set(
        exp_show(project))
    assert "trial   3 COMPLETE" in out
    assert trials[3].params != trials[1].params, "the resumed sampler replayed a draw"


def test_a_study_rerun_under_the_same_name_records_only_its_own_trials(project, first):
    """The same study name on the same commit, from a fresh database: each trial's value is
    its own experiment's metric, never that of the first study's same-numbered trial."""
    run([*TUNE, "--trials", "2", "--dir", ".tune-rerun"], project)
    earlier = {t.user_attrs["experiment"] for t in study(project).trials}
    trials = study(project, ".tune-rerun").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert not earlier & {t.user_attrs["experiment"] for t in trials}
    shown = exp_show(project)
    for trial in trials:
        row = shown[trial.user_attrs["experiment"]]
        assert float(row["best_val_macro_auc"]) == pytest.approx(trial.value, abs=1e-3)
        assert float(row["train.lr"]) == pytest.approx(trial.params["train.lr"], rel=1e-6)
