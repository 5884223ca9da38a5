"""The params loader stops on unknown keys and wrong types, naming the key."""
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
