"""Autoencoder anomaly detection on a tiny twin: trained on normals only, it reconstructs
normals better than the same images with a drawn lesion, and its map points at the lesion."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from assurexray.anomaly.checkpoint import NotTrained, load_autoencoder, save_autoencoder, save_not_trained
from assurexray.anomaly.data import (
    AbnormalImageError,
    NormalImages,
    ae_transform,
    input_tensors,
    normal_index,
    not_applicable_reason,
)
from assurexray.anomaly.identity import draw_lesions, identity_check
from assurexray.anomaly.scoring import score_inputs
from assurexray.anomaly.train import train_autoencoder
from assurexray.data.cache import letterbox
from assurexray.data.synthetic.metadata import plan_rows
from assurexray.data.synthetic.render import render_image
from assurexray.errors import AssureXRayError
from assurexray.params import Params
from assurexray.training.checkpoint import PROVENANCE_META, CheckpointError
from assurexray.training.loop import SplitData

CLASSES = ["Normal", "Benign", "Malignant"]
SIZE = 32


class SpyImages:
    """The cache's image array, recording which rows were read."""

    def __init__(self, images: np.ndarray):
        self.array, self.read = images, set()
        self.shape = images.shape

    def __getitem__(self, row):
        self.read.add(int(row))
        return self.array[row]


class TwinCache:
    """An in-memory cache (``.images``, ``.row_of``) of tiny-twin radiographs."""

    def __init__(self, images: np.ndarray, ids: list[str]):
        self.images = SpyImages(images)
        self._rows = {i: r for r, i in enumerate(ids)}

    def row_of(self, image_id: str) -> int:
        return self._rows[image_id]


@pytest.fixture(scope="module")
def twin():
    """Letterboxed 48 px twin radiographs: (cache, ids, labels); normals first."""
    rows = plan_rows(240, seed=3)
    picked = [r for r in rows if r.patient.label == "Normal"][:72] + [
        r for r in rows if r.patient.label != "Normal"][:8]
    images = np.stack([letterbox(render_image(r, 3, 96, 144)[0], 48)[0] for r in picked])
    ids = [r.image_id for r in picked]
    labels = np.array([CLASSES.index(r.patient.label) for r in picked])
    return TwinCache(images, ids), ids, labels


def tiny_params() -> Params:
    p = Params()
    anomaly = dataclasses.replace(
        p.anomaly, image_size=SIZE,
        train=dataclasses.replace(p.anomaly.train, epochs=50, batch_size=8, lr=0.01, patience=0),
        reversed=dataclasses.replace(p.anomaly.reversed, base_channels=8, depth=2, latent=32))
    return dataclasses.replace(p, anomaly=anomaly)


@pytest.fixture(scope="module")
def trained(twin, tmp_path_factory):
    cache, ids, labels = twin
    tmp = tmp_path_factory.mktemp("ae")
    # The train split holds tumour images too: the stage must leave them out.
    train = SplitData(ids[:48] + ids[72:], np.r_[labels[:48], labels[72:]])
    val = SplitData(ids[48:56], labels[48:56])
    model, meta = train_autoencoder(tiny_params(), "reversed", cache, CLASSES, train, val,
                                    tmp / "last", tmp / "live")
    return model, meta, cache.images.read.copy()


def test_training_reads_normal_images_only(twin, trained):
    cache, ids, labels = twin
    _, meta, read = trained
    abnormal_rows = {cache.row_of(i) for i, y in zip(ids, labels) if y != 0}
    assert read, "the spy saw no image reads"
    assert not read & abnormal_rows, "a tumour image reached the autoencoder's loader"
    assert meta.n_train_normals == 48


def test_normal_images_refuses_a_tumour_image(twin):
    cache, ids, labels = twin
    with pytest.raises(AbnormalImageError, match=ids[72]):
        NormalImages(cache, [ids[0], ids[72]], labels[[0, 72]], CLASSES, ae_transform(SIZE, True))


def test_a_set_without_a_normal_class_is_not_applicable_with_its_reason(tmp_path):
    assert not_applicable_reason(["normal", "Tumour"]) is None
    reason = not_applicable_reason(["Benign", "Malignant"])
    assert "no 'Normal' class (classes ['Benign', 'Malignant'])" in reason
    with pytest.raises(AssureXRayError, match="does not apply: the labelled set has no 'Normal'"):
        normal_index(["Benign", "Malignant"])
    # anomaly_train writes the reason in the checkpoint's place; anomaly_evaluate and
    # `predict --anomaly-checkpoint` get it back from there
    path = tmp_path / "unet.pt"
    save_not_trained(path, reason)
    with pytest.raises(NotTrained, match="no anomaly detector was trained: the labelled set") as exc:
        load_autoencoder(path)
    assert exc.value.reason == reason and path.with_suffix(".provenance.json").exists()


def test_reconstructs_normals_better_than_drawn_lesions_and_points_at_them(twin, trained):
    cache, ids, _ = twin
    model, meta, _ = trained
    held_out = input_tensors(cache, ids[56:72], SIZE)   # normals it never saw
    check = identity_check(model, held_out, meta.score, 8, seed=0)
    # Seen here: 0.75-0.81 of the images, error ratio 4.2-4.6, pointing 0.31-0.38 against a
    # chance of 0.07, lesion copy 0.06-0.08 (two training seeds); the bounds keep a margin.
    assert check["lesion_raises_score"]["mse"] >= 0.65
    assert check["error_ratio"] > 2.0
    assert check["pointing_game"] >= check["chance"] + 0.15
    assert check["lesion_copy"] < 0.3


def test_checkpoint_round_trip_and_kind_check(trained, tmp_path):
    model, meta, _ = trained
    path = tmp_path / "ae.pt"
    save_autoencoder(path, model, meta)
    loaded, loaded_meta = load_autoencoder(path)
    x = torch.rand(2, 1, SIZE, SIZE)
    assert torch.allclose(loaded(x), model.eval()(x))
    assert loaded_meta == dataclasses.replace(meta, **{k: getattr(loaded_meta, k) for k in PROVENANCE_META})
    assert loaded_meta.git_rev and torch.load(path, weights_only=True)["meta"]["kind"] == "autoencoder"
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded_meta.epoch = 0   # type: ignore[misc]
    stored = torch.load(path, weights_only=True)
    del stored["meta"]["best_val_loss"]
    torch.save(stored, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt: meta lacks \['best_val_loss'\]"):
        load_autoencoder(tmp_path / "old.pt")
    torch.save({"state_dict": {}, "meta": {"backbone": "resnet18"}}, tmp_path / "clf.pt")
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        load_autoencoder(tmp_path / "clf.pt")


def test_scores_and_maps(trained):
    model, meta, _ = trained
    clean = torch.rand(3, 1, SIZE, SIZE) * 0.5
    lesioned, masks, boxes = draw_lesions(clean, np.random.default_rng(1))
    assert masks.any(axis=(1, 2)).all() and len(boxes) == 3
    result = score_inputs(model, lesioned, meta.score, 2)
    assert result.maps.shape == (3, SIZE, SIZE)
    assert (result.scores["topk"] >= result.scores["mse"]).all()
    assert ((result.scores["ssim"] >= 0) & (result.scores["ssim"] <= 2)).all()


def test_predict_adds_the_anomaly_score_and_map(trained, tmp_path):
    from PIL import Image

    from assurexray.anomaly.scoring import score_letterboxed
    from assurexray.cli import main
    from test_predict import make_checkpoint, radiograph

    model, meta, _ = trained
    ae_path = tmp_path / "ae.pt"
    save_autoencoder(ae_path, model, meta)
    clf = make_checkpoint(tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    files = []
    for k, (h, w) in enumerate([(80, 60), (50, 90)]):
        files.append(tmp_path / f"img{k}.png")
        Image.fromarray(radiograph(rng, h, w)).save(files[-1])
    out = tmp_path / "out"
    assert main(["predict", *map(str, files), "--checkpoint", str(clf), "--anomaly-checkpoint",
                 str(ae_path), "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    boxed = [letterbox(np.asarray(Image.open(f)), 64)[0] for f in files]
    expected = score_letterboxed(model, meta, boxed, 8).scores["mse"]
    for record, value in zip(records, expected):
        assert record["anomaly"]["primary"] == "mse"
        assert record["anomaly"]["score"] == pytest.approx(float(value), rel=1e-4)
        assert Path(record["anomaly"]["map"]).is_file()
    # A classifier given as the autoencoder is refused with a user error.
    assert main(["predict", str(files[0]), "--checkpoint", str(clf), "--anomaly-checkpoint",
                 str(clf)]) == 2
