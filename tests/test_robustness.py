"""Corruptions really corrupt, deterministically, only the content; robustness evaluation on a
tiny model; and the evaluate -> calibrate and robustness stages on a tiny checkpoint."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from assurexray.data.cache import ImageCache, content_boxes, letterbox
from assurexray.data.schema import DatasetInfo
from assurexray.data.transforms import eval_transform
from assurexray.inference.robustness import (
    CORRUPTIONS,
    corrupt_images,
    corruption,
    drop_rows,
    evaluate_robustness,
    plot_robustness,
)
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from assurexray.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
SIZE = 48


def radiograph(rng, h: int, w: int, level: int) -> np.ndarray:
    """A textured grey image (gradient, a disk, fine noise) around intensity ``level``."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = level + 25 * (yy / h) + 15 * np.sin(xx / 3.0) + rng.normal(0, 3, (h, w))
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2] += 40
    return img.clip(0, 255).astype(np.uint8)


def write_cache(cache_dir: Path, n_per_class: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """A cache folder per the contract (images.npy, meta.csv, lesions.json) built with the real
    letterbox; class k has intensity level 50 + 60 k, images have mixed aspect ratios."""
    rng = np.random.default_rng(seed)
    cache_dir.mkdir(parents=True)
    images, meta, labels = [], [], []
    for i in range(n_per_class * len(CLASSES)):
        label = i % len(CLASSES)
        h, w = rng.integers(40, 90, 2)
        img = radiograph(rng, h, w, 50 + 60 * label)
        out, scale, pad_x, pad_y = letterbox(img, SIZE)
        images.append(out)
        meta.append((f"img{i:03d}", i, scale, pad_x, pad_y, w, h))
        labels.append(label)
    np.save(cache_dir / "images.npy", np.stack(images))
    pd.DataFrame(meta, columns=["image_id", "row", "scale", "pad_x", "pad_y", "width", "height"]
                 ).to_csv(cache_dir / "meta.csv", index=False)
    (cache_dir / "lesions.json").write_text("{}")
    return [m[0] for m in meta], np.array(labels)


def content_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean normalized intensity of the non-padding pixels (padding is black, normalized < -2)."""
    channel = x[:, 0]
    inside = channel > -2.0
    return (channel * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2))


class IntensityModel(nn.Module):
    """Classifies by mean content intensity: nearest class centre. Brightness-sensitive."""

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -50.0 * (content_mean(x)[:, None] - self.centres) ** 2


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    ids, labels = write_cache(root / "cache", n_per_class=8)
    return ImageCache(root / "cache"), ids, labels


@pytest.fixture(scope="module")
def content_image():
    img = radiograph(np.random.default_rng(1), 96, 60, 90)
    out, scale, pad_x, pad_y = letterbox(img, 96)
    box = np.array([pad_x, pad_y, pad_x + 60, pad_y + 96])
    return out, box


# ------------------------------------------------------------------ corruptions

@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_changes_the_content_more_with_severity(name, content_image):
    image, (x0, y0, x1, y1) = content_image
    diffs = []
    for s in (1, 2, 3):
        transform, settings = corruption(name, s, 3, seed=0)
        out = corrupt_images(image[None], np.array([[x0, y0, x1, y1]]), transform)[0]
        inside = np.abs(out[y0:y1, x0:x1].astype(float) - image[y0:y1, x0:x1]).mean()
        diffs.append(inside)
        padding = np.ones_like(image, bool)
        padding[y0:y1, x0:x1] = False
        assert (out[padding] == image[padding]).all(), f"{name} touched the letterbox padding"
        assert settings, name
    assert diffs[0] > 1.0, f"{name} severity 1 changes the image by only {diffs[0]:.2f} levels"
    assert diffs[0] < diffs[1] < diffs[2], f"{name}: change does not grow with severity {diffs}"


def test_corruptions_are_seeded(content_image):
    image, box = content_image
    stack, boxes = np.stack([image, image]), np.array([box, box])
    a = corrupt_images(stack, boxes, corruption("gaussian_noise", 2, 3, seed=5)[0])
    b = corrupt_images(stack, boxes, corruption("gaussian_noise", 2, 3, seed=5)[0])
    c = corrupt_images(stack, boxes, corruption("gaussian_noise", 2, 3, seed=6)[0])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1]), "every image should get its own noise field"


def test_severity_fraction_and_bad_arguments():
    assert corruption("gaussian_blur", 1, 1, 0)[1] == corruption("gaussian_blur", 3, 3, 0)[1]
    assert corruption("jpeg", 1, 3, 0)[1]["quality"] > corruption("jpeg", 3, 3, 0)[1]["quality"]
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption("fog", 1, 3, 0)
    with pytest.raises(ValueError, match="severity"):
        corruption("gamma", 4, 3, 0)


@pytest.mark.parametrize("h,w", [(90, 41), (41, 90), (64, 64), (7, 200)])
def test_content_boxes_match_letterbox(h, w):
    out, scale, pad_x, pad_y = letterbox(np.full((h, w), 255, np.uint8), SIZE)
    ys, xs = np.nonzero(out)
    meta = pd.DataFrame([{"row": 0, "scale": scale, "pad_x": pad_x, "pad_y": pad_y,
                          "width": w, "height": h}])
    assert content_boxes(meta)[0].tolist() == [xs.min(), ys.min(),
                                                               xs.max() + 1, ys.max() + 1]


# ------------------------------------------------------------------ evaluation on a tiny model

def intensity_model(cache, ids, labels, transform) -> IntensityModel:
    means = np.array([content_mean(transform(image=cache.image(i))["image"][None]).item()
                      for i in ids])
    return IntensityModel(torch.tensor([means[labels == k].mean() for k in range(len(CLASSES))],
                                       dtype=torch.float32))


def test_evaluate_robustness_reports_real_drops(tiny_cache, tmp_path):
    cache, ids, labels = tiny_cache
    transform = eval_transform(32)
    model = intensity_model(cache, ids, labels, transform)
    report = evaluate_robustness(model, cache, ids, labels, CLASSES, transform, severities=2,
                                 batch_size=7, device="cpu", seed=0)
    assert report["n"] == len(ids) and report["clean"]["accuracy"] == 1.0
    assert set(report["corruptions"]) == set(CORRUPTIONS)
    for levels in report["corruptions"].values():
        assert list(levels) == ["1", "2"]
        for r in levels.values():
            for k in ("macro_auc", "accuracy", "balanced_accuracy"):
                assert r[f"{k}_drop"] == pytest.approx(report["clean"][k] - r[k])
    # The intensity model must suffer from a strong brightness / contrast change.
    assert report["corruptions"]["brightness_contrast"]["2"]["accuracy_drop"] > 0.2
    drops = [r["macro_auc_drop"] for levels in report["corruptions"].values() for r in levels.values()]
    assert report["worst_macro_auc_drop"] == max(drops)
    name, s = report["worst_corruption"].split("@")
    assert report["corruptions"][name][s]["macro_auc_drop"] == max(drops)
    again = evaluate_robustness(model, cache, ids, labels, CLASSES, transform, severities=2,
                                batch_size=5, device="cpu", seed=0)
    assert again == report
    rows = drop_rows(report)
    assert len(rows) == 2 * len(CORRUPTIONS) and {r["severity"] for r in rows} == {1, 2}
    assert rows[0]["pass"] == f"{rows[0]['corruption']}@{rows[0]['severity']}"
    plot_robustness(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


# ------------------------------------------------------------------ stages on a tiny checkpoint

def run_stage(name: str, *args: str) -> None:
    """Run stages/<name>.py as __main__ in this process (its imports are already loaded)."""
    script = REPO / "stages" / f"{name}.py"
    saved = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # run_main ends every stage with sys.exit: only a failure counts
        if exc.code:
            raise
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """cache, splits, params and a random resnet18 checkpoint; the evaluate stage already run."""
    root = tmp_path_factory.mktemp("project")
    ids, labels = write_cache(root / "cache", n_per_class=6, seed=3)
    splits = root / "splits"
    splits.mkdir()
    frame = pd.DataFrame({"image_id": ids, "group": ids, "label": np.array(CLASSES)[labels]})
    frame.iloc[0::2].to_csv(splits / "val.csv", index=False)
    frame.iloc[1::2].to_csv(splits / "test.csv", index=False)
    (root / "params.yaml").write_text("robustness:\n  severities: 1\nevaluate:\n  batch_size: 4\n")
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES), dropout=0.0)
    save_checkpoint(root / "model.pt", model, CheckpointMeta(
        backbone="resnet18", classes=CLASSES, image_size=32, cache_size=SIZE,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], dropout=0.0,
        params={}, split="stratified", epoch=0, best_val_macro_auc=0.5))
    run_stage("evaluate", "--params", str(root / "params.yaml"), "--model", str(root / "model.pt"),
              "--cache", str(root / "cache"), "--splits", str(splits),
              "--predictions", str(root / "predictions"), "--metrics", str(root / "evaluate.json"),
              "--plots", str(root / "plots_evaluate"))
    return root


def test_evaluate_stage_outputs(project):
    test = pd.read_csv(project / "predictions" / "test.csv")
    assert list(test.columns) == ["image_id", "true", "pred", *[f"prob_{c}" for c in CLASSES],
                                  *[f"logit_{c}" for c in CLASSES]]
    assert len(test) == 9 and np.allclose(test.filter(like="prob_").sum(axis=1), 1.0)
    metrics = json.loads((project / "evaluate.json").read_text())
    assert set(metrics) == {"val", "test"} and metrics["test"]["n"] == 9
    assert set(metrics["val"]) == set(metrics["test"])
    plots = project / "plots_evaluate"
    for name in ("roc.json", "pr.json", "confusion.json", "roc.png", "confusion.png"):
        assert (plots / name).stat().st_size > 0, name
    assert len(json.loads((plots / "confusion.json").read_text())) == 9


def test_calibrate_stage_stores_the_temperature(project):
    run_stage("calibrate", "--params", str(project / "params.yaml"),
              "--model", str(project / "model.pt"), "--predictions", str(project / "predictions"),
              "--out-model", str(project / "calibrated.pt"),
              "--metrics", str(project / "calibration.json"), "--plots", str(project / "plots_cal"))
    report = json.loads((project / "calibration.json").read_text())
    _, meta = load_checkpoint(project / "calibrated.pt")
    assert meta.temperature == pytest.approx(report["temperature"]) and meta.temperature > 0
    # the thresholds predict will use, fitted on the calibrated validation probabilities
    assert meta.operating_points == report["operating_points"]
    assert report["operating_points"]["malignant_vs_rest"]["scale"] == "calibrated"
    assert report["val"]["after"]["nll"] <= report["val"]["before"]["nll"] + 1e-9
    rows = json.loads((project / "plots_cal" / "reliability.json").read_text())
    assert sum(r["count"] for r in rows if r["calibration"] == "after") == 9


def test_robustness_stage(project):
    run_stage("robustness", "--params", str(project / "params.yaml"),
              "--model", str(project / "model.pt"), "--cache", str(project / "cache"),
              "--splits", str(project / "splits"), "--metrics", str(project / "robustness.json"),
              "--plots", str(project / "plots_rob"))
    report = json.loads((project / "robustness.json").read_text())
    assert set(report["corruptions"]) == set(CORRUPTIONS) and report["severities"] == 1
    rows = json.loads((project / "plots_rob" / "robustness.json").read_text())
    assert len(rows) == len(CORRUPTIONS)


def test_explain_stage_without_lesion_annotations(project):
    """A source without boxes (a folder-per-class manifest): the gallery and the summary are
    produced, localization and ROAD say why they do not apply, the CAM layer stays the
    a-priori one."""
    DatasetInfo("manifest", CLASSES, str(project)).save(project / "dataset.json")
    ids = pd.concat([pd.read_csv(project / "predictions" / f"{part}.csv")["image_id"]
                     for part in ("val", "test")])
    pd.DataFrame({"image_id": ids, "group": ids}).to_csv(project / "groups.csv", index=False)
    run_stage("explain", "--params", str(project / "params.yaml"),
              "--groups", str(project / "groups.csv"),
              "--model", str(project / "model.pt"), "--cache", str(project / "cache"),
              "--predictions", str(project / "predictions" / "test.csv"),
              "--val-predictions", str(project / "predictions" / "val.csv"),
              "--info", str(project / "dataset.json"), "--metrics", str(project / "explain.json"),
              "--gallery", str(project / "gallery"), "--summary", str(project / "gradcam.md"))
    metrics = json.loads((project / "explain.json").read_text())
    assert metrics["n_test"] == 9 and metrics["n_annotated"] == 0
    assert metrics["localization"] == metrics["faithfulness"]["road"] == {
        "applicable": False, "reason": "none of the 9 test images has a usable lesion "
                                       "annotation (box) to score the maps against"}
    assert metrics["layer_selection"]["selected_layer"] == "layer4.1"
    assert metrics["layer_selection"]["n_validation"] == 0
    pngs = sorted(p.name for p in (project / "gallery").glob("*.png"))
    assert pngs and len(pngs) == metrics["gallery"]["n_images"]
    assert "Not applicable: none of the 9 test images" in (project / "gradcam.md").read_text()
