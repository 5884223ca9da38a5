"""How well a class activation map points at the annotated lesion (pure numpy geometry).

Coordinates are continuous pixel-edge coordinates, the convention of ``cache.letterbox`` and of
every align_corners=False resize: pixel (row r, col c) covers [c, c+1) x [r, r+1), its centre is
(c + 0.5, r + 0.5). A resize by ``factor`` therefore maps a point (x, y) to exactly
(x * factor, y * factor); the cache -> model-input resize is such a pure scale.

Scores per image (CAM and masks in the model-input frame):

- pointing game: a hit when the CAM peak lies inside any lesion box. The peak is the centroid of
  the maximal plateau (every pixel within ``PLATEAU_TOL`` of the maximum), not the first argmax,
  which would favour the top-left of a saturated region. When the plateau falls apart into
  several 8-connected pieces the largest piece is used (ties: the first in raster order). A
  CAM without a peak (constant, e.g. all zero after the ReLU) counts as a miss.
- energy pointing game: the CAM mass inside the boxes over the total CAM mass (0 for an empty CAM).
- chance: the union box area inside the image content over the content area. A CAM peak in the
  letterbox padding can never be right, so the honest baseline for a point (or a uniform CAM)
  is drawn from the unpadded image only; it is the chance level of both games.
- IoU of the CAM thresholded at ``threshold`` x max against the union box mask and against the
  union polygon mask (NaN when no lesion of the image has a polygon).

Given the images' patient groups (a ``GroupedResampling``), each summary also carries intervals
that respect them: the pointing game, a proportion, gets the grouped Clopper-Pearson interval
of ``evaluation.proportions``; the mean energy, IoUs and the pointing game over chance (the
ratio of the two means) get the grouped stratified bootstrap.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage

from assurexray.data.cache import content_boxes
from assurexray.evaluation import proportions
from assurexray.evaluation.bootstrap import BOOTSTRAP, GroupedResampling
from assurexray.evaluation.metrics import ratio

PLATEAU_TOL = 1e-6
_POLY_SHIFT = 4  # cv2.fillPoly fixed-point bits: vertices keep 1/16 pixel precision
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def scale_lesions(lesions: Iterable[dict], factor: float) -> list[dict]:
    """Lesions (``{"label", "box", "polygon"}``) mapped through a resize by ``factor``."""
    return [{"label": les["label"],
             "box": [float(v) * factor for v in les["box"]],
             "polygon": [[float(x) * factor, float(y) * factor] for x, y in les["polygon"]]}
            for les in lesions]


def model_frame_annotations(cache, image_ids: Sequence[str],
                            image_size: int) -> tuple[list[list[dict]], list[list[float]]]:
    """Lesions and content boxes (``cache.content_box``) of cached images, mapped into the
    model-input frame.

    ``cache`` is a ``cache.ImageCache`` (``.size``, ``.meta``, ``.lesions(id)``).
    """
    factor = image_size / cache.size
    lesions = [scale_lesions(cache.lesions(i), factor) for i in image_ids]
    boxes = content_boxes(cache.meta.set_index("image_id").loc[list(image_ids)])
    return lesions, [[float(v) * factor for v in box] for box in boxes]


def box_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies in any box [x0, y0, x1, y1] (half-open: [x0, x1) x [y0, y1))."""
    cy = np.arange(shape[0]) + 0.5
    cx = np.arange(shape[1]) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    return mask


def polygon_mask(polygons: Sequence[Sequence[Sequence[float]]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels covered by any polygon, rasterized by cv2.fillPoly.

    fillPoly also fills the pixels its boundary passes through (a vertex edge on a pixel centre
    is inside), so a polygon mask can run up to one pixel wider than the exact centre test of
    ``box_mask``; negligible beside the coarseness of a CAM.
    """
    canvas = np.zeros(shape, dtype=np.uint8)
    for poly in polygons:
        if len(poly) < 3:
            continue
        # fillPoly puts pixel centres on integers: shift edge coordinates by half a pixel
        pts = np.round((np.asarray(poly, dtype=np.float64) - 0.5) * (1 << _POLY_SHIFT))
        cv2.fillPoly(canvas, [pts.astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_POLY_SHIFT)
    return canvas.astype(bool)


def peak_point(cam: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the CAM peak: centroid of the largest piece of the maximal plateau.

    None when the map is constant (no peak to point with).
    """
    peak = float(cam.max())
    if peak - float(cam.min()) <= PLATEAU_TOL:
        return None
    labels, n_pieces = ndimage.label(cam >= peak - PLATEAU_TOL, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return float(cols.mean()) + 0.5, float(rows.mean()) + 0.5


def point_in_boxes(point: tuple[float, float], boxes: Sequence[Sequence[float]]) -> bool:
    x, y = point
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)


def pointing_game(cam: np.ndarray, boxes: Sequence[Sequence[float]]) -> bool:
    """True when the CAM peak (plateau centroid) lies inside any box; False for a peakless CAM."""
    point = peak_point(cam)
    return point is not None and point_in_boxes(point, boxes)


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the CAM mass inside ``mask`` (0 for an all-zero CAM)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def threshold_cam(cam: np.ndarray, threshold: float) -> np.ndarray:
    """Binary CAM region: pixels at or above ``threshold`` x max (empty for an all-zero CAM)."""
    peak = float(cam.max())
    return cam >= threshold * peak if peak > 0 else np.zeros(cam.shape, dtype=bool)


@dataclass(frozen=True)
class LocalizationScore:
    pointing: float          # 1.0 hit, 0.0 miss
    energy: float
    chance: float
    iou_box: float
    iou_polygon: float       # NaN when the image has no lesion polygon
    empty_cam: bool


def score_cam(cam: np.ndarray, lesions: Sequence[dict], content_box: Sequence[float],
              threshold: float) -> LocalizationScore:
    """All localization scores of one CAM against its lesions (same frame as the CAM)."""
    boxes = [les["box"] for les in lesions]
    polygons = [les["polygon"] for les in lesions if len(les["polygon"]) >= 3]
    boxes_m = box_mask(boxes, cam.shape)
    content = box_mask([content_box], cam.shape)
    region = threshold_cam(cam, threshold)
    return LocalizationScore(
        pointing=float(pointing_game(cam, boxes)),
        energy=energy_in_mask(cam, boxes_m),
        chance=float((boxes_m & content).sum() / max(int(content.sum()), 1)),
        iou_box=iou(region, boxes_m),
        iou_polygon=iou(region, polygon_mask(polygons, cam.shape)) if polygons else float("nan"),
        empty_cam=peak_point(cam) is None,
    )


# The interval method of each key of a summary's "intervals".
INTERVAL_METHODS = {"pointing_game": proportions.METHOD,
                    **dict.fromkeys(("energy_pointing", "iou_box", "iou_polygon",
                                     "pointing_vs_chance"), BOOTSTRAP)}


def summarize(scores: Sequence[LocalizationScore],
              resampling: GroupedResampling | None = None) -> dict:
    """Means over images; ``iou_polygon`` over the ``n_polygon`` images that have polygons;
    with ``resampling`` (aligned with ``scores``) their grouped ``intervals`` too.

    An empty group keeps every key (means None), so metric files diff key by key.
    """
    if not scores:
        return {"n": 0, **dict.fromkeys(["pointing_game", "energy_pointing", "chance", "iou_box",
                                         "iou_polygon"]), "n_polygon": 0, "n_empty_cam": 0,
                **({"intervals": None} if resampling else {})}
    table = {k: np.array([asdict(s)[k] for s in scores], dtype=float) for k in asdict(scores[0])}
    has_poly = ~np.isnan(table["iou_polygon"])
    means = {
        "n": len(scores),
        "pointing_game": float(table["pointing"].mean()),
        "energy_pointing": float(table["energy"].mean()),
        "chance": float(table["chance"].mean()),
        "iou_box": float(table["iou_box"].mean()),
        "iou_polygon": float(table["iou_polygon"][has_poly].mean()) if has_poly.any() else None,
        "n_polygon": int(has_poly.sum()),
        "n_empty_cam": int(table["empty_cam"].sum()),
    }
    return {**means, "intervals": score_intervals(table, resampling)} if resampling else means


def score_intervals(table: dict[str, np.ndarray], resampling: GroupedResampling) -> dict:
    """The pointing game's grouped exact interval (with its count and n) and grouped bootstrap
    intervals of the mean energy, IoUs (polygon: over the images that have one) and of the
    pointing game over its chance level."""
    has_poly = ~np.isnan(table["iou_polygon"])
    return {
        "pointing_game": proportions.proportion_interval(table["pointing"] > 0, resampling.groups,
                                                         resampling.ci_level),
        "energy_pointing": resampling.mean_interval(table["energy"]),
        "iou_box": resampling.mean_interval(table["iou_box"]),
        "iou_polygon": (resampling.subset(has_poly).mean_interval(table["iou_polygon"][has_poly])
                        if has_poly.any() else None),
        "pointing_vs_chance": resampling.interval(
            lambda weights: ratio(weights @ table["pointing"], weights @ table["chance"])),
    }


def grouped_summary(scores: Sequence[LocalizationScore], true_labels: Sequence[str],
                    correct: Sequence[bool], classes: Sequence[str],
                    resampling: GroupedResampling | None = None) -> dict:
    """Summaries overall, by true class (in ``classes`` order, those present) and for correct
    vs incorrect predictions; with ``resampling`` (aligned with ``scores``), their intervals."""
    def pick(keep):
        keep = np.asarray(keep, dtype=bool)
        return summarize([s for s, k in zip(scores, keep) if k],
                         resampling.subset(keep) if resampling else None)
    return {
        "overall": pick(np.ones(len(scores), dtype=bool)),
        "by_class": {c: pick([t == c for t in true_labels]) for c in classes if c in set(true_labels)},
        "correct": pick(correct),
        "incorrect": pick([not c for c in correct]),
    }


def localization_summary(cams: np.ndarray, lesions: Sequence[Sequence[dict]],
                         content_boxes: Sequence[Sequence[float]], threshold: float,
                         true_labels: Sequence[str], correct: Sequence[bool],
                         classes: Sequence[str],
                         resampling: GroupedResampling | None = None) -> dict:
    """Score every CAM against its own lesions and content box, then ``grouped_summary``."""
    scores = [score_cam(m, les, box, threshold) for m, les, box in zip(cams, lesions, content_boxes)]
    return grouped_summary(scores, true_labels, correct, classes, resampling)
