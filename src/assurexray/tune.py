"""Hyperparameter search: Optuna asks, every trial is a DVC experiment.

Each trial is ``dvc exp run -n <study>-<number> -S key=value ... <tune.target>`` (in a
temporary directory, or through DVC's queue with ``--jobs`` workers), and Optuna is told the
experiment's validation metric (``tune.metric`` in ``tune.metrics_file``; never a test figure).
The study lives in SQLite under ``--dir`` (git-ignored), so rerunning the same command resumes
an interrupted search. A failed trial is marked FAIL with its log kept under ``--dir/logs``;
the search goes on. ``dvc exp show`` lists every finished trial, ``dvc exp apply`` takes one.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from assurexray.errors import AssureXRayError
from assurexray.params import SearchDim, TuneParams, load_params

log = logging.getLogger(__name__)
DVC = [sys.executable, "-m", "dvc"]
# `dvc queue status` words for a task that has not ended yet
PENDING = ("Queued", "Running")


class TuneError(AssureXRayError, RuntimeError):
    """The search cannot go on as asked (e.g. resumed with other fixed overrides)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, required=True,
                        help="total trials the study should hold (a rerun resumes up to this)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (> 1: DVC's queue with this many workers)")
    parser.add_argument("--study", default="tune", help="study name, also the experiment prefix")
    parser.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed override for every trial (dvc exp run -S), repeatable")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dir", type=Path, default=Path(".tune"),
                        help="study database and trial logs (git-ignored)")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.trials < 1 or args.jobs < 1:
        raise TuneError("--trials and --jobs must be at least 1")
    study = open_study(args.dir, args.study, params.tune, params.seed, args.fixed)
    recover(study, params.tune)
    space = distributions(params.tune.space)
    while (done := len(finished(study))) < args.trials:
        trials = [study.ask(space) for _ in range(min(args.jobs, args.trials - done))]
        for trial in trials:
            trial.set_user_attr("experiment", f"{args.study}-{trial.number:03d}")
            trial.set_user_attr("log", str(args.dir / "logs" / f"{args.study}-{trial.number:03d}.log"))
        run_trials(trials, params.tune, args.fixed, args.jobs)
        for trial in trials:
            conclude(study, trial.number, trial.user_attrs, params.tune)
    return summarize(study)


def open_study(root: Path, name: str, config: TuneParams, seed: int,
               fixed: list[str]) -> optuna.Study:
    """The study in ``root/study.db``, created or resumed; fixed overrides must match."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{root / 'study.db'}",
                                direction="maximize", load_if_exists=True)
    # A resumed study must not replay the first session's draws: offset the seed by the trials.
    sampler_seed = seed + len(study.trials)
    study.sampler = (optuna.samplers.TPESampler(seed=sampler_seed) if config.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=sampler_seed))
    before = study.user_attrs.get("fixed")
    if before is None:
        study.set_user_attr("fixed", list(fixed))
    elif before != list(fixed):
        raise TuneError(f"study {name!r} in {root} ran with --set {before}, not {fixed}; "
                        "pass the same overrides or another --study")
    return study


def distributions(space: dict[str, SearchDim]) -> dict:
    """Optuna distributions from the validated ``tune.space``."""
    out: dict[str, BaseDistribution] = {}
    for key, dim in space.items():  # SearchDim.check guarantees the fields each type needs
        if dim.type == "choice":
            out[key] = CategoricalDistribution(list(dim.choices or []))
        elif dim.type == "int":
            out[key] = IntDistribution(int(dim.low or 0), int(dim.high or 0), log=dim.log)
        else:
            out[key] = FloatDistribution(float(dim.low or 0), float(dim.high or 0), log=dim.log)
    return out


def recover(study: optuna.Study, config: TuneParams) -> None:
    """Conclude the trials an interrupted tune left RUNNING: from their experiment if it
    was saved, else as failed."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.info("trial %d was interrupted; concluding it", trial.number)
        conclude(study, trial.number, trial.user_attrs, config)


def run_trials(trials: list[optuna.Trial], config: TuneParams, fixed: list[str],
               jobs: int) -> None:
    """Run the trials' experiments; each one's output goes to its own log file."""
    def command(trial, *mode):
        sets = [f"{k}={_yaml_value(v)}" for k, v in trial.params.items()] + list(fixed)
        return [*DVC, "exp", "run", *mode, "-n", trial.user_attrs["experiment"],
                *(arg for s in sets for arg in ("-S", s)), config.target]

    if jobs == 1:
        trial = trials[0]
        log.info("trial %d: %s", trial.number, trial.params)
        with open(trial.user_attrs["log"], "w") as out:
            subprocess.run(command(trial, "--temp"), stdout=out, stderr=subprocess.STDOUT,
                           check=False)
        return
    for trial in trials:
        log.info("trial %d (queued): %s", trial.number, trial.params)
        _dvc(*command(trial, "--queue")[len(DVC):])
    _dvc("queue", "start", "--jobs", str(jobs))
    # Follow each task's log while it runs: DVC's queue can drop a failed task's log later.
    for trial in trials:
        name = trial.user_attrs["experiment"]
        while _queue_state(name) == "Queued":
            time.sleep(2)
        with open(trial.user_attrs["log"], "w") as out:
            subprocess.run([*DVC, "queue", "logs", "--follow", name], stdout=out,
                           stderr=subprocess.STDOUT, check=False)
        while _queue_state(name) in PENDING:
            time.sleep(2)


def conclude(study: optuna.Study, number: int, attrs: dict, config: TuneParams) -> None:
    """Tell Optuna the trial's validation metric, or FAIL with the reason."""
    value, reason = experiment_metric(attrs.get("experiment", ""), config)
    if value is None:
        with open(attrs.get("log", "/dev/null"), "a") as out:  # the reason stays with the log
            out.write(f"\nassurexray tune: trial {number} FAILED: {reason}\n")
        study.tell(number, state=TrialState.FAIL)
        log.warning("trial %d failed: %s (log: %s)", number, reason, attrs.get("log"))
    else:
        study.tell(number, value)
        log.info("trial %d: %s = %.4f", number, config.metric, value)


def experiment_metric(name: str, config: TuneParams) -> tuple[float | None, str]:
    """(metric, '') from the experiment's committed metrics file, or (None, why not)."""
    ref = _experiment_ref(name)
    if ref is None:
        return None, f"no experiment {name!r} was saved (the run failed or was interrupted)"
    try:
        text = subprocess.run(["git", "show", f"{ref}:{config.metrics_file}"], check=True,
                              capture_output=True, text=True).stdout
        value = json.loads(text)[config.metric]
    except (subprocess.CalledProcessError, json.JSONDecodeError, KeyError) as exc:
        return None, f"{name}: {config.metrics_file} lacks {config.metric!r} ({exc})"
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None, f"{name}: {config.metric} is {value!r}"
    return float(value), ""


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def summarize(study: optuna.Study) -> int:
    """Print every trial and the best one with how to apply it; 1 if none completed."""
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        where = t.user_attrs.get("log", "") if t.state == TrialState.FAIL else ""
        print(f"trial {t.number:3d} {t.state.name:8s} {value:>7s} "
              f"{t.user_attrs.get('experiment', '')} {t.params} {where}".rstrip())
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        print("no trial completed; see the logs named above")
        return 1
    best = study.best_trial
    print(f"\nbest: {best.user_attrs['experiment']} (validation {best.value:.4f}) {best.params}")
    print(f"apply it with: dvc exp apply {best.user_attrs['experiment']}")
    print("compare all with: dvc exp show")
    return 0


def _experiment_ref(name: str) -> str | None:
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                          check=True, capture_output=True, text=True).stdout.split()
    return next((r for r in refs if r.rsplit("/", 1)[-1] == name), None) if name else None


def _queue_state(name: str) -> str:
    """The `dvc queue status` word for task ``name`` ('' once the queue forgets it)."""
    for line in _dvc("queue", "status").splitlines():
        words = line.split()
        if name in words:
            return next((w for w in words if w in (*PENDING, "Success", "Failed")), "")
    return ""


def _dvc(*args: str) -> str:
    proc = subprocess.run([*DVC, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise TuneError(f"dvc {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _yaml_value(value) -> str:
    """A value as `-S` and params.yaml's YAML 1.1 read it back: booleans lower-case, floats
    positional (``1e-05`` would come back as a string)."""
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return np.format_float_positional(value, trim="0")
    return str(value)
