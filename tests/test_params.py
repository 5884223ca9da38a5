"""The params loader stops on unknown keys, wrong types and out-of-range values, naming the key."""
import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from assurexray.anomaly.detector import AGGREGATIONS, DETECTORS
from assurexray.data.sources import SOURCES
from assurexray.explain.cam import METHODS
from assurexray.param_checks import drift_permutations_needed, range_rules
from assurexray.params import (
    AnomalyFeatureParams,
    AnomalyParams,
    DataParams,
    ExplainParams,
    Params,
    ParamsError,
    TrainParams,
    load_params,
    to_dict,
)
from assurexray.training.losses import LOSSES

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.split in ("stratified", "center")
    assert params.data.source == "synthetic"


def test_repository_params_list_every_key():
    """params.yaml spells out every schema key, so `dvc exp run -S` edits a visible value."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw == to_dict(load_params(REPO / "params.yaml"))
    assert set(raw) == set(to_dict(Params()))


@pytest.mark.parametrize("schema, key, registry", [
    (DataParams, "source", SOURCES), (TrainParams, "loss", LOSSES), (ExplainParams, "method", METHODS),
    (AnomalyFeatureParams, "aggregations", AGGREGATIONS), (AnomalyParams, "detectors", DETECTORS),
])
def test_literal_choices_are_the_registry_keys(schema, key, registry):
    """params.py is a base module and cannot import the wings: its choices are checked here."""
    hint = typing.get_type_hints(schema)[key]
    if typing.get_origin(hint) is list:   # a list of choices
        hint = typing.get_args(hint)[0]
    assert set(typing.get_args(hint)) == set(registry)


@pytest.mark.parametrize("data, key", [
    ({"seeed": 1}, "seeed"),
    ({"train": {"epochz": 3}}, "train.epochz"),
    ({"data": {"synthetic": {"n_imgs": 5}}}, "data.synthetic.n_imgs"),
])
def test_unknown_key_is_named(tmp_path, data, key):
    with pytest.raises(ParamsError, match=f"unknown key '{key}'"):
        load_params(write(tmp_path, data))


@pytest.mark.parametrize("data, key", [
    ({"seed": "42"}, "seed"),
    ({"seed": True}, "seed"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"split": "random"}, "split"),
    ({"split_options": {"train_centers": [1.5]}}, r"split_options.train_centers\[0\]"),
    ({"split_options": {"train_centers": [True]}}, r"split_options.train_centers\[0\]"),
    ({"model": {"pretrained": "yes"}}, "model.pretrained"),
])
def test_wrong_type_is_named(tmp_path, data, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        load_params(write(tmp_path, data))


def test_int_is_accepted_for_float_and_null_for_optional(tmp_path):
    params = load_params(write(tmp_path, {"train": {"lr": 1}, "model": {"weights_path": None}}))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.model.weights_path is None


def test_centers_may_be_named_or_numbered(tmp_path):
    params = load_params(write(tmp_path, {"split_options": {"train_centers": ["siteA", 2]}}))
    assert params.split_options.train_centers == ["siteA", 2]


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(ParamsError, match="repository root"):
        load_params(tmp_path / "nope.yaml")


def test_missing_key_takes_the_dataclass_default(tmp_path):
    params = load_params(write(tmp_path, {"train": {"epochs": 3}}))
    assert params.train.epochs == 3
    assert params.train.lr == Params().train.lr and params.analysis == Params().analysis


@pytest.mark.parametrize("data, key", [
    ({"analysis": {"ci_level": 1.0}}, "analysis.ci_level"),
    ({"analysis": {"ci_level": 0}}, "analysis.ci_level"),
    ({"analysis": {"bootstrap_iterations": 0}}, "analysis.bootstrap_iterations"),
    ({"analysis": {"age_bands": [0, 40, 18]}}, "analysis.age_bands"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"lr": -0.1}}, "train.lr"),
    ({"train": {"batch_size": 1}}, "train.batch_size"),
    ({"train": {"warmup_epochs": 20, "epochs": 5}}, "train.warmup_epochs"),
    ({"train": {"image_size": 384}}, "train.image_size"),  # above the default cache_size 256
    ({"split_options": {"fractions": [0.7, 0.2, 0.2]}}, "split_options.fractions"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"explain": {"road_percentiles": [0, 50]}}, "explain.road_percentiles"),
    ({"robustness": {"severities": 0}}, "robustness.severities"),
    ({"data": {"synthetic": {"min_side": 800}}}, "data.synthetic.min_side"),
    ({"explain": {"road_bootstrap": 0}}, "explain.road_bootstrap"),
    ({"reference": {"sample_size": 1}}, "reference.sample_size"),
    ({"ood": {"min_side": 0}}, "ood.min_side"),
    ({"ood": {"max_aspect": 0.5}}, "ood.max_aspect"),
    ({"ood": {"false_alarm_rate": 1.0}}, "ood.false_alarm_rate"),
    ({"serve": {"drift_alpha": 0}}, "serve.drift_alpha"),
    ({"serve": {"drift_window": 1}}, "serve.drift_window"),
    ({"serve": {"queue_size": 0}}, "serve.queue_size"),
    ({"serve": {"request_timeout_s": 0}}, "serve.request_timeout_s"),
    ({"anomaly": {"image_size": 60}}, "anomaly.unet.depth"),   # not a multiple of 2**3
    ({"anomaly": {"archs": []}}, "anomaly.archs"),
    ({"anomaly": {"unet": {"drop_skips": [3]}}}, "anomaly.unet.drop_skips"),
    ({"anomaly": {"score": {"ssim_window": 4}}}, "anomaly.score.ssim_window"),
    ({"anomaly": {"train": {"warmup_epochs": 9}}}, "anomaly.train.warmup_epochs"),
    ({"anomaly": {"features": {"image_sizes": []}}}, "anomaly.features.image_sizes"),
    ({"anomaly": {"features": {"layer_sets": [[2, 7]]}}}, "anomaly.features.layer_sets"),
    ({"anomaly": {"patchcore": {"coreset_ratios": [0.0]}}}, "anomaly.patchcore.coreset_ratios"),
    ({"anomaly": {"patchcore": {"neighbours": [0]}}}, "anomaly.patchcore.neighbours"),
    ({"anomaly": {"padim": {"covariance_eps": 0}}}, "anomaly.padim.covariance_eps"),
    ({"anomaly": {"detectors": ["padim", "padim"]}}, "anomaly.detectors"),
])
def test_value_out_of_range_is_named(tmp_path, data, key):
    with pytest.raises(ParamsError, match=f"'{key}' must be"):
        load_params(write(tmp_path, data))


def test_image_size_may_grow_with_the_cache(tmp_path):
    params = load_params(write(tmp_path, {"train": {"image_size": 384},
                                          "preprocess": {"cache_size": 384}}))
    assert params.train.image_size == params.preprocess.cache_size == 384


def test_unreadable_file_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path)  # a folder


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict)
                   else {prefix + key: value})
    return out


def test_dataclass_defaults_are_the_shipped_params():
    """One value per key: a default in params.py that params.yaml contradicts would silently
    change a result for anyone whose file omits the key."""
    shipped = leaves(to_dict(load_params(REPO / "params.yaml")))
    defaults = leaves(to_dict(Params()))
    differ = {k: (defaults.get(k), shipped.get(k)) for k in shipped.keys() | defaults.keys()
              if defaults.get(k) != shipped.get(k)}
    assert not differ, f"params.py default vs params.yaml: {differ}"


NUMBER = {int, float}


def numeric_keys(cls, prefix: str = "") -> set[str]:
    """Dotted keys whose type is a number, an optional number or a list of numbers."""
    out = set()
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out |= numeric_keys(hint, f"{prefix}{name}.")
            continue
        inner = set(typing.get_args(hint)) - {type(None)} if typing.get_origin(hint) in (
            typing.Union, types.UnionType) else {hint}
        if typing.get_origin(hint) is list:
            inner = set(typing.get_args(hint))
        if inner and inner <= NUMBER:
            out.add(prefix + name)
    return out


def test_every_numeric_key_has_a_range_rule():
    """A new numeric key needs a rule in param_checks.range_rules (its own, or named by a cross-key
    rule); tune.space is checked by SearchDim and against the tuned keys' own rules."""
    rules = range_rules(Params())
    covered = {key for key, _, _ in rules} | {
        name for _, _, text in rules for name in re.findall(r"[a-z_]+(?:\.[a-z_0-9]+)+", text)}
    missing = numeric_keys(Params) - covered
    assert not missing, f"no range rule for {sorted(missing)}"


def test_drift_permutations_must_let_the_embedding_test_fire(tmp_path):
    """200 permutations (the old setting) give p >= 1/201, above the embedding test's level."""
    assert drift_permutations_needed(0.05) == 440
    with pytest.raises(ParamsError, match="'serve.drift_permutations' must be >= 440"):
        load_params(write(tmp_path, {"serve": {"drift_permutations": 200}}))
    with pytest.raises(ParamsError, match="'serve.drift_permutations' must be >= 2200"):
        load_params(write(tmp_path, {"serve": {"drift_alpha": 0.01}}))
    assert load_params(write(tmp_path, {"serve": {"drift_permutations": 440}}))


@pytest.mark.parametrize("dim, message", [
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.01}}, "can draw 0.0: 'train.lr' must be > 0"),
    ({"train.epochs": {"type": "float", "low": 1.0, "high": 3.0}}, "'train.epochs' must be int"),
    ({"train.loss": {"type": "choice", "choices": ["ce", "hinge"]}}, "can draw 'hinge'"),
    ({"train.warmup_epochs": {"type": "int", "low": 0, "high": 40}}, "train.warmup_epochs"),
    ({"evaluate.batch_size": {"type": "int", "low": 8, "high": 64}}, "runtime key"),
])
def test_tune_space_draws_only_valid_values(tmp_path, dim, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(write(tmp_path, {"tune": {"space": dim}}))
