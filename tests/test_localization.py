"""Localization scores on hand-made maps with known answers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path
from scipy import ndimage
from sklearn.metrics import jaccard_score

from assurexray.data.cache import letterbox
from assurexray.explain import localization as loc


def test_box_mask_is_half_open_on_pixel_centres():
    mask = loc.box_mask([[2, 3, 6, 8]], (10, 10))
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 7, 2, 5)
    assert mask.sum() == 4 * 5


def test_polygon_mask_agrees_with_box_mask_up_to_the_boundary_ring():
    inner = [[2.2, 3.2], [5.8, 3.2], [5.8, 7.8], [2.2, 7.8]]      # no edge near a pixel centre
    np.testing.assert_array_equal(loc.polygon_mask([inner], (10, 10)),
                                  loc.box_mask([[2.2, 3.2, 5.8, 7.8]], (10, 10)))
    rect = [[2, 3], [6, 3], [6, 8], [2, 8]]                        # edges through centres - 0.5
    poly, box = loc.polygon_mask([rect], (10, 10)), loc.box_mask([[2, 3, 6, 8]], (10, 10))
    assert (poly >= box).all()
    assert (poly <= loc.box_mask([[1, 2, 7, 9]], (10, 10))).all()


def test_polygon_mask_of_a_triangle_against_an_exact_centre_test():
    tri = [[10, 10], [90, 10], [10, 70]]
    mask = loc.polygon_mask([tri], (100, 100))
    ys, xs = np.mgrid[0:100, 0:100] + 0.5
    exact = Path(tri).contains_points(np.c_[xs.ravel(), ys.ravel()]).reshape(100, 100)
    assert (mask >= exact).all()
    # extra pixels hug the boundary (two at the sharp vertex, where rounding reaches furthest)
    assert (mask <= ndimage.binary_dilation(exact, np.ones((3, 3)), iterations=2)).all()
    assert mask.sum() - exact.sum() <= 0.5 * (80 + 60 + 100) + 4


def test_polygon_with_fewer_than_three_points_is_ignored():
    assert not loc.polygon_mask([[[1, 1], [5, 5]]], (10, 10)).any()


def test_saturated_plateau_uses_centroid_not_first_argmax():
    cam = np.zeros((20, 20), dtype=np.float32)
    cam[2:12, 2:12] = 1.0                      # saturated plateau, centroid (7, 7)
    box = [5, 5, 10, 10]
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    assert not loc.point_in_boxes((c + 0.5, r + 0.5), [box])   # argmax-first would miss
    assert loc.peak_point(cam) == pytest.approx((7.0, 7.0))
    assert loc.pointing_game(cam, [box])


def test_plateau_tolerance_includes_near_maximal_pixels():
    cam = np.zeros((10, 10))
    cam[4, 4] = 1.0
    cam[4, 5] = 1.0 - 5e-7                     # within tolerance: part of the plateau
    cam[4, 6] = 1.0 - 1e-3                     # outside
    assert loc.peak_point(cam) == pytest.approx((5.0, 4.5))


def test_disconnected_plateau_takes_largest_piece():
    cam = np.zeros((30, 30))
    cam[1:3, 1:3] = 1.0                        # small piece
    cam[20:25, 20:25] = 1.0                    # large piece
    assert loc.peak_point(cam) == pytest.approx((22.5, 22.5))
    # a box between the pieces holds the centroid of the whole plateau but not the peak
    assert not loc.pointing_game(cam, [[10, 10, 20, 20]])
    assert loc.pointing_game(cam, [[20, 20, 25, 25]])


def test_flat_cam_has_no_peak_and_scores_as_a_miss():
    flat = np.zeros((16, 16))
    lesions = [{"label": "x", "box": [0, 0, 16, 16], "polygon": []}]
    score = loc.score_cam(flat, lesions, [0, 0, 16, 16], threshold=0.5)
    assert loc.peak_point(flat) is None
    assert score.pointing == 0.0 and score.energy == 0.0 and score.iou_box == 0.0
    assert score.empty_cam and math.isnan(score.iou_polygon)


def test_energy_chance_and_ious_known_answers():
    cam = np.zeros((10, 10))
    cam[2:8, 0:10] = 0.2                       # content rows 2..7
    cam[4:6, 0:5] = 1.0
    lesions = [{"label": "x", "box": [0, 2, 5, 8], "polygon": [[0.2, 4.2], [4.8, 4.2], [4.8, 5.8], [0.2, 5.8]]}]
    score = loc.score_cam(cam, lesions, content_box=[0, 2, 10, 8], threshold=0.5)
    assert score.pointing == 1.0
    inside = 0.2 * 20 + 1.0 * 10
    assert score.energy == pytest.approx(inside / (inside + 0.2 * 30))
    assert score.chance == pytest.approx(30 / 60)    # content area only, not 30 / 100
    assert score.iou_box == pytest.approx(10 / 30)
    assert score.iou_polygon == pytest.approx(1.0)


def test_iou_matches_sklearn_jaccard():
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)) > 0.6, rng.random((32, 32)) > 0.3
    assert loc.iou(a, b) == pytest.approx(jaccard_score(b.ravel(), a.ravel()))


def test_scale_lesions_is_a_pure_scale():
    lesion = {"label": "Benign", "box": [8, 16, 40, 48], "polygon": [[8, 16], [40, 48], [8, 48]]}
    (out,) = loc.scale_lesions([lesion], 0.625)
    assert out["box"] == [5, 10, 25, 30]
    assert out["polygon"] == [[5, 10], [25, 30], [5, 30]]
    assert out["label"] == "Benign"


def test_scaled_box_is_exact_through_the_model_input_resize():
    """A bright box in a cache image lands where scale_lesions says, after eval_transform."""
    from assurexray.data.transforms import eval_transform

    size, image_size = 64, 40
    box = [3, 5, 29, 41]                       # maps to non-integer edges on purpose
    img = np.zeros((size, size), dtype=np.uint8)
    img[loc.box_mask([box], img.shape)] = 200
    out = eval_transform(image_size, [0.5] * 3, [0.25] * 3)(image=img)["image"][0].numpy()
    weight = (out - out.min()) / (out.max() - out.min())    # 1 inside, 0 outside, partial edges
    (mapped,) = loc.scale_lesions([{"label": "x", "box": box, "polygon": []}], image_size / size)
    x0, y0, x1, y1 = mapped["box"]
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    assert weight.sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=0.02)
    assert (weight * xs).sum() / weight.sum() == pytest.approx((x0 + x1) / 2, abs=0.05)
    assert (weight * ys).sum() / weight.sum() == pytest.approx((y0 + y1) / 2, abs=0.05)


def test_grouped_summary_counts_and_polygon_subset():
    def s(hit, poly):
        return loc.LocalizationScore(pointing=hit, energy=0.5, chance=0.2, iou_box=0.3,
                                     iou_polygon=poly, empty_cam=False)
    scores = [s(1.0, 0.4), s(0.0, float("nan")), s(1.0, 0.6)]
    out = loc.grouped_summary(scores, ["Benign", "Malignant", "Benign"], [True, False, True],
                              classes=["Normal", "Benign", "Malignant"])
    assert out["overall"]["n"] == 3 and out["overall"]["n_polygon"] == 2
    assert out["overall"]["pointing_game"] == pytest.approx(2 / 3)
    assert out["overall"]["iou_polygon"] == pytest.approx(0.5)
    assert list(out["by_class"]) == ["Benign", "Malignant"]
    assert out["by_class"]["Malignant"]["iou_polygon"] is None
    assert out["correct"]["n"] == 2 and out["incorrect"]["pointing_game"] == 0.0
    empty = loc.summarize([])
    assert empty["n"] == 0 and empty["pointing_game"] is None and set(empty) == set(out["overall"])


def test_model_frame_annotations_scale_lesions_and_content_box():
    class FakeCache:  # the ImageCache surface the function reads
        size = 64
        meta = pd.DataFrame({"image_id": ["wide"], "row": [0], "scale": [0.64], "pad_x": [0],
                             "pad_y": [16], "width": [100], "height": [50]})

        @staticmethod
        def lesions(image_id):
            return [{"label": "Benign", "box": [8, 20, 24, 40], "polygon": [[8, 20], [24, 40], [8, 40]]}]

    (lesions,), (content,) = loc.model_frame_annotations(FakeCache(), ["wide"], image_size=32)
    assert content == pytest.approx([0, 8, 32, 24])           # letterbox rows 16..48 of 64, halved
    assert lesions[0]["box"] == [4, 10, 12, 20]
    assert lesions[0]["polygon"] == [[4, 10], [12, 20], [4, 20]]


@pytest.mark.parametrize("h,w", [(50, 101), (101, 50), (7, 200)])
def test_content_box_is_the_letterboxed_content(h, w):
    """The one content box (cache.content_box): the pixels letterbox really filled, also when
    the shorter side was rounded (a float width * scale box misses up to half a pixel)."""
    out, scale, pad_x, pad_y = letterbox(np.full((h, w), 255, np.uint8), 64)

    class FakeCache:
        size = 64
        meta = pd.DataFrame({"image_id": ["x"], "row": [0], "scale": [scale], "pad_x": [pad_x],
                             "pad_y": [pad_y], "width": [w], "height": [h]})

        @staticmethod
        def lesions(image_id):
            return []

    ys, xs = np.nonzero(out)
    _, (content,) = loc.model_frame_annotations(FakeCache(), ["x"], image_size=64)
    assert content == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
