"""Benign and malignant lesion drawings on a bone, and the lesion specs of a patient."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from assurexray.data import btxrd
from assurexray.data.synthetic.anatomy import Blob, Tube, draw_blob, draw_tube, tube_radius, window
from assurexray.data.synthetic.figures import (
    BOX_AREA_MEDIAN,
    BOX_AREA_RANGE,
    BOX_AREA_SIGMA,
    JOINT_DISTANCE,
    LESION_KIND,
    LESIONS_PER_FILE,
)
from assurexray.data.synthetic.metadata import Patient


@dataclass(frozen=True)
class Anchor:
    """Where a lesion sits, in pixels: a point, the bone axis direction u (toward the joint),
    its normal n and the local bone radius."""
    point: np.ndarray
    axis: np.ndarray
    u: np.ndarray
    n: np.ndarray
    radius: float
    joint: np.ndarray


def bone_anchor(shape, joint_distance: float, side: float) -> Anchor:
    """A point ``joint_distance`` radii from the joint end of ``shape``, ``side`` radii off-axis."""
    if isinstance(shape, Blob):
        u = np.array([math.cos(shape.angle), math.sin(shape.angle)])
        n = np.array([-u[1], u[0]])
        r = min(shape.axes) * 0.8
        c = np.asarray(shape.center)
        return Anchor(c + n * side * r * 0.5, c, u, n, r, c + u * shape.axes[0])
    p0, p1 = np.asarray(shape.p0), np.asarray(shape.p1)
    length = float(np.linalg.norm(p1 - p0))
    u = (p1 - p0) / length
    n = np.array([-u[1], u[0]])
    tc = float(np.clip(1 - joint_distance * shape.radius / length, 0.05, 1.0))
    r = float(tube_radius(shape, tc))
    axis_point = p0 + (p1 - p0) * tc
    return Anchor(axis_point + n * side * r, axis_point, u, n, r, p1)


def _local(acc_shape, anchor: Anchor, half: float):
    """Window around the anchor and its along (a) / across (b) coordinates."""
    cx, cy = anchor.point
    win = window(acc_shape, cx - half, cy - half, cx + half, cy + half)
    if win is None:
        return None
    sl, xs, ys = win
    dx, dy = xs - cx, ys - cy
    return sl, dx * anchor.u[0] + dy * anchor.u[1], dx * anchor.n[0] + dy * anchor.n[1]


def _lobed(a, b, la, lb, rng, amplitude):
    """Normalised radius of a lobulated ellipse (rho < edge inside)."""
    rho = np.sqrt((a / la) ** 2 + (b / lb) ** 2)
    phi = np.arctan2(b / lb, a / la)
    edge = 1.0
    for k in range(2, 6):
        edge = edge + amplitude * rng.uniform(0.3, 1.0) / k * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return rho, edge


def smooth_noise(shape_hw, rng, cell: float) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a coarse random grid resized (cubic)."""
    h, w = shape_hw
    small = rng.uniform(-1, 1, (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def draw_lytic(bone, anchor, la, lb, rng, rim, lobes, amplitude):
    """Well-defined lucency: the bone thinned inside sharp lobulated outlines, each with a
    sclerotic rim (several lobes give the 'soap bubble' septations)."""
    loc = _local(bone.shape, anchor, 1.5 * max(la, lb) + 4)
    if loc is None:
        return None
    sl, a, b = loc
    inside = np.zeros(a.shape, np.float32)
    ring = np.zeros(a.shape, np.float32)
    edge_px = 1.2
    for i in range(lobes):
        oa, ob = (rng.uniform(-0.45, 0.45, 2) * [la, lb]) if i else (0.0, 0.0)
        sa, sb = (rng.uniform(0.45, 0.7) * la, rng.uniform(0.5, 0.8) * lb) if i else (la, lb)
        rho, edge = _lobed(a - oa, b - ob, sa, sb, rng, amplitude)
        dist_px = (edge - rho) * min(sa, sb)
        inside = np.maximum(inside, np.clip(dist_px / edge_px + 0.5, 0, 1))
        ring = np.maximum(ring, np.exp(-((dist_px + 1.0) / max(1.2, 0.08 * min(sa, sb))) ** 2))
    local_max = float(bone[sl].max()) if bone[sl].size else 1.0
    depth = rng.uniform(0.6, 0.85)
    bone[sl] = bone[sl] * (1 - depth * inside) + rim * local_max * ring
    return sl, inside > 0.5


def draw_sclerotic(bone, anchor, la, lb, rng):
    """A dense, well-defined island."""
    loc = _local(bone.shape, anchor, 1.3 * max(la, lb) + 3)
    if loc is None:
        return None
    sl, a, b = loc
    rho, edge = _lobed(a, b, la, lb, rng, 0.25)
    inside = np.clip((edge - rho) * min(la, lb) / 1.5 + 0.5, 0, 1)
    local_max = float(bone[sl].max()) if bone[sl].size else 1.0
    bone[sl] += rng.uniform(0.6, 0.9) * local_max * inside * (0.8 + 0.2 * smooth_noise(a.shape, rng, 4))
    return sl, inside > 0.5


def draw_exostosis(bone, anchor, la, lb, rng):
    """Osteochondroma: a bony stalk from the cortex, pointing away from the joint, with a
    broad base and a bulbous cap, cortex and medulla continuous with the parent bone."""
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    base = anchor.axis + anchor.n * side * anchor.radius * 0.8
    tilt = rng.uniform(0.2, 0.7)
    direction = anchor.n * side * math.cos(tilt) - anchor.u * math.sin(tilt)
    length = max(la, lb) * 1.4
    radius = float(np.clip(0.32 * length, 2.0, 0.7 * anchor.radius + 2))
    stalk = Tube("exostosis", tuple(base), tuple(base + direction * length), radius, flare0=0.8,
                 flare1=rng.uniform(0.3, 0.7), cortex=0.35, marrow=0.35, density=1.3)
    extent = np.zeros_like(bone)
    draw_tube(extent, stalk)
    bone += extent
    return (slice(0, bone.shape[0]), slice(0, bone.shape[1])), extent > 0.5


def draw_loose_bodies(bone, anchor, la, lb, rng):
    """Synovial osteochondromatosis: a cluster of small ring-like calcified bodies at a joint."""
    centre = anchor.joint + anchor.n * rng.uniform(-1.2, 1.2) * anchor.radius
    extent = np.zeros_like(bone)
    for _ in range(int(rng.integers(6, 15))):
        offset = rng.uniform(-1.3, 1.3, 2) * [la, lb]
        p = centre + anchor.u * offset[0] + anchor.n * offset[1]
        size = max(1.5, rng.uniform(0.1, 0.22) * min(la, lb))
        draw_blob(extent, Blob("body", tuple(p), (size, size * rng.uniform(0.7, 1.0)),
                               rng.uniform(0, np.pi), cortex=0.4, marrow=0.4))
    bone += extent * 1.6
    mask = extent > 0.3
    if not mask.any():
        return None
    hull = cv2.convexHull(np.argwhere(mask)[:, ::-1].astype(np.int32))
    region = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(region, hull, 1)
    return (slice(0, bone.shape[0]), slice(0, bone.shape[1])), region > 0


def draw_aggressive(bone, soft, anchor, la, lb, rng, sclerotic: bool):
    """Malignant: ill-defined moth-eaten/permeative lysis (with a sclerotic cloud for
    osteosarcoma), cortical breach, periosteal reaction (sunburst spicules, Codman triangle)
    and a soft-tissue mass."""
    loc = _local(bone.shape, anchor, 1.6 * max(la, lb) + 4)
    if loc is None:
        return None
    sl, a, b = loc
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    rho, edge = _lobed(a, b - side * 0.2 * lb, la, lb, rng, 0.4)
    zone = np.clip((edge - rho) / 0.45 + 0.3, 0, 1)          # fuzzy, wide transition
    holes = np.clip(smooth_noise(a.shape, rng, max(2.0, 0.12 * min(la, lb))) * 2.5 + 0.6, 0, 1)
    local_max = float(bone[sl].max()) if bone[sl].size else 1.0
    region = bone[sl] * (1 - rng.uniform(0.75, 0.95) * zone * holes)
    if sclerotic:
        cloud = np.clip(smooth_noise(a.shape, rng, max(3.0, 0.25 * min(la, lb))) + 0.2, 0, 1)
        region += rng.uniform(0.5, 0.9) * local_max * zone * cloud
    mass_b = side * (anchor.radius + 0.3 * lb)
    mass = np.sqrt(np.maximum(1 - (a / (0.9 * la)) ** 2 - ((b - mass_b) / (0.75 * lb)) ** 2, 0))
    soft[sl] += rng.uniform(0.5, 0.8) * lb * mass
    spicules = _periosteal(anchor, a, b, la, lb, side, rng)
    region += rng.uniform(0.25, 0.45) * local_max * spicules * (np.abs(b) > 0.8 * anchor.radius)
    bone[sl] = region
    return sl, (zone > 0.5) | (mass > 0.25) | (spicules > 0.3)


def _periosteal(anchor, a, b, la, lb, side, rng):
    """Sunburst spicules radiating from the bone on the mass side, plus a Codman triangle."""
    img = np.zeros(a.shape, np.float32)
    # window-local pixel position of the anchor point (a = b = 0)
    iy, ix = np.unravel_index(np.argmin(a * a + b * b), a.shape)
    origin = np.array([ix, iy], float)
    for _ in range(int(rng.integers(12, 28))):
        along = rng.uniform(-0.8, 0.8) * la
        angle = rng.uniform(-0.5, 0.5)
        reach = rng.uniform(0.6, 1.1) * lb + anchor.radius
        start = origin + anchor.u * along
        direction = anchor.n * side * math.cos(angle) + anchor.u * math.sin(angle)
        end = start + direction * reach
        cv2.line(img, tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int)), 1.0, 1,
                 cv2.LINE_AA)
    tip = origin + anchor.u * la * rng.choice([-1.0, 1.0])
    root = tip + anchor.n * side * anchor.radius
    codman = np.round([root, root + anchor.n * side * 0.35 * lb, root + (tip - origin) * 0.35])
    cv2.fillConvexPoly(img, codman.astype(np.int32), 0.8, cv2.LINE_AA)
    return img


def draw_lesion(kind: str, bone, soft, anchor: Anchor, la: float, lb: float, rng):
    """Draw one lesion; returns (window, mask of its drawn extent) or None if off-canvas."""
    if kind == "cyst":
        return draw_lytic(bone, anchor, la, lb, rng, rim=0.6, lobes=1, amplitude=0.15)
    if kind == "bubbly":
        return draw_lytic(bone, anchor, la, lb, rng, rim=0.5, lobes=int(rng.integers(3, 5)), amplitude=0.3)
    if kind == "cortical":
        return draw_lytic(bone, anchor, la, lb, rng, rim=0.8, lobes=2, amplitude=0.35)
    if kind == "sclerotic":
        return draw_sclerotic(bone, anchor, la, lb, rng)
    if kind == "exostosis":
        return draw_exostosis(bone, anchor, la, lb, rng)
    if kind == "loose_bodies":
        return draw_loose_bodies(bone, anchor, la, lb, rng)
    return draw_aggressive(bone, soft, anchor, la, lb, rng, sclerotic=kind == "osteosarcoma")



@dataclass(frozen=True)
class LesionSpec:
    kind: str
    bone: str
    joint_distance: float   # in bone radii
    side: float             # off-axis offset in bone radii
    area: float             # target box area / image area
    aspect: float           # along / across


def lesion_specs(patient: Patient, bones: list, rng) -> list[LesionSpec]:
    """The patient's lesions (shared by their views); normals get one unseen spec for framing."""
    kind = LESION_KIND[patient.frame_subtype]
    if kind == "cyst_or_sclerotic":
        kind = "sclerotic" if rng.uniform() < 0.4 else "cyst"
    label = patient.label if patient.label != "Normal" else (
        "Malignant" if patient.frame_subtype in btxrd.MALIGNANT_SUBTYPES else "Benign")
    shares = LESIONS_PER_FILE.get(patient.subtype, [1.0])
    count = 1 + int(rng.choice(len(shares), p=shares))
    if patient.bone == "ray":      # a metacarpal/metatarsal or proximal phalanx
        names = [b.name for b in bones if b.name.startswith("ray") and b.name.endswith(("_0", "_1"))]
    else:                          # further lesions (multiple osteochondromas) on any long bone
        names = [b.name for b in bones if isinstance(b, Tube)]
    specs = []
    for i in range(count):
        bone = patient.bone if i == 0 and patient.bone != "ray" else names[rng.integers(len(names))]
        area = BOX_AREA_MEDIAN[label] * math.exp(BOX_AREA_SIGMA * rng.standard_normal())
        specs.append(LesionSpec(kind, bone, rng.uniform(*JOINT_DISTANCE[kind]), rng.uniform(-0.5, 0.5),
                                float(np.clip(area, *BOX_AREA_RANGE)), rng.uniform(1.0, 1.8)))
    return specs
