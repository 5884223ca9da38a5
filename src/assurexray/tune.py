"""Hyperparameter search: Optuna asks, every trial is a DVC experiment.

Each trial is ``dvc exp run -n <study>-<token>-<number> -S key=value ... <tune.target>`` (in a
temporary directory, or through DVC's queue with ``--jobs`` workers), and Optuna is told the
experiment's validation metric (``tune.metric`` in ``tune.metrics_file``; never a test figure).
The token is drawn once per study, so a study rerun under the same name (a new ``--dir``, a
deleted database) never reuses an earlier experiment's name. A trial's result is read only from
its own experiment: the ref under the commit it ran from, holding the trial's parameters; a run
that DVC refused or that failed is FAIL with the reason (in ``dvc``'s words) in the trial and
its log under ``--dir/logs``, and the search goes on. The study lives in SQLite under ``--dir``
(git-ignored), so rerunning the same command resumes an interrupted search. ``dvc exp show``
lists every finished trial, ``dvc exp apply`` takes one.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
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
        baseline = _head()
        for trial in trials:
            name = f"{args.study}-{study.user_attrs['token']}-{trial.number:03d}"
            trial.set_user_attr("experiment", name)
            trial.set_user_attr("baseline", baseline)
            trial.set_user_attr("log", str(args.dir / "logs" / f"{name}.log"))
        failures = run_trials(trials, params.tune, args.fixed, args.jobs)
        for trial in trials:
            conclude(study, trial, params.tune, failures.get(trial.number, ""))
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
    if "token" not in study.user_attrs:  # names this study's experiments apart from any other's
        study.set_user_attr("token", secrets.token_hex(3))
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
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.info("trial %d was interrupted; concluding it", frozen.number)
        # Optuna has no public handle on a running trial of a reloaded study but this one
        conclude(study, optuna.trial.Trial(study, frozen._trial_id), config)


def run_trials(trials: list[optuna.Trial], config: TuneParams, fixed: list[str],
               jobs: int) -> dict[int, str]:
    """Run the trials' experiments, each one's output in its own log file; returns
    {trial number: why its run failed or was refused} for those that did."""
    def command(trial, *mode):
        sets = [f"{k}={_yaml_value(v)}" for k, v in trial.params.items()] + list(fixed)
        return [*DVC, "exp", "run", *mode, "-n", trial.user_attrs["experiment"],
                *(arg for s in sets for arg in ("-S", s)), config.target]

    if jobs == 1:
        trial = trials[0]
        log.info("trial %d: %s", trial.number, trial.params)
        with open(trial.user_attrs["log"], "w") as out:
            code = subprocess.run(command(trial, "--temp"), stdout=out, stderr=subprocess.STDOUT,
                                  check=False).returncode
        return {trial.number: f"dvc exp run exited with code {code}"} if code else {}
    failures, queued = {}, []
    for trial in trials:
        log.info("trial %d (queued): %s", trial.number, trial.params)
        try:
            _dvc(*command(trial, "--queue")[len(DVC):])
            queued.append(trial)
        except TuneError as exc:
            failures[trial.number] = f"refused: {exc}"
    if queued:
        _dvc("queue", "start", "--jobs", str(jobs))
    for trial in queued:
        state = _follow(trial.user_attrs["experiment"], trial.user_attrs["log"])
        if state != "Success":
            failures[trial.number] = f"dvc queue reports the task {state or 'gone'}"
    return failures


def _follow(name: str, log_path: str) -> str:
    """Copy queued task ``name``'s log while it runs (DVC's queue can drop a failed task's log
    later); its final `dvc queue status` word."""
    while _queue_state(name) == "Queued":
        time.sleep(2)
    with open(log_path, "w") as out:
        subprocess.run([*DVC, "queue", "logs", "--follow", name], stdout=out,
                       stderr=subprocess.STDOUT, check=False)
    while (state := _queue_state(name)) in PENDING:
        time.sleep(2)
    return state


def conclude(study: optuna.Study, trial: optuna.Trial, config: TuneParams,
             failure: str = "") -> None:
    """Tell Optuna the metric of the trial's own experiment, or FAIL with the reason."""
    attrs = trial.user_attrs
    value, reason = (None, failure) if failure else experiment_metric(attrs, trial.params, config)
    if value is None:
        with open(attrs.get("log", "/dev/null"), "a") as out:  # the reason stays with the log
            out.write(f"\nassurexray tune: trial {trial.number} FAILED: {reason}\n")
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s (log: %s)", trial.number, reason, attrs.get("log"))
    else:
        study.tell(trial, value)
        log.info("trial %d: %s = %.4f", trial.number, config.metric, value)


def experiment_metric(attrs: dict, params: dict, config: TuneParams) -> tuple[float | None, str]:
    """(metric, '') from the trial's experiment (``attrs``: its name and baseline commit),
    or (None, why not); an experiment that ran other values than ``params`` is not the trial's."""
    name, baseline = attrs.get("experiment", ""), attrs.get("baseline", "")
    ref = _experiment_ref(name, baseline)
    if ref is None:
        return None, (f"no experiment {name!r} was saved on {baseline[:12] or 'its commit'} "
                      "(the run failed or was interrupted)")
    try:
        ran = yaml.safe_load(_git_show(ref, "params.yaml"))
        value = json.loads(_git_show(ref, config.metrics_file))[config.metric]
    except (subprocess.CalledProcessError, json.JSONDecodeError, yaml.YAMLError, KeyError) as exc:
        return None, f"{name}: {config.metrics_file} lacks {config.metric!r} ({exc})"
    other = {k: _lookup(ran, k) for k, v in params.items() if not _same(_lookup(ran, k), v)}
    if other:
        return None, f"{name} ran {other}, not this trial's {params}"
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None, f"{name}: {config.metric} is {value!r}"
    return float(value), ""


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def summarize(study: optuna.Study) -> int:
    """Print every trial and the best one with how to apply it; 1 if none completed."""
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        where = (f"{t.user_attrs.get('fail_reason', '')} (log: {t.user_attrs.get('log', '')})"
                 if t.state == TrialState.FAIL else "")
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


def _experiment_ref(name: str, baseline: str) -> str | None:
    """DVC keeps experiment ``name`` of baseline commit B at refs/exps/B[:2]/B[2:]/name."""
    if not (name and baseline):
        return None
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], capture_output=True,
                           check=False)
    return ref if found.returncode == 0 else None


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _git_show(ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _lookup(tree: dict, key: str):
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _same(ran, asked) -> bool:
    if isinstance(asked, float) and isinstance(ran, (int, float)) and not isinstance(ran, bool):
        return math.isclose(ran, asked, rel_tol=1e-9, abs_tol=1e-12)
    return ran == asked


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
