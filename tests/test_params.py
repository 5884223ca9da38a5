"""The params loader stops on unknown keys, wrong types and out-of-range values, naming the key."""
import re
import typing
from pathlib import Path

import pytest
import yaml

from assurexray.data.sources import SOURCES
from assurexray.explain.cam import METHODS
from assurexray.params import (
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
])
def test_literal_choices_are_the_registry_keys(schema, key, registry):
    """params.py is a base module and cannot import the wings: its choices are checked here."""
    choices = typing.get_args(typing.get_type_hints(schema)[key])
    assert set(choices) == set(registry)


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
])
def test_value_out_of_range_is_named(tmp_path, data, key):
    with pytest.raises(ParamsError, match=f"'{key}' must be"):
        load_params(write(tmp_path, data))


def test_image_size_may_grow_with_the_cache(tmp_path):
    params = load_params(write(tmp_path, {"train": {"image_size": 384},
                                          "preprocess": {"cache_size": 384}}))
    assert params.train.image_size == params.preprocess.cache_size == 384


def test_readme_gpu_command_passes_the_checks(tmp_path):
    """Every `-S key=value` of the README's paper-faithful run, applied to params.yaml, loads."""
    readme = (REPO / "README.md").read_text()
    command = readme.split("A paper-faithful run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    overrides = re.findall(r"-S ([\w.]+)=(\S+)", command)
    assert len(overrides) >= 5 and ("train.image_size", "224") in overrides
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides:
        *parents, leaf = key.split(".")
        section = raw
        for part in parents:
            section = section[part]
        assert leaf in section, f"README sets unknown key {key}"
        section[leaf] = yaml.safe_load(value)
    params = load_params(write(tmp_path, raw))
    assert params.train.image_size <= params.preprocess.cache_size


def test_unreadable_file_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path)  # a folder
