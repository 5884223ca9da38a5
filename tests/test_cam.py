"""CAMs through pytorch-grad-cam: shape, range, hook hygiene, ROAD faithfulness."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.data.transforms import eval_transform
from assurexray.evaluation.applicability import not_applicable
from assurexray.evaluation.bootstrap import GroupedResampling
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.explain import cam, cam_gallery, layer_selection, localization
from assurexray.reporting.render import SYNTHETIC_BANNER, header, render
from assurexray.training.models import (
    FAMILIES,
    build_model,
    cam_candidate_layers,
    cam_layer_name,
    cam_reshape_transform,
    cam_target_layer,
)

# One tiny model per registered family (input side, CAM-layer grid side), plus a timm family
# that is not registered and gets its layer from feature_info.
FAMILY_EXAMPLES = {"efficientnet": ("efficientnet_b0", 64, 2), "resnet": ("resnet18", 64, 2),
                   "densenet": ("densenet121", 64, 2), "convnext": ("convnext_atto", 64, 2),
                   "mobilenetv3": ("mobilenetv3_small_100", 64, 2),
                   "vit": ("vit_tiny_patch16_224", 224, 14),
                   "swin": ("swin_tiny_patch4_window7_224", 224, 7)}
UNREGISTERED = ("regnetx_002", 64, 2)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_every_registered_family_has_an_example():
    assert set(FAMILY_EXAMPLES) == set(FAMILIES)


@pytest.mark.parametrize("backbone, side, grid", [*FAMILY_EXAMPLES.values(), UNREGISTERED],
                         ids=[*FAMILY_EXAMPLES, "feature_info"])
def test_cam_shape_range_and_hooks_released(backbone, side, grid):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=3)
    inputs = torch.randn(2, 3, side, side)
    # The target layer's output, as the CAM sees it: spatial, not after global pooling.
    reshape = cam_reshape_transform(model) or (lambda x: x)
    seen = []
    handle = cam_target_layer(model).register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        assert model.eval()(inputs).shape == (2, 3)
    handle.remove()
    assert reshape(seen[0]).shape[0] == 2 and reshape(seen[0]).shape[-2:] == (grid, grid)
    model.train()
    maps = cam.compute_cams(model, inputs, [0, 2], "gradcam")
    assert maps.shape == (2, side, side) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert _hooks(model) == 0
    assert model.training                           # mode restored
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "eigencam"])
def test_other_methods(method, batch):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    maps = cam.compute_cams(model, batch, [1, 1], method)
    assert maps.shape == (2, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert _hooks(model) == 0


def test_unknown_method_and_bad_class_are_clear_errors(batch):
    model = build_model("resnet18", num_classes=3)
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam.compute_cams(model, batch, [0, 0], "scorecam")
    with pytest.raises(IndexError, match="target classes"):
        cam.compute_cams(model, batch, [0, 7], "gradcam")
    assert _hooks(model) == 0


class LeftRight(nn.Module):
    """Class 0 = brightness of the left half, class 1 = of the right half (toy, known answer)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1)
        nn.init.constant_(self.features.weight, 1 / 3)
        nn.init.zeros_(self.features.bias)

    def forward(self, x):
        f = self.features(x)
        half = f.shape[-1] // 2
        return 20 * torch.stack([f[..., :half].mean((1, 2, 3)), f[..., half:].mean((1, 2, 3))], 1)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(cam, "cam_target_layer", lambda model: model.features)
    return LeftRight()


def _blob_images(n: int) -> tuple[list[np.ndarray], TensorDataset]:
    """Dark noise with a bright blob in the left half, and their model inputs."""
    rng = np.random.default_rng(1)
    images = []
    for _ in range(n):
        img = rng.integers(0, 20, (32, 32), dtype=np.uint8)
        y, x = rng.integers(4, 20), rng.integers(2, 8)
        img[y:y + 8, x:x + 8] = 230
        images.append(img)
    transform = eval_transform(32)
    inputs = torch.stack([transform(image=img)["image"] for img in images])
    return images, TensorDataset(inputs, torch.zeros(n, dtype=torch.long))


def test_cam_points_at_the_evidence_of_the_target_class(toy):
    images, dataset = _blob_images(3)
    maps = cam.cams_for_dataset(toy, dataset, np.zeros(3, int), "hirescam", batch_size=2)
    assert maps.shape == (3, 32, 32)
    for img, m in zip(images, maps):
        assert img[m > 0.9].min() == 230            # the peak sits on the blob
        assert m[:, 16:].max() == 0.0               # class 0 never looks right


def test_road_morf_drops_more_than_lerf_and_is_seeded(toy):
    _, dataset = _blob_images(4)
    targets = np.zeros(4, int)
    maps = cam.cams_for_dataset(toy, dataset, targets, "hirescam", batch_size=4)
    kwargs = dict(percentiles=[50, 80], batch_size=3, seed=5)
    boxes = [[0, 0, 32, 32]] * 4                   # no padding: every pixel is content
    road = cam.road_scores(toy, dataset, maps, boxes, targets, **kwargs)
    assert road["morf"].shape == road["lerf"].shape == (2, 4)
    assert (road["morf"] < road["lerf"]).all()     # removing the evidence hurts more
    again = cam.road_scores(toy, dataset, maps, boxes, targets, **kwargs)
    np.testing.assert_array_equal(road["morf"], again["morf"])
    np.testing.assert_array_equal(road["lerf"], again["lerf"])
    four_patients = GroupedResampling(np.arange(4), np.zeros(4, int), 200, 0.9, 1)
    summary = cam.road_summary(road, [50, 80], four_patients)
    assert summary["n"] == 4 and summary["combined"] > 0
    assert summary["morf"]["80"] == pytest.approx(road["morf"][1].mean())
    assert summary["combined_ci_low"] <= summary["combined"] <= summary["combined_ci_high"]
    assert summary["ci_level"] == 0.9
    assert cam.road_summary(road, [50, 80], four_patients) == summary   # seeded


def patients(n: int, iterations: int = 200) -> GroupedResampling:
    """One patient per image."""
    return GroupedResampling(np.arange(n), np.zeros(n, int), iterations, 0.95, 0)


def test_road_summary_interval_spans_the_patients_and_needs_two():
    road = {"morf": np.array([[-0.4, -0.2, 0.0, -0.6]]), "lerf": np.array([[0.0, 0.0, 0.0, 0.0]])}
    summary = cam.road_summary(road, [50], patients(4, iterations=500))
    per_image = np.array([0.2, 0.1, 0.0, 0.3])
    assert summary["combined"] == pytest.approx(per_image.mean())
    assert 0.0 <= summary["combined_ci_low"] < summary["combined"] < summary["combined_ci_high"] <= 0.3
    one = cam.road_summary({k: v[:, :1] for k, v in road.items()}, [50], patients(1))
    assert one["n"] == 1 and one["combined_ci_low"] is None and one["combined_ci_high"] is None


class PaddingReader(nn.Module):
    """Class 0 = brightness of the left 8 columns only: the letterbox padding in the test below."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.5))   # p(class 0) = 0.12 on black padding

    def forward(self, x):
        return self.gain * torch.stack([x[..., :8].mean((1, 2, 3)), -x[..., :8].mean((1, 2, 3))], 1)


def test_road_ranks_and_imputes_content_pixels_only():
    """A CAM that points at the padding cannot move ROAD: the padding is never imputed, so a
    model that reads only the padding keeps its confidence at every percentile."""
    _, dataset = _blob_images(3)
    inputs = dataset.tensors[0].clone()
    inputs[..., :8] = -2.0                          # the padding band, as normalized black
    dataset = TensorDataset(inputs, dataset.tensors[1])
    maps = np.zeros((3, 32, 32), np.float32)
    maps[..., :8] = 1.0                             # all relevance on the padding
    boxes = [[8, 0, 32, 32]] * 3
    road = cam.road_scores(PaddingReader(), dataset, maps, boxes, np.zeros(3, int),
                           percentiles=[20, 50], batch_size=2, seed=0)
    assert np.abs(road["morf"]).max() == 0.0 and np.abs(road["lerf"]).max() == 0.0
    ranks = [cam.tie_broken_ranks(m[:, 8:], np.random.default_rng(0)) for m in maps]
    crops = [cam.content_crop(box, (32, 32)) for box in boxes]
    imputed = cam.road_inputs(inputs, ranks, crops, 50, most_relevant_first=True)
    assert torch.equal(imputed[..., :8], inputs[..., :8])
    changed = (imputed != inputs).any(dim=1)        # pixels imputed, per image
    assert (changed.sum(dim=(1, 2)) == 32 * 24 // 2).all()


def test_content_crop_takes_the_pixel_centres_inside_the_box():
    rows, cols = cam.content_crop([2.0, 3.4, 10.6, 7.5], (12, 12))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (3, 7, 2, 11)
    np.testing.assert_array_equal(localization.box_mask([[2.0, 3.4, 10.6, 7.5]], (12, 12)),
                                  np.pad(np.ones((4, 9), bool), ((3, 5), (2, 1))))


def test_tie_broken_ranks_keep_order_and_split_ties_exactly():
    m = np.zeros((10, 10), dtype=np.float32)
    m[:3] = np.linspace(0.1, 1.0, 30).reshape(3, 10)
    ranks = cam.tie_broken_ranks(m, np.random.default_rng(0))
    assert len(np.unique(ranks)) == 100 and ranks.min() == 0.0 and ranks.max() == 1.0
    assert (ranks[m > 0] > ranks[m == 0].max()).all()
    np.testing.assert_array_equal(np.argsort(ranks[:3].ravel()), np.argsort(m[:3].ravel()))
    # the 80th percentile keeps exactly 80% below it, although 70% of the map is one value
    assert (ranks < np.percentile(ranks, 80)).sum() == 80


def test_overlay_is_rgb_at_image_size():
    img = np.full((40, 30), 128, dtype=np.uint8)
    out = cam.overlay(img, np.random.default_rng(0).random((10, 10)).astype(np.float32))
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------ gallery and summary

def _predictions() -> SplitPredictions:
    rows = {  # image_id: (true, p(Normal), p(Benign), p(Malignant))
        "a": (0, .90, .05, .05), "b": (0, .60, .30, .10), "c": (0, .20, .70, .10),
        "d": (1, .10, .80, .10), "e": (1, .50, .40, .10), "f": (1, .10, .20, .70),
        "g": (2, .10, .10, .80), "h": (2, .30, .60, .10), "i": (0, .95, .03, .02),
        "j": (0, .90, .05, .05),
    }
    ids = list(rows)
    probs = np.array([rows[i][1:] for i in ids])
    return SplitPredictions(np.array(ids), ["Normal", "Benign", "Malignant"],
                            np.array([rows[i][0] for i in ids]), np.log(probs))


def test_gallery_selection_is_deterministic_and_ordered():
    cases = cam_gallery.select_cases(_predictions(), per_class=2)
    chosen = {}
    for c in cases:
        chosen.setdefault((c.class_name, c.kind), []).append(c.image_id)
    assert chosen == {
        ("Normal", "tp"): ["i", "a"],          # highest p first; a before j on a tie
        ("Normal", "fp"): ["e"],
        ("Normal", "fn"): ["c"],
        ("Benign", "tp"): ["d"],
        ("Benign", "fp"): ["c", "h"],
        ("Benign", "fn"): ["f", "e"],          # lowest p(Benign) first
        ("Malignant", "tp"): ["g"],
        ("Malignant", "fp"): ["f"],
        ("Malignant", "fn"): ["h"],
    }
    first = cases[0]
    assert first.file_name == "normal_tp_1.png" and first.rank == 1
    assert (first.true, first.pred) == ("Normal", "Normal")
    assert first.prob == pytest.approx(0.95)
    fn = next(c for c in cases if c.image_id == "c" and c.kind == "fn")
    assert (fn.pred, fn.prob, fn.prob_pred) == ("Benign", pytest.approx(0.2), pytest.approx(0.7))
    assert cam_gallery.select_cases(_predictions(), per_class=2) == cases


def test_triptych_png(tmp_path):
    case = cam_gallery.select_cases(_predictions(), per_class=1)[0]
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    lesions = [{"label": "x", "box": [10, 12, 30, 40], "polygon": [[12, 14], [28, 14], [20, 38]]}]
    path = tmp_path / case.file_name
    cam_gallery.render_triptych(path, img, np.random.default_rng(1).random((8, 8)), lesions, case,
                            "gradcam")
    png = cv2.imread(str(path))
    assert png.shape == (360, 960, 3) and png.std() > 0


def test_summary_page_links_the_gallery_and_warns(tmp_path):
    score = localization.LocalizationScore(1.0, 0.6, 0.1, 0.4, 0.3, False)
    road = {"morf": np.array([[-0.3, -0.1]]), "lerf": np.array([[-0.05, 0.0]])}
    choice = {"selected_layer": "layer4.1", "selected_by": layer_selection.BY_VALIDATION,
              "n_validation": 7, "candidates": {}}
    metrics = {"method": "gradcam", "cam_threshold": 0.5, "n_test": 10, "n_annotated": 2,
               "layer_selection": choice,
               "localization": {t: localization.grouped_summary(
                   [score, score], ["Benign", "Malignant"], [True, False],
                   ["Normal", "Benign", "Malignant"]) for t in ("true_class", "predicted_class")},
               "faithfulness": {"road": cam.road_summary(road, [50], patients(2))}}
    cases = cam_gallery.select_cases(_predictions(), per_class=1)
    summary = tmp_path / "docs" / "gradcam_summary.md"

    def page(source: str, explain: dict = metrics) -> str:
        return render("gradcam_summary.md.j2", header=header("Grad-CAM summary", "`stages/explain.py`",
                                                              "`metrics/explain.json`", source),
                      **cam_gallery.summary_context(explain, cases, tmp_path / "plots" / "gallery", summary))

    text = page("synthetic")
    assert text.startswith("# Grad-CAM summary") and "Generated by `stages/explain.py`" in text
    assert NOT_FOR_CLINICAL_USE in text and SYNTHETIC_BANNER in text
    assert "| all | 2 | 1.000 | 0.600 | 0.100 | 0.400 | 0.300 |" in text
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(links) == len(cases) and links[0] == "../plots/gallery/normal_tp_1.png"
    assert "layer `layer4.1`" in text and "validation pointing game (n = 7" in text
    assert ("**0.087** (95% interval 0.050 to 0.125, grouped stratified percentile bootstrap) on "
            "n = 2 images of 2 patient groups") in text
    sparse = {**metrics, "localization": {t: {**g, "incorrect": {"n": 0, "pointing_game": float("nan")}}
                                          for t, g in metrics["localization"].items()}}
    assert "| incorrect | 0 | n/a | n/a | n/a | n/a | n/a |" in page("synthetic", sparse)  # empty
    assert "synthetic" not in page("btxrd").lower()
    # no annotated test image: the stage writes "not applicable" records, the page gives why
    na = not_applicable("none of the 9 test images has a box")
    empty = {**metrics, "n_annotated": 0, "localization": na, "faithfulness": {"road": na}}
    text = page("synthetic", empty)
    assert text.count("Not applicable: none of the 9 test images has a box.") == 2
    assert "| subset |" not in text and len(re.findall(r"\.png\)", text)) == len(cases)


def test_seeded_subset_is_seeded_sorted_and_capped():
    sub = cam.seeded_subset(100, 24, seed=3)
    assert len(sub) == 24 == len(set(sub)) and (np.diff(sub) > 0).all()
    np.testing.assert_array_equal(sub, cam.seeded_subset(100, 24, seed=3))
    assert not np.array_equal(sub, cam.seeded_subset(100, 24, seed=4))
    np.testing.assert_array_equal(cam.seeded_subset(10, 24, seed=3), np.arange(10))
    np.testing.assert_array_equal(cam.seeded_subset(10, 0, seed=3), np.arange(10))


# ------------------------------------------------------------------ layer chosen on validation

class MirrorLayer(nn.Module):
    """Two spatial layers: ``good`` sees the image as it is, ``late`` sees it mirrored (left-
    right); class 0 reads the right half of ``late``, i.e. the left half of the image. Both
    CAMs are for the same logit; only ``good``'s lands on the blob."""

    def __init__(self):
        super().__init__()
        self.good = nn.Conv2d(3, 1, 1)
        nn.init.constant_(self.good.weight, 1 / 3)
        nn.init.zeros_(self.good.bias)
        self.late = nn.Conv2d(1, 1, 1)
        nn.init.ones_(self.late.weight)
        nn.init.zeros_(self.late.bias)

    def forward(self, x):
        g = self.late(torch.flip(self.good(x), dims=[-1]))
        half = g.shape[-1] // 2
        return 20 * torch.stack([g[..., half:].mean((1, 2, 3)), g[..., :half].mean((1, 2, 3))], 1)


def _blob_cache(tmp_path, n: int):
    """An ImageCache of ``_blob_images`` (no padding) whose lesion box is each blob."""
    from assurexray.data.cache import ImageCache

    images, _ = _blob_images(n)
    ids = [f"v{i}" for i in range(n)]
    lesions = {}
    for image_id, img in zip(ids, images):
        ys, xs = np.nonzero(img == 230)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        lesions[image_id] = [{"label": "Benign", "box": box, "polygon": []}]
    np.save(tmp_path / "images.npy", np.stack(images))
    pd.DataFrame({"image_id": ids, "row": range(n), "scale": 1.0, "pad_x": 0, "pad_y": 0,
                  "width": 32, "height": 32}).to_csv(tmp_path / "meta.csv", index=False)
    (tmp_path / "lesions.json").write_text(json.dumps(lesions))
    return ImageCache(tmp_path), np.array(ids)


def test_layer_is_chosen_by_the_validation_pointing_game(tmp_path):
    cache, ids = _blob_cache(tmp_path, 5)
    kwargs = dict(method="gradcam", batch_size=2, image_size=32, threshold=0.5, seed=0)
    choice = layer_selection.select_layer(MirrorLayer(), cache, ids, np.zeros(5, int),
                                          eval_transform(32), ["late", "good"], max_images=4,
                                          **kwargs)
    assert choice["selected_layer"] == "good"            # not the first (a-priori) candidate
    assert choice["selected_by"] == layer_selection.BY_VALIDATION
    assert choice["n_validation"] == 4 and choice["candidates"]["good"]["n"] == 4
    assert choice["candidates"]["good"]["pointing_game"] == 1.0
    assert choice["candidates"]["late"]["pointing_game"] == 0.0
    none = layer_selection.select_layer(MirrorLayer(), cache, ids[:0], np.zeros(0, int),
                                        eval_transform(32), ["late", "good"], max_images=4,
                                        **kwargs)
    assert none == {"selected_layer": "late", "selected_by": layer_selection.A_PRIORI,
                    "n_validation": 0, "candidates": {"late": None, "good": None}}


@pytest.mark.parametrize("backbone, expected", [("resnet18", ["layer4.1", "layer3"]),
                                                ("efficientnet_b0", ["blocks.5", "blocks.4",
                                                                     "blocks.6"])])
def test_candidate_layers_start_with_the_family_layer_and_are_spatial(backbone, expected, batch):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=3)
    candidates = cam_candidate_layers(model)
    assert candidates == expected and candidates[0] == cam_layer_name(model)  # layer4 == layer4.1
    for layer in candidates:
        maps = cam.compute_cams(model, batch, [0, 1], "gradcam", layer)
        assert maps.shape == (2, 64, 64) and _hooks(model) == 0
