"""One radiograph: scene, lesions and the center's acquisition style; its boxes and polygons."""
from __future__ import annotations

import math

import cv2
import numpy as np

from assurexray.data.synthetic.acquisition import CENTER_STYLES, burn_in, canvas_size, display
from assurexray.data.synthetic.anatomy import build_scene, draw_shape, scaled
from assurexray.data.synthetic.figures import WITHIN_BONE
from assurexray.data.synthetic.lesions import (
    LesionSpec,
    bone_anchor,
    draw_lesion,
    lesion_specs,
    smooth_noise,
)
from assurexray.data.synthetic.metadata import Row
from assurexray.data.synthetic.rng import rng_for


def _named(shapes: list, name: str):
    return next(s for s in shapes if s.name == name)


def render_image(row: Row, seed: int, min_side: int, max_side: int):
    """Draw one radiograph; returns (uint8 image, [(label, box, polygon), ...])."""
    patient = row.patient
    prng, rng = rng_for(seed, 2, patient.index), rng_for(seed, 1, row.number)
    style = CENTER_STYLES[patient.center]
    h, w = canvas_size(style, patient.scene, min_side, max_side, rng)
    bones, softs = build_scene(patient.scene, prng, row.view)
    specs = lesion_specs(patient, bones, prng)
    # Place the scene so that the (first, or for normals unseen) lesion lands mid-image.
    unit = min(h, w) / 2 * rng.uniform(0.85, 1.2) * (0.75 if patient.scene == "hip" else 1.0)
    theta = rng.normal(0, 0.14) + (math.pi if rng.uniform() < 0.15 else 0.0)
    mirror = -1.0 if (patient.index + (row.view == "lateral")) % 2 else 1.0
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[cos, -sin], [sin, cos]]) @ np.diag([mirror, 1.0])
    focus_unit = bone_anchor(scaled(_named(bones, specs[0].bone), np.zeros(2), rot, 1.0),
                             specs[0].joint_distance, specs[0].side)
    target = np.array([w, h]) * rng.uniform(0.35, 0.65, 2)
    origin = target - unit * focus_unit.point
    bone = np.zeros((h, w), np.float32)
    soft = np.zeros((h, w), np.float32)
    px = {id(s): scaled(s, origin, rot, unit) for s in bones + softs}
    for s in softs:
        draw_shape(soft, px[id(s)])
    for s in bones:
        draw_shape(bone, px[id(s)])
    bone *= 1 + 0.12 * smooth_noise((h, w), rng, max(3.0, min(h, w) / 60))  # trabecular texture
    lesions = []
    if patient.label != "Normal":
        for i, spec in enumerate(specs):  # each lesion's shape is shared by the patient's views
            shape = px[id(_named(bones, spec.bone))]
            lesion_rng = rng_for(seed, 3, patient.index, i)
            lesions += _draw_spec(bone, soft, shape, spec, lesion_rng, patient.subtype, h, w)
    image = display(bone, soft, unit, style, rng)
    burn_in(image, style, rng, [les[1] for les in lesions], "L" if mirror > 0 else "R")
    return image, lesions


def _draw_spec(bone, soft, shape, spec: LesionSpec, rng, subtype: str, h: int, w: int) -> list:
    anchor = bone_anchor(shape, spec.joint_distance, spec.side)
    extent = spec.area * h * w / 1.35          # box = extent plus a hand-drawn margin
    lb = math.sqrt(extent / spec.aspect) / 2
    if spec.kind in WITHIN_BONE:    # at most mildly expansile
        lb = min(lb, 1.5 * anchor.radius + 2)
    la = min(extent / (4 * lb), 6 * anchor.radius + 4) if spec.kind in WITHIN_BONE else extent / (4 * lb)
    drawn = draw_lesion(spec.kind, bone, soft, anchor, la, lb, rng)
    if drawn is None:
        return []
    sl, mask = drawn
    outline = _outline(mask, sl, rng)
    if outline is None:
        return []
    return [(subtype, _hand_box(outline, rng, w, h), outline)]


def _outline(mask: np.ndarray, sl, rng) -> np.ndarray | None:
    """The largest outer contour of a lesion mask, resampled to a hand-drawn vertex count."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)[:, 0, :].astype(float)
    if len(c) < 6 or cv2.contourArea(c.astype(np.float32)) < 9:
        return None
    c += [sl[1].start + 0.5, sl[0].start + 0.5]
    closed = np.vstack([c, c[:1]])
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    n = int(np.clip(arc[-1] / rng.uniform(5, 9), 10, 50))
    at = (np.arange(n) + rng.uniform()) * arc[-1] / n
    points = np.column_stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])])
    return points + rng.uniform(-0.6, 0.6, points.shape)


def _hand_box(polygon: np.ndarray, rng, w: int, h: int) -> tuple[float, float, float, float]:
    """The polygon's extent plus an uneven hand-drawn margin, clipped to the image."""
    (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0)
    mx, my = (x1 - x0), (y1 - y0)
    m = rng.uniform(0.0, 0.06, 4)
    return (max(0.0, x0 - m[0] * mx - 0.5), max(0.0, y0 - m[1] * my - 0.5),
            min(float(w), x1 + m[2] * mx + 0.5), min(float(h), y1 + m[3] * my + 0.5))
