"""An offline synthetic "BTXRD twin": the release's exact layout, drawn radiographs.

The real release cannot ship with the project (CC BY-NC-ND, 840 MB), yet every stage must run end
to end offline on data with the same format, class x center mix, quirks and defects. The twin's
metadata comes from published figures only (the README class x center table and view counts,
proportions rounded from the paper's summary statistics); no row of the real table is copied.

Images are drawn from projected-thickness models of bones (hollow tubes and ellipsoids whose
chord length gives the bright cortex and darker medulla of a radiograph). The lesion is the
only class signal, apart from a deliberate per-center acquisition style (exposure, noise,
blur, size, borders, burned-in markers) that makes a center-holdout split generalize worse.
Every image is drawn from its own random generator (SeedSequence keyed by image number, and by
patient for what views of one patient share), so the output does not depend on drawing order.
"""
from __future__ import annotations

import io
import json
import logging
import math
import re
import shutil
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import openpyxl

from assurexray.console import progress
from assurexray.data import btxrd

log = logging.getLogger(__name__)

RELEASE_DIR = "BTXRD"
PLANTED_NAME = "planted_defects.json"
LOCK_FILE_NAME = "~$dataset(total).xlsx"
LABELME_VERSION = "5.4.1"
MIN_IMAGES = 20

# ------------------------------------------------------------------ published figures
# Images per (center, class), README table (Yao et al. 2025, Table 1), in release row order:
# each center's tumour rows (malignant, then benign), then the normals by center.
CELL_COUNTS = {
    (1, "Malignant"): 235, (1, "Benign"): 1110,
    (2, "Malignant"): 76, (2, "Benign"): 214,
    (3, "Malignant"): 31, (3, "Benign"): 201,
    (1, "Normal"): 1593, (2, "Normal"): 259, (3, "Normal"): 27,
}
VIEW_COUNTS = {"frontal": 2181, "lateral": 1269, "oblique": 296}
TUMOUR_COUNTS = {label: sum(n for (_, cls), n in CELL_COUNTS.items() if cls == label)
                 for label in ("Benign", "Malignant")}
RELEASE_IMAGES = 3746
JPG_IMAGES = 27         # the last ids are .jpg files (README)
DUPLICATE_PAIRS = 21    # exact-duplicate pairs found by hash audits (README)
# Proportions below are rounded aggregate shares of the published release metadata (subtype
# counts, site combinations, age deciles, sex ratio per class); they are summary statistics only.
# Subtype shares (%) within each class.
SUBTYPE_SHARES = {
    "Benign": {"osteochondroma": 49, "multiple osteochondromas": 17, "simple bone cyst": 13.5,
               "giant cell tumor": 6, "osteofibroma": 3, "synovial osteochondroma": 3.5,
               "other bt": 8},
    "Malignant": {"osteosarcoma": 87, "other mt": 13},
}
# Marked site combinations (%) of tumour rows, with the drawn scene(s) for each: (scene, bone
# carrying the lesion, weight). One table for all classes
# (normals included, whose metadata marks no site) so that anatomy carries no class signal.
SITES = [
    (("tibia",), 26, [("knee", "tibia", 3), ("ankle", "tibia", 1)]),
    (("femur",), 25, [("knee", "femur", 4), ("hip", "femur", 1)]),
    (("humerus",), 12, [("shoulder", "humerus", 3), ("elbow", "humerus", 2)]),
    (("fibula",), 6.5, [("knee", "fibula", 3), ("ankle", "fibula", 1)]),
    (("tibia", "fibula", "femur"), 5.5, [("knee", "tibia", 1), ("knee", "femur", 1)]),
    (("hand",), 5, [("hand", "ray", 1)]),
    (("foot",), 4.5, [("foot", "ray", 1)]),
    (("hip bone",), 3, [("hip", "ilium", 1)]),
    (("radius",), 2.5, [("wrist", "radius", 3), ("elbow", "radius", 1)]),
    (("ulna",), 2, [("wrist", "ulna", 2), ("elbow", "ulna", 1)]),
    (("knee-joint",), 2, [("knee", "femur", 1), ("knee", "tibia", 1)]),
    (("tibia", "fibula"), 1.5, [("knee", "tibia", 1), ("knee", "fibula", 1)]),
    (("ulna", "radius"), 1, [("wrist", "radius", 1), ("wrist", "ulna", 1)]),
    (("femur", "hip bone"), 1, [("hip", "femur", 1)]),
    (("tibia", "femur"), 0.5, [("knee", "tibia", 1), ("knee", "femur", 1)]),
    (("shoulder-joint",), 0.5, [("shoulder", "humerus", 1)]),
    (("humerus", "shoulder-joint"), 0.5, [("shoulder", "humerus", 1)]),
    (("elbow-joint",), 0.5, [("elbow", "humerus", 1), ("elbow", "radius", 1)]),
    (("ankle-joint",), 0.5, [("ankle", "tibia", 1)]),
    (("foot", "tibia", "fibula"), 0.5, [("ankle", "tibia", 1)]),
]
REGION_OF_SCENE = {"knee": "lower limb", "ankle": "lower limb", "foot": "lower limb",
                   "hip": "pelvis", "shoulder": "upper limb", "elbow": "upper limb",
                   "wrist": "upper limb", "hand": "upper limb"}
# Age deciles (0, 10, ..., 100 %) per class: tumour patients are mostly adolescents, normals adults.
AGE_DECILES = {
    "Normal": [1, 11, 19, 26, 34, 40, 46, 52, 57, 64, 88],
    "Benign": [2, 9, 12, 15, 19, 25, 36, 45, 54, 63, 88],
    "Malignant": [6, 10, 12, 14, 16, 19, 25, 40, 53, 64, 88],
}
MALE_SHARE = {"Normal": 0.54, "Benign": 0.59, "Malignant": 0.53}
VIEWS_PER_PATIENT = [0.40, 0.35, 0.15, 0.10]   # 1-4 consecutive ids per patient
LESIONS_PER_FILE = {"multiple osteochondromas": [0.4, 0.35, 0.15, 0.10],
                    "synovial osteochondroma": [0.85, 0.15], "other mt": [0.95, 0.05]}
# Box area / image area per lesion: log-normal around the medians of the real annotations
# (annotation_stats.md: benign 0.017, malignant 0.043 per box, spread p10-p90 about 40x).
# The real lower tail (p10 0.002) would be a 6 px box at the 160 px model input, so target areas
# are clipped at 0.015; drawn boxes (limited by the bone they sit on) then stay above ~0.01,
# a box side of ~10% of the image (16 px at 160 px), so every lesion stays visible.
BOX_AREA_MEDIAN = {"Benign": 0.022, "Malignant": 0.045}
BOX_AREA_SIGMA = 0.8
BOX_AREA_RANGE = (0.015, 0.25)
LESION_KIND = {
    "osteochondroma": "exostosis", "multiple osteochondromas": "exostosis",
    "simple bone cyst": "cyst", "giant cell tumor": "bubbly", "osteofibroma": "cortical",
    "synovial osteochondroma": "loose_bodies", "other bt": "cyst_or_sclerotic",
    "osteosarcoma": "osteosarcoma", "other mt": "permeative",
}
WITHIN_BONE = {"cyst", "bubbly", "cortical", "sclerotic"}
# Where along the bone each kind sits: distance from the joint end in bone radii.
JOINT_DISTANCE = {"exostosis": (1.0, 4.0), "cyst": (1.5, 5.0), "bubbly": (0.3, 1.2),
                  "cortical": (1.5, 5.0), "loose_bodies": (0.0, 0.4), "sclerotic": (1.0, 4.5),
                  "osteosarcoma": (0.8, 3.5), "permeative": (2.0, 6.0)}


@dataclass(frozen=True)
class CenterStyle:
    """Acquisition look of one center: hospitals (DR/CR), Radiopaedia (web-processed),
    MedPix (scanned film)."""
    side: tuple[float, float]      # longer side, as fractions of [min_side, max_side]
    gain: tuple[float, float]      # display contrast
    gamma: tuple[float, float]
    fog: float                     # background (air) level
    noise: float                   # Gaussian noise sigma, 0-1 scale
    blur: float                    # Gaussian blur sigma at 512 px
    border: float                  # probability of black collimation borders
    marker: float                  # probability of a burned-in L/R letter
    ruler: float                   # probability of a burned-in ruler
    vignette: float
    quality: int                   # JPEG quality


CENTER_STYLES = {
    1: CenterStyle((0.45, 1.0), (1.05, 1.25), (0.9, 1.1), 0.04, 0.012, 0.6, 0.35, 0.7, 0.05, 0.0, 92),
    2: CenterStyle((0.2, 0.7), (1.3, 1.6), (0.65, 0.85), 0.0, 0.006, 1.4, 0.1, 0.15, 0.0, 0.0, 80),
    3: CenterStyle((0.0, 0.45), (0.8, 0.95), (1.15, 1.4), 0.14, 0.035, 1.6, 0.6, 0.3, 0.35, 0.35, 70),
}
BONE_MU = 3.0       # display attenuation per scene unit of bone chord
SOFT_MU = 0.35      # ... of soft tissue
FULL_SCALE = 1.8    # attenuation shown as white before the center's gain
END_SQUASH = 1.6    # bone ends are caps this many times flatter than a hemisphere


# ------------------------------------------------------------------ plan (metadata)

@dataclass(frozen=True)
class Patient:
    index: int
    center: int
    label: str
    subtype: str          # '' for normals
    sites: tuple[str, ...]
    scene: str
    bone: str             # bone carrying the lesion (normals: where a lesion would frame)
    age: int
    sex: str
    frame_subtype: str    # subtype whose lesion position frames the image (normals: drawn)


@dataclass(frozen=True)
class Row:
    number: int           # IMG%06d
    patient: Patient
    view: str
    suffix: str = ".jpeg"
    duplicate_of: int = 0  # number of the row whose bytes this one copies (0: none)

    @property
    def image_id(self) -> str:
        return f"IMG{self.number:06d}"


def allocate(n: int, weights) -> list[int]:
    """Largest-remainder allocation of ``n`` items over ``weights`` (each share floor or ceil)."""
    w = np.asarray(weights, dtype=float)
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def plan_rows(n_images: int, seed: int) -> list[Row]:
    """The twin's rows in release order: cells by class and center, patients as runs of views."""
    rng = _rng(seed, 0)
    rows: list[Row] = []
    patients = 0
    for (center, label), count in zip(CELL_COUNTS, allocate(n_images, list(CELL_COUNTS.values()))):
        while count > 0:
            views = min(count, 1 + int(rng.choice(len(VIEWS_PER_PATIENT), p=VIEWS_PER_PATIENT)))
            patient = _draw_patient(rng, patients, center, label)
            rows += [Row(len(rows) + k + 1, patient, "") for k in range(views)]
            patients += 1
            count -= views
    rows = _assign_views(rows, rng)
    n_jpg = max(1, round(n_images * JPG_IMAGES / RELEASE_IMAGES))
    rows[-n_jpg:] = [replace(r, suffix=".jpg") for r in rows[-n_jpg:]]
    return _plant_duplicates(rows, rng, max(1, round(n_images * DUPLICATE_PAIRS / RELEASE_IMAGES)))


def _draw_patient(rng, index: int, center: int, label: str) -> Patient:
    subtype = _choice(rng, SUBTYPE_SHARES[label]) if label != "Normal" else ""
    frame_subtype = subtype or _choice(rng, SUBTYPE_SHARES[_choice(rng, TUMOUR_COUNTS)])
    sites, _, scenes = SITES[rng.choice(len(SITES), p=_normalized([s[1] for s in SITES]))]
    scene, bone, _ = scenes[rng.choice(len(scenes), p=_normalized([s[2] for s in scenes]))]
    age = int(round(np.interp(rng.uniform(0, 10), np.arange(11), AGE_DECILES[label])))
    sex = "M" if rng.uniform() < MALE_SHARE[label] else "F"
    return Patient(index, center, label, subtype, sites if subtype else (), scene, bone, age, sex,
                   frame_subtype)


def _assign_views(rows: list[Row], rng) -> list[Row]:
    """Views in the published proportions, sorted frontal-lateral-oblique within a patient."""
    views = np.repeat(list(VIEW_COUNTS), allocate(len(rows), list(VIEW_COUNTS.values())))
    views = views[rng.permutation(len(views))]
    rank = {v: i for i, v in enumerate(VIEW_COUNTS)}
    out, start = [], 0
    while start < len(rows):
        stop = start
        while stop < len(rows) and rows[stop].patient.index == rows[start].patient.index:
            stop += 1
        for row, view in zip(rows[start:stop], sorted(views[start:stop], key=rank.get)):
            out.append(replace(row, view=str(view)))
        start = stop
    return out


def _plant_duplicates(rows: list[Row], rng, n_pairs: int) -> list[Row]:
    """Turn single-view rows into byte copies of another patient's image in the same cell."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r.patient.index] = counts.get(r.patient.index, 0) + 1
    eligible = [r for r in rows if counts[r.patient.index] == 1 and r.suffix == ".jpeg"]
    used: set[int] = set()
    for target in [eligible[i] for i in rng.permutation(len(eligible))]:
        if n_pairs == 0:
            break
        cell = (target.patient.center, target.patient.label)
        sources = [r for r in rows if (r.patient.center, r.patient.label) == cell
                   and r.number not in used | {target.number} and r.suffix == ".jpeg"]
        if target.number in used or not sources:
            continue
        source = sources[rng.integers(len(sources))]
        rows[target.number - 1] = replace(target, patient=source.patient, view=source.view,
                                          duplicate_of=source.number)
        used |= {source.number, target.number}
        n_pairs -= 1
    return rows


def metadata_row(row: Row) -> list:
    """One dataset.xlsx row (the 37 release columns)."""
    p = row.patient
    flags = dict.fromkeys(btxrd.FLAG_COLUMNS, 0)
    if p.label != "Normal":
        for column in ("tumor", p.label.lower(), p.subtype, *p.sites):
            flags[column] = 1
    flags[REGION_OF_SCENE[p.scene]] = 1
    flags[row.view] = 1
    return [f"{row.image_id}.jpeg", p.center, p.age, p.sex] + [flags[c] for c in btxrd.FLAG_COLUMNS]


# ------------------------------------------------------------------ anatomy

@dataclass(frozen=True)
class Tube:
    """A hollow cylinder in scene units from p0 to p1 (p1 = the joint end)."""
    name: str
    p0: tuple[float, float]
    p1: tuple[float, float]
    radius: float
    flare0: float = 0.0       # extra radius, as a fraction, bulging at each end
    flare1: float = 0.0
    cortex: float = 0.3       # cortical thickness as a fraction of the shaft radius (1: solid)
    marrow: float = 0.2       # medulla density relative to cortex
    density: float = 1.0


@dataclass(frozen=True)
class Blob:
    """A hollow ellipsoid (carpal, talus, femoral head, iliac wing); depth = its thickness."""
    name: str
    center: tuple[float, float]
    axes: tuple[float, float]
    angle: float = 0.0
    depth: float = 0.0        # 0: min(axes)
    cortex: float = 0.25
    marrow: float = 0.3
    density: float = 1.0


def build_scene(scene: str, rng, view: str) -> tuple[list, list]:
    """(bones, soft tissue) of one scene in units; the joint is at the origin, limbs run along y."""
    s = rng.uniform(0.85, 1.15)
    spread = {"frontal": 1.0, "oblique": 0.7, "lateral": 0.35}[view]
    builders = {"knee": _knee, "ankle": _ankle, "elbow": _elbow, "wrist": _wrist,
                "shoulder": _shoulder, "hip": _hip, "hand": _hand, "foot": _foot}
    return builders[scene](s, spread)


def _knee(s, spread):
    fib = 0.27 * s * spread
    bones = [Tube("femur", (0, -3), (0, -0.03), 0.16 * s, flare1=0.85),
             Tube("tibia", (0, 3), (0, 0.03), 0.14 * s, flare1=0.75),
             Tube("fibula", (fib, 3), (fib, 0.2 * s), 0.05 * s, flare1=0.5)]
    if spread < 0.5:
        bones.append(Blob("patella", (-0.26 * s, -0.1 * s), (0.06 * s, 0.12 * s)))
    return bones, [Tube("soft", (0, -3), (0, 3), 0.4 * s, cortex=1.0)]


def _ankle(s, spread):
    fib = 0.22 * s * spread
    bones = [Tube("tibia", (0, -3), (0, -0.03), 0.12 * s, flare1=0.6),
             Tube("fibula", (fib, -3), (fib, 0.1 * s), 0.045 * s, flare1=0.5),
             Blob("talus", (0, 0.17 * s), (0.17 * s, 0.12 * s)),
             Blob("calcaneus", (0.12 * s, 0.42 * s), (0.3 * s, 0.13 * s), angle=0.2)]
    return bones, [Tube("soft", (0, -3), (0.1, 0.5), 0.4 * s, cortex=1.0)]


def _elbow(s, spread):
    off = 0.085 * s * (0.5 + spread / 2)
    bones = [Tube("humerus", (0, -3), (0, -0.03), 0.12 * s, flare1=1.0),
             Tube("radius", (-off, 3), (-off, 0.04), 0.055 * s, flare1=0.4),
             Tube("ulna", (off, 3), (off, 0.0), 0.06 * s, flare1=0.6)]
    return bones, [Tube("soft", (0, -3), (0, 3), 0.42 * s, cortex=1.0)]


def _wrist(s, spread):
    off = 0.09 * s * (0.5 + spread / 2)
    bones = [Tube("radius", (-off, -3), (-off, -0.03), 0.075 * s, flare1=0.6),
             Tube("ulna", (off, -3), (off, -0.06), 0.05 * s, flare1=0.3)]
    for i in range(7):
        bones.append(Blob(f"carpal{i}", ((i % 4 - 1.5) * 0.09 * s, (0.09 + 0.13 * (i // 4)) * s),
                          (0.05 * s, 0.045 * s)))
    for i in range(4):
        x = (i - 1.5) * 0.085 * s
        bones.append(Tube(f"metacarpal{i}", (x * 1.3, 3), (x, 0.34 * s), 0.035 * s, 0.4, 0.4))
    return bones, [Tube("soft", (0, -3), (0, 3), 0.33 * s, cortex=1.0)]


def _shoulder(s, spread):
    bones = [Tube("humerus", (0.1, 3), (0, 0.05), 0.12 * s, flare1=1.3),
             Blob("glenoid", (-0.12 * s, -0.12 * s), (0.3 * s, 0.11 * s), angle=-0.5, depth=0.08),
             Tube("clavicle", (-1.8, -0.55 * s), (0.3 * s, -0.42 * s), 0.05 * s, 0.2, 0.4)]
    return bones, [Blob("soft", (0.1, 0.3), (1.4 * s, 2.5), cortex=1.0, depth=0.5 * s)]


def _hip(s, spread):
    bones = [Blob("ilium", (-0.5 * s, -0.6 * s), (0.7 * s, 0.42 * s), angle=0.35, depth=0.07,
                  cortex=0.12),
             Blob("roof", (-0.08 * s, -0.16 * s), (0.3 * s, 0.1 * s), angle=-0.25, depth=0.12),
             Tube("ischium", (-0.3 * s, 0.7 * s), (-0.08 * s, 0.12 * s), 0.1 * s, flare0=0.5),
             Blob("pubis", (-0.55 * s, 0.45 * s), (0.32 * s, 0.2 * s), angle=-0.2, depth=0.06,
                  cortex=0.35, marrow=0.0),
             Blob("sacrum", (-1.35 * s, -0.45 * s), (0.3 * s, 0.6 * s), depth=0.15),
             Blob("head", (0.0, 0.0), (0.19 * s, 0.19 * s)),
             Tube("neck", (0.42 * s, 0.3 * s), (0.05 * s, 0.03 * s), 0.09 * s),
             Tube("femur", (0.62 * s, 3), (0.46 * s, 0.38 * s), 0.14 * s, flare1=0.7)]
    return bones, [Blob("soft", (-0.3, 0.2), (5.0, 4.0), cortex=1.0, depth=0.35 * s)]


def _rays(s, spread, lengths, base_y, n_rays, carpals):
    bones = [Blob(f"base{i}", ((i % 3 - 1) * 0.13 * s, base_y + 0.12 * s * (i // 3)),
                  (0.07 * s, 0.06 * s)) for i in range(carpals)]
    soft = [Blob("palm", (0, base_y + 0.35 * s), (0.4 * s, 0.55 * s), cortex=1.0, depth=0.2 * s)]
    for i in range(n_rays):
        angle = (i - (n_rays - 1) / 2) * 0.16 * (0.4 + 0.6 * spread)
        d = np.array([math.sin(angle), math.cos(angle)])
        p = np.array([(i - (n_rays - 1) / 2) * 0.1 * s, base_y + 0.2 * s])
        for j, length in enumerate(lengths):
            q = p + d * length * s
            radius = (0.05 if j == 0 else 0.04) * s
            bones.append(Tube(f"ray{i}_{j}", tuple(p), tuple(q - d * 0.02 * s), radius, 0.5, 0.4))
            p = q
        soft.append(Tube(f"finger{i}", (0, base_y + 0.2 * s), tuple(p), 0.08 * s, cortex=1.0))
    return bones, soft


def _hand(s, spread):
    return _rays(s, spread, [0.62, 0.38, 0.25, 0.18], -0.7, 5, 6)


def _foot(s, spread):
    return _rays(s, spread, [0.75, 0.3, 0.18], -0.8, 5, 6)


def _scaled(shape, origin: np.ndarray, rot: np.ndarray, unit: float):
    """A scene shape moved to pixel coordinates (rotation ``rot``, ``unit`` px per scene unit)."""
    def tf(p):
        return tuple(origin + unit * rot @ np.asarray(p, dtype=float))
    if isinstance(shape, Tube):
        return replace(shape, p0=tf(shape.p0), p1=tf(shape.p1), radius=shape.radius * unit)
    major = rot @ [math.cos(shape.angle), math.sin(shape.angle)]   # rot may include a mirror
    return replace(shape, center=tf(shape.center), axes=(shape.axes[0] * unit, shape.axes[1] * unit),
                   angle=math.atan2(major[1], major[0]), depth=shape.depth * unit)


def _window(shape_hw, x0, y0, x1, y1):
    """Clipped integer window and its pixel-centre coordinate grids (xs: 1 x w, ys: h x 1)."""
    h, w = shape_hw
    ix0, iy0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    ix1, iy1 = min(int(math.ceil(x1)) + 1, w), min(int(math.ceil(y1)) + 1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    xs = np.arange(ix0, ix1, dtype=np.float32)[None, :]
    ys = np.arange(iy0, iy1, dtype=np.float32)[:, None]
    return (slice(iy0, iy1), slice(ix0, ix1)), xs, ys


def _tube_radius(t: Tube, tc):
    """Radius along the axis (tc in [0, 1]): shaft radius plus end bulges (metaphysis, head)."""
    length = math.dist(t.p0, t.p1)
    reach = 1.6 * t.radius / max(length, 1e-6)
    bulge = t.flare0 * np.exp(-(tc / reach) ** 2) + t.flare1 * np.exp(-((1 - tc) / reach) ** 2)
    return t.radius * (1 + bulge)


def draw_tube(acc: np.ndarray, t: Tube) -> None:
    """Add the projected thickness of a hollow tube (rounded ends) to ``acc`` (pixels)."""
    r_max = t.radius * (1 + max(t.flare0, t.flare1))
    win = _window(acc.shape, min(t.p0[0], t.p1[0]) - r_max, min(t.p0[1], t.p1[1]) - r_max,
                  max(t.p0[0], t.p1[0]) + r_max, max(t.p0[1], t.p1[1]) + r_max)
    if win is None:
        return
    sl, xs, ys = win
    length = max(math.dist(t.p0, t.p1), 1e-6)
    ux, uy = (t.p1[0] - t.p0[0]) / length, (t.p1[1] - t.p0[1]) / length
    rx, ry = xs - t.p0[0], ys - t.p0[1]
    along = (rx * ux + ry * uy) / length
    tc = np.clip(along, 0, 1)
    # ends are flattened caps (articular surfaces), not hemispheres
    dist2 = (rx * -uy + ry * ux) ** 2 + ((along - tc) * length * END_SQUASH) ** 2
    r = _tube_radius(t, tc)
    outer = np.sqrt(np.maximum(r * r - dist2, 0))
    ri = np.maximum(r - t.cortex * t.radius, 0)
    inner = np.sqrt(np.maximum(ri * ri - dist2, 0))
    acc[sl] += t.density * 2 * (outer - inner * (1 - t.marrow))


def draw_blob(acc: np.ndarray, b: Blob) -> None:
    """Add the projected thickness of a hollow ellipsoid to ``acc`` (pixels)."""
    a, c = b.axes
    reach = max(a, c)
    (cx, cy) = b.center
    win = _window(acc.shape, cx - reach, cy - reach, cx + reach, cy + reach)
    if win is None:
        return
    sl, xs, ys = win
    cos, sin = math.cos(b.angle), math.sin(b.angle)
    dx, dy = xs - b.center[0], ys - b.center[1]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    depth = b.depth or min(a, c)
    shell = b.cortex * min(a, c)
    outer = depth * np.sqrt(np.maximum(1 - (u / a) ** 2 - (v / c) ** 2, 0))
    ai, ci = max(a - shell, 1e-3), max(c - shell, 1e-3)
    inner = max(depth - shell, 0) * np.sqrt(np.maximum(1 - (u / ai) ** 2 - (v / ci) ** 2, 0))
    acc[sl] += b.density * 2 * (outer - inner * (1 - b.marrow))


def draw_shape(acc: np.ndarray, shape) -> None:
    (draw_tube if isinstance(shape, Tube) else draw_blob)(acc, shape)


# ------------------------------------------------------------------ lesions

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
    r = float(_tube_radius(shape, tc))
    axis_point = p0 + (p1 - p0) * tc
    return Anchor(axis_point + n * side * r, axis_point, u, n, r, p1)


def _local(acc_shape, anchor: Anchor, half: float):
    """Window around the anchor and its along (a) / across (b) coordinates."""
    cx, cy = anchor.point
    win = _window(acc_shape, cx - half, cy - half, cx + half, cy + half)
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


def _smooth_noise(shape_hw, rng, cell: float) -> np.ndarray:
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
    bone[sl] += rng.uniform(0.6, 0.9) * local_max * inside * (0.8 + 0.2 * _smooth_noise(a.shape, rng, 4))
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
    holes = np.clip(_smooth_noise(a.shape, rng, max(2.0, 0.12 * min(la, lb))) * 2.5 + 0.6, 0, 1)
    local_max = float(bone[sl].max()) if bone[sl].size else 1.0
    region = bone[sl] * (1 - rng.uniform(0.75, 0.95) * zone * holes)
    if sclerotic:
        cloud = np.clip(_smooth_noise(a.shape, rng, max(3.0, 0.25 * min(la, lb))) + 0.2, 0, 1)
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


# ------------------------------------------------------------------ one image

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


def _named(shapes: list, name: str):
    return next(s for s in shapes if s.name == name)


def render_image(row: Row, seed: int, min_side: int, max_side: int):
    """Draw one radiograph; returns (uint8 image, [(label, box, polygon), ...])."""
    patient = row.patient
    prng, rng = _rng(seed, 2, patient.index), _rng(seed, 1, row.number)
    style = CENTER_STYLES[patient.center]
    h, w = _canvas_size(style, patient.scene, min_side, max_side, rng)
    bones, softs = build_scene(patient.scene, prng, row.view)
    specs = lesion_specs(patient, bones, prng)
    # Place the scene so that the (first, or for normals unseen) lesion lands mid-image.
    unit = min(h, w) / 2 * rng.uniform(0.85, 1.2) * (0.75 if patient.scene == "hip" else 1.0)
    theta = rng.normal(0, 0.14) + (math.pi if rng.uniform() < 0.15 else 0.0)
    mirror = -1.0 if (patient.index + (row.view == "lateral")) % 2 else 1.0
    cos, sin = math.cos(theta), math.sin(theta)
    rot = np.array([[cos, -sin], [sin, cos]]) @ np.diag([mirror, 1.0])
    focus_unit = bone_anchor(_scaled(_named(bones, specs[0].bone), np.zeros(2), rot, 1.0),
                             specs[0].joint_distance, specs[0].side)
    target = np.array([w, h]) * rng.uniform(0.35, 0.65, 2)
    origin = target - unit * focus_unit.point
    bone = np.zeros((h, w), np.float32)
    soft = np.zeros((h, w), np.float32)
    px = {id(s): _scaled(s, origin, rot, unit) for s in bones + softs}
    for s in softs:
        draw_shape(soft, px[id(s)])
    for s in bones:
        draw_shape(bone, px[id(s)])
    bone *= 1 + 0.12 * _smooth_noise((h, w), rng, max(3.0, min(h, w) / 60))  # trabecular texture
    lesions = []
    if patient.label != "Normal":
        for i, spec in enumerate(specs):  # each lesion's shape is shared by the patient's views
            shape = px[id(_named(bones, spec.bone))]
            lesion_rng = _rng(seed, 3, patient.index, i)
            lesions += _draw_spec(bone, soft, shape, spec, lesion_rng, patient.subtype, h, w)
    image = _display(bone, soft, unit, style, rng)
    _burn_in(image, style, rng, [les[1] for les in lesions], "L" if mirror > 0 else "R")
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


def _canvas_size(style: CenterStyle, scene: str, min_side: int, max_side: int, rng) -> tuple[int, int]:
    lo, hi = (min_side + f * (max_side - min_side) for f in style.side)
    long_side = int(round(rng.uniform(lo, hi)))
    short_side = max(min_side, int(round(long_side * rng.uniform(0.6, 1.0))))
    landscape = rng.uniform() < (0.75 if scene == "hip" else 0.25)
    return (short_side, long_side) if landscape else (long_side, short_side)


def _display(bone, soft, unit: float, style: CenterStyle, rng) -> np.ndarray:
    """Attenuation to an 8-bit radiograph in the center's style."""
    h, w = bone.shape
    scale = 1.0 / unit
    img = (1 - np.exp(-(BONE_MU * scale) * bone - (SOFT_MU * scale) * soft)) / (1 - math.exp(-FULL_SCALE))
    img = style.fog + (1 - style.fog) * img * rng.uniform(*style.gain)
    img = np.clip(img, 0, 1) ** rng.uniform(*style.gamma)
    if style.vignette:
        yy, xx = np.ogrid[-1:1:h * 1j, -1:1:w * 1j]
        img *= 1 - style.vignette * (xx * xx + yy * yy).astype(np.float32) / 2
    blur = style.blur * max(h, w) / 512
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += style.noise * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _burn_in(image: np.ndarray, style: CenterStyle, rng, boxes: list, letter: str) -> None:
    """Collimation borders, an L/R letter and a ruler, kept off the lesion boxes."""
    h, w = image.shape
    if rng.uniform() < style.border:
        for edge, frac in zip("tblr", rng.uniform(0, 0.07, 4)):
            k = int(frac * (h if edge in "tb" else w))
            if k and not any(_in_band(edge, k, box, w, h) for box in boxes):
                band = {"t": image[:k], "b": image[h - k:], "l": image[:, :k], "r": image[:, w - k:]}
                band[edge][...] = 3
    size = min(h, w) / 320
    corners = [(0.04, 0.1), (0.85, 0.1), (0.04, 0.96), (0.85, 0.96)]
    if rng.uniform() < style.marker:
        for i in rng.permutation(4):
            x, y = int(corners[i][0] * w), int(corners[i][1] * h)
            box = (x, y - 30 * size, x + 25 * size, y)
            if not any(_overlap(box, b) for b in boxes):
                cv2.putText(image, letter, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size, 250,
                            max(1, int(2 * size)), cv2.LINE_AA)
                break
    if rng.uniform() < style.ruler:
        y = int(h * 0.97)
        if not any(_overlap((0, y - 10 * size, w, h), b) for b in boxes):
            for i, x in enumerate(range(int(w * 0.3), int(w * 0.7), max(3, int(6 * size)))):
                cv2.line(image, (x, y), (x, y - int((8 if i % 5 == 0 else 4) * size) - 1), 240, 1)


def _in_band(edge: str, k: int, box, w: int, h: int) -> bool:
    return {"t": box[1] < k, "b": box[3] > h - k, "l": box[0] < k, "r": box[2] > w - k}[edge]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# ------------------------------------------------------------------ files

def labelme_text(image_name: str, width: int, height: int, lesions: list, reversed_corners=False) -> str:
    """A LabelMe 5.x file as the release stores it: rectangles then polygons, indent 2, CRLF."""
    def shape(label, points, kind):
        return {"label": label, "points": [[float(x), float(y)] for x, y in points], "group_id": None,
                "description": "", "shape_type": kind, "flags": {}, "mask": None}
    rects = [shape(label, [box[2:], box[:2]] if reversed_corners else [box[:2], box[2:]], "rectangle")
             for label, box, _ in lesions]
    polys = [shape(label, poly, "polygon") for label, _, poly in lesions]
    doc = {"version": LABELME_VERSION, "flags": {}, "shapes": rects + polys, "imagePath": image_name,
           "imageData": None, "imageHeight": height, "imageWidth": width}
    return json.dumps(doc, indent=2, ensure_ascii=False).replace("\n", "\r\n")


def xlsx_bytes(header: list[str], rows: list[list]) -> bytes:
    """dataset.xlsx with fixed timestamps, so the same rows give the same bytes."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(header)
    for r in rows:
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return _fixed_zip(buf.getvalue())


def _fixed_zip(data: bytes) -> bytes:
    """Rewrite an xlsx zip with constant entry dates and document timestamps."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2025-01-01T00:00:00Z", content)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=(2025, 1, 1, 0, 0, 0)), content,
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def generate_twin(root: str | Path, n_images: int = 1200, seed: int = 42, defects: bool = True,
                  min_side: int = 320, max_side: int = 720) -> Path:
    """Write a BTXRD twin under ``root/BTXRD`` (replacing one already there) and describe its
    planted defects and quirks in ``root/planted_defects.json``; returns ``root/BTXRD``."""
    if n_images < MIN_IMAGES:
        raise ValueError(f"n_images={n_images}: the twin needs at least {MIN_IMAGES} images")
    if not 64 <= min_side <= max_side:
        raise ValueError(f"min_side={min_side}, max_side={max_side}: need 64 <= min_side <= max_side")
    root = Path(root)
    out = root / RELEASE_DIR
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "Annotations").mkdir()
    rows = plan_rows(n_images, seed)
    annotated = _write_images(out, rows, seed, min_side, max_side)
    meta = [metadata_row(r) for r in rows]
    planted = {"defects": _plant_defects(out, rows, meta, annotated, _rng(seed, 6)) if defects else {},
               "quirks": _plant_quirks(out, rows, annotated, _rng(seed, 5))}
    (out / "dataset.xlsx").write_bytes(xlsx_bytes(btxrd.METADATA_COLUMNS, meta))
    planted.update(seed=seed, n_images=n_images)
    (root / PLANTED_NAME).write_text(json.dumps(planted, indent=2, sort_keys=True) + "\n")
    log.info("synthetic twin: %d images (%d annotated) in %s", n_images, len(annotated), out)
    return out


def planted_defects(twin_dir: str | Path) -> dict:
    """The planted defects and quirks of a twin (``twin_dir`` as returned by generate_twin)."""
    return json.loads((Path(twin_dir).parent / PLANTED_NAME).read_text())


def _write_images(out: Path, rows: list[Row], seed: int, min_side: int, max_side: int) -> list[int]:
    """Draw and write every image and annotation; byte copies come last. Returns annotated row numbers."""
    annotated = []
    for row in progress(rows, desc="synthetic twin", unit="img"):
        if row.duplicate_of:
            continue
        image, lesions = render_image(row, seed, min_side, max_side)
        quality = CENTER_STYLES[row.patient.center].quality
        ok, jpeg = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {row.image_id} as JPEG")
        (out / "images" / f"{row.image_id}{row.suffix}").write_bytes(jpeg.tobytes())
        if lesions:
            reverse = _rng(seed, 7, row.number).uniform() < 0.03
            text = labelme_text(f"{row.image_id}.jpeg", image.shape[1], image.shape[0], lesions, reverse)
            (out / "Annotations" / f"{row.image_id}.json").write_bytes(text.encode("utf-8"))
            annotated.append(row.number)
    for row in rows:
        if row.duplicate_of:
            source = rows[row.duplicate_of - 1]
            shutil.copyfile(out / "images" / f"{source.image_id}{source.suffix}",
                            out / "images" / f"{row.image_id}{row.suffix}")
            if source.number in annotated:
                _copy_annotation(out, source.image_id, row.image_id)
                annotated.append(row.number)
    return sorted(annotated)


def _copy_annotation(out: Path, source_id: str, target_id: str) -> None:
    text = (out / "Annotations" / f"{source_id}.json").read_bytes()
    text = text.replace(f'"{source_id}.jpeg"'.encode(), f'"{target_id}.jpeg"'.encode())
    (out / "Annotations" / f"{target_id}.json").write_bytes(text)


def _plant_quirks(out: Path, rows: list[Row], annotated: list[int], rng) -> dict:
    """The release's known quirks: nested Annotations copy, Excel lock file (duplicates and
    .jpg names are planned in the rows)."""
    nested = out / "Annotations" / "Annotations"
    nested.mkdir()
    picked = sorted(rng.choice(annotated, size=min(3, len(annotated)), replace=False))
    copied = [f"IMG{n:06d}.json" for n in picked]
    for name in copied:
        shutil.copyfile(out / "Annotations" / name, nested / name)
    # An Excel owner file: a length-prefixed user name padded to 165 bytes, as Excel writes it.
    (out / LOCK_FILE_NAME).write_bytes((b"\x0aAssureXRay" + b" " * 54).ljust(165, b"\x00"))
    return {
        "exact_duplicates": [[f"IMG{r.duplicate_of:06d}", r.image_id] for r in rows if r.duplicate_of],
        "jpg_extension": [r.image_id for r in rows if r.suffix == ".jpg"],
        "nested_annotations": [f"Annotations/Annotations/{name}" for name in copied],
        "lock_file": LOCK_FILE_NAME,
    }


def _plant_defects(out: Path, rows: list[Row], meta: list[list], annotated: list[int], rng) -> dict:
    """One each of: truncated JPEG, zero-byte image, malformed annotation JSON, contradictory
    label columns, annotation without image. Never on a duplicate pair or a .jpg row."""
    dup = {r.duplicate_of for r in rows} | {r.number for r in rows if r.duplicate_of}
    free = [r for r in rows if r.number not in dup and r.suffix == ".jpeg"]
    normals = [r for r in free if r.patient.label == "Normal"]
    tumours = [r for r in free if r.number in annotated]
    truncated, zero = (normals[i] for i in rng.choice(len(normals), 2, replace=False))
    malformed, contradictory = (tumours[i] for i in rng.choice(len(tumours), 2, replace=False))
    path = out / "images" / f"{truncated.image_id}.jpeg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    (out / "images" / f"{zero.image_id}.jpeg").write_bytes(b"")
    path = out / "Annotations" / f"{malformed.image_id}.json"
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    meta[contradictory.number - 1][btxrd.METADATA_COLUMNS.index("tumor")] = 0
    orphan = f"IMG{len(rows) + 1:06d}"
    _copy_annotation(out, contradictory.image_id, orphan)
    return {
        "truncated_jpeg": {"image_id": truncated.image_id, "path": f"images/{truncated.image_id}.jpeg"},
        "zero_byte_image": {"image_id": zero.image_id, "path": f"images/{zero.image_id}.jpeg"},
        "malformed_annotation": {"image_id": malformed.image_id,
                                 "path": f"Annotations/{malformed.image_id}.json"},
        "contradictory_labels": {"image_id": contradictory.image_id,
                                 "columns": ["tumor", contradictory.patient.label.lower()]},
        "annotation_without_image": {"image_id": orphan, "path": f"Annotations/{orphan}.json"},
    }


# ------------------------------------------------------------------ helpers

def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator per purpose and item (plan, image, patient, ...)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _normalized(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def _choice(rng, shares: dict) -> str:
    keys = list(shares)
    return keys[rng.choice(len(keys), p=_normalized(list(shares.values())))]
