"""The BTXRD release format: metadata table, LabelMe annotations and folder layout.

This is the only module that knows the release (Yao et al., Scientific Data 12, 88, 2025):
``BTXRD/images/IMG*.jpeg``, ``BTXRD/Annotations/IMG*.json`` (LabelMe 5.x, one rectangle and
one polygon per lesion) and ``BTXRD/dataset.xlsx`` (37 columns, one row per image).
"""
from __future__ import annotations

import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from assurexray.console import progress
from assurexray.data import imageio
from assurexray.data.schema import INDEX_COLUMNS, Lesion
from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)

IDENTITY_COLUMNS = ["image_id", "center", "age", "gender"]
SITE_COLUMNS = [
    "hand", "ulna", "radius", "humerus", "foot", "tibia", "fibula", "femur", "hip bone",
    "ankle-joint", "knee-joint", "hip-joint", "wrist-joint", "elbow-joint", "shoulder-joint",
]
LABEL_COLUMNS = ["tumor", "benign", "malignant"]
BENIGN_SUBTYPES = [
    "osteochondroma", "multiple osteochondromas", "simple bone cyst", "giant cell tumor",
    "osteofibroma", "synovial osteochondroma", "other bt",
]
MALIGNANT_SUBTYPES = ["osteosarcoma", "other mt"]
SUBTYPE_COLUMNS = BENIGN_SUBTYPES + MALIGNANT_SUBTYPES
REGION_COLUMNS = ["upper limb", "lower limb", "pelvis"]
VIEW_COLUMNS = ["frontal", "lateral", "oblique"]
# Release order of the 37 columns of dataset.xlsx.
METADATA_COLUMNS = (IDENTITY_COLUMNS + SITE_COLUMNS + LABEL_COLUMNS + SUBTYPE_COLUMNS
                    + REGION_COLUMNS + VIEW_COLUMNS)
FLAG_COLUMNS = METADATA_COLUMNS[len(IDENTITY_COLUMNS):]
CLASSES = ["Normal", "Benign", "Malignant"]

METADATA_NAME = "dataset.xlsx"
IMAGES_DIR = "images"
ANNOTATIONS_DIR = "Annotations"
NOTE_COLUMNS = ["path", "reason"]
LABELME_VERSION = "5.4.1"  # the release's annotation files


class MetadataError(AssureXRayError, ValueError):
    """The metadata table cannot be used; the message names the file and the reason."""


class AnnotationError(AssureXRayError, ValueError):
    """A LabelMe file cannot be used; the message names the file and the reason."""


def is_set(value) -> bool:
    """A one-hot flag as the release writes it (1, '1', 1.0, True); anything else is 0."""
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False


def class_of_row(row) -> str:
    """The 3-class rule: malignant==1 -> Malignant, else benign==1 -> Benign, else Normal."""
    if is_set(row["malignant"]):
        return "Malignant"
    if is_set(row["benign"]):
        return "Benign"
    return "Normal"


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read dataset.xlsx (or a .csv transcription) and check that the 37 columns are there."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        raise MetadataError(f"{path}: expected an .xlsx or .csv metadata table")
    try:
        if suffix == ".xlsx":
            df = pd.read_excel(path, engine="openpyxl", dtype={"image_id": str})
        else:
            df = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MetadataError(f"{path}: cannot read the metadata table: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise MetadataError(f"{path}: metadata table lacks columns {missing}")
    return df


# --------------------------------------------------------------------------- annotations

@dataclass(frozen=True)
class LabelmeFile:
    """A parsed LabelMe file: its lesions and the image it says it annotates."""
    path: Path
    image_path: str
    width: int
    height: int
    lesions: tuple[Lesion, ...]


def parse_labelme(path: str | Path) -> list[Lesion]:
    """The lesions of one LabelMe 5.x file (rectangle and polygon paired by overlap)."""
    return list(read_labelme(path).lesions)


def read_labelme(path: str | Path) -> LabelmeFile:
    """Parse and validate one LabelMe file; raise AnnotationError naming file and reason."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise AnnotationError(f"{path}: top level is {type(doc).__name__}, expected an object")
    shapes = doc.get("shapes")
    if not isinstance(shapes, list) or not shapes:
        raise AnnotationError(f"{path}: 'shapes' is missing or empty")
    rects, polys = [], []
    for i, shape in enumerate(shapes):
        kind, label, points = _check_shape(path, i, shape)
        (rects if kind == "rectangle" else polys).append((i, label, points))
    width, height = (_positive_int(path, doc, key) for key in ("imageWidth", "imageHeight"))
    return LabelmeFile(path, str(doc.get("imagePath") or ""), width, height,
                       tuple(_pair_shapes(path, rects, polys)))


def _positive_int(path: Path, doc: dict, key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AnnotationError(f"{path}: '{key}' is {value!r}, expected a positive integer")
    return value


def _check_shape(path: Path, i: int, shape) -> tuple[str, str, np.ndarray]:
    if not isinstance(shape, dict):
        raise AnnotationError(f"{path}: shape {i} is not an object")
    kind, label = shape.get("shape_type"), shape.get("label")
    if kind not in ("rectangle", "polygon"):
        raise AnnotationError(f"{path}: shape {i} has unsupported shape_type {kind!r}")
    if not isinstance(label, str) or not label.strip():
        raise AnnotationError(f"{path}: shape {i} ({kind}) has no label")
    try:
        points = np.asarray(shape.get("points"), dtype=float)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{path}: shape {i} ({kind}) has non-numeric points") from exc
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise AnnotationError(f"{path}: shape {i} ({kind}) points are not a list of [x, y]")
    if kind == "rectangle" and len(points) != 2:
        raise AnnotationError(f"{path}: shape {i} rectangle has {len(points)} points, expected 2")
    if kind == "polygon" and len(points) < 3:
        raise AnnotationError(f"{path}: shape {i} polygon has {len(points)} points, expected >= 3")
    return kind, label, points


def _pair_shapes(path: Path, rects: list, polys: list) -> list[Lesion]:
    """Pair each rectangle with the same-label polygon it overlaps most (optimal assignment).

    Position in the file is no guide: one real file stores rectangle, polygon, polygon, rectangle.
    """
    if len(rects) != len(polys):
        raise AnnotationError(
            f"{path}: {len(rects)} rectangle(s) but {len(polys)} polygon(s); every lesion needs one of each")
    boxes = [_box_of(points) for _, _, points in rects]
    score = np.array([[_containment(box, _box_of(p)) if rl == pl else 0.0
                       for _, pl, p in polys] for box, (_, rl, _) in zip(boxes, rects)])
    rows, cols = linear_sum_assignment(score, maximize=True)
    lesions = []
    for r, c in zip(rows, cols):
        (ri, label, _), (_, _, poly) = rects[r], polys[c]
        if score[r, c] <= 0:
            raise AnnotationError(
                f"{path}: rectangle (shape {ri}, {label!r}) overlaps no polygon with the same label")
        lesions.append(Lesion(label, boxes[r], tuple((float(x), float(y)) for x, y in poly)))
    return lesions


def _box_of(points: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) with x0 <= x1, y0 <= y1 whatever corner order the points come in."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _containment(box, inner) -> float:
    """Fraction of ``inner``'s area (or extent, when degenerate) that lies inside ``box``."""
    w = min(box[2], inner[2]) - max(box[0], inner[0])
    h = min(box[3], inner[3]) - max(box[1], inner[1])
    if w < 0 or h < 0:
        return 0.0
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return w * h / area if area > 0 else 1.0


# --------------------------------------------------------------------------- folder ingest

def ingest_btxrd_dir(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index a BTXRD release folder (images/, Annotations/, dataset.xlsx).

    Returns (index with schema.INDEX_COLUMNS, notes with columns path, reason). Every file under
    ``root`` ends up either in the index (image, annotation, metadata) or in the notes; a bad
    row is recorded in ``ingest_issue``, never dropped.
    """
    root = Path(root)
    meta_path = root / METADATA_NAME
    if not meta_path.is_file():
        found = sorted(p.name for p in root.glob("*.xlsx"))
        raise MetadataError(f"{root}: no {METADATA_NAME} (found .xlsx files: {found or 'none'})")
    meta = read_metadata(meta_path)
    notes: dict[Path, str] = {}
    wanted = {_text(v) for v in meta["image_id"]}
    images = _files_by_stem(root / IMAGES_DIR, imageio.IMAGE_SUFFIXES, wanted, notes)
    annotations = _files_by_stem(root / ANNOTATIONS_DIR, {".json"}, wanted, notes)
    rows = [_metadata_entry(row, images, annotations) for _, row in meta.iterrows()]
    _flag_repeated_ids(rows)
    known = {r["image_id"] for r in rows}
    rows += [_orphan_image_entry(stem, images[stem], annotations)
             for stem in sorted(set(images) - known)]
    used = {meta_path, *images.values(), *(Path(r["annotation"]) for r in rows if r["annotation"])}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path not in used and path not in notes:
            notes[path] = _unused_reason(root, path)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    sizes = [_image_size(f) for f in progress(index["file"], desc="image headers", unit="img")]
    index["width"] = [w for w, _ in sizes]
    index["height"] = [h for _, h in sizes]
    log.info("%s: %d index rows, %d files noted", root, len(index), len(notes))
    return index, pd.DataFrame([(str(p), r) for p, r in sorted(notes.items())], columns=NOTE_COLUMNS)


def _files_by_stem(folder: Path, suffixes: set[str], wanted: set[str],
                   notes: dict[Path, str]) -> dict[str, Path]:
    """Direct children of ``folder`` by stem; when two files share a stem, the one whose name
    equals a metadata image_id wins and the other is noted."""
    if not folder.is_dir():
        return {}
    by_stem: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes):
        other = by_stem.get(path.stem)
        if other is None:
            by_stem[path.stem] = path
            continue
        keep, drop = (path, other) if path.name in wanted else (other, path)
        by_stem[path.stem] = keep
        notes[drop] = f"second file for image {path.stem} (kept {keep.name})"
    return by_stem


def _metadata_entry(row: pd.Series, images: dict, annotations: dict) -> dict:
    stem = Path(_text(row["image_id"])).stem
    image = images.get(stem)
    issues = label_issues(row)
    if not stem:
        issues.append("image_id missing")
    elif image is None:
        issues.append("image file missing")
    label = class_of_row(row)
    annotation = annotations.get(stem)
    if annotation is not None and label == "Normal":
        issues.append("annotation for a Normal image")
    return {
        "image_id": stem,
        "file": str(image) if image else "",
        "label": label,
        "center": _text(row["center"]),
        "view": _joined(row, VIEW_COLUMNS),
        "sites": _joined(row, SITE_COLUMNS),
        "region": _joined(row, REGION_COLUMNS),
        "subtype": _joined(row, SUBTYPE_COLUMNS),
        "age": _text(row["age"]),
        "sex": _text(row["gender"]),
        "annotation": str(annotation) if annotation else "",
        "width": -1,
        "height": -1,
        "group": "",
        "ingest_issue": "; ".join(issues),
    }


def _orphan_image_entry(stem: str, image: Path, annotations: dict) -> dict:
    entry = dict.fromkeys(INDEX_COLUMNS, "")
    annotation = annotations.get(stem)
    entry.update(image_id=stem, file=str(image), annotation=str(annotation) if annotation else "",
                 width=-1, height=-1, ingest_issue="no metadata row")
    return entry


def _flag_repeated_ids(rows: list[dict]) -> None:
    counts = pd.Series([r["image_id"] for r in rows]).value_counts()
    for r in rows:
        if counts[r["image_id"]] > 1:
            r["ingest_issue"] = "; ".join(filter(None, [r["ingest_issue"], "image_id repeated in metadata"]))


def label_issues(row) -> list[str]:
    """Reasons why the label columns of one metadata row contradict each other ([] if none)."""
    issues = [f"column '{c}' is {row[c]!r}, expected 0 or 1" for c in FLAG_COLUMNS
              if not (is_set(row[c]) or _is_zero(row[c]))]
    tumor, benign, malignant = (is_set(row[c]) for c in LABEL_COLUMNS)
    if benign and malignant:
        issues.append("benign=1 and malignant=1")
    if not tumor and (benign or malignant):
        issues.append(f"tumor=0 but {'malignant' if malignant else 'benign'}=1")
    if tumor and not (benign or malignant):
        issues.append("tumor=1 but benign=0 and malignant=0")
    subtypes = [c for c in SUBTYPE_COLUMNS if is_set(row[c])]
    if tumor and not subtypes:
        issues.append("tumor=1 but no subtype column set")
    cls = class_of_row(row).lower()
    for sub in subtypes:
        kind = "benign" if sub in BENIGN_SUBTYPES else "malignant"
        if not tumor:
            issues.append(f"subtype '{sub}'=1 but tumor=0")
        elif kind != cls:
            issues.append(f"subtype '{sub}' is {kind} but benign={int(benign)}, malignant={int(malignant)}")
    return issues


def _is_zero(value) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _joined(row: pd.Series, columns: list[str]) -> str:
    return ";".join(c for c in columns if is_set(row[c]))


def _text(value) -> str:
    """A metadata cell as index text: '' for missing, integers without a trailing '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _unused_reason(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    if path.name.startswith("~$"):
        return "Excel lock file, ignored"
    if rel.parts[:2] == (ANNOTATIONS_DIR, ANNOTATIONS_DIR):
        return "stray nested Annotations/Annotations/ copy, ignored"
    if len(rel.parts) == 2 and rel.parts[0] == ANNOTATIONS_DIR and path.suffix.lower() == ".json":
        return "annotation without image"
    return "not part of the BTXRD layout, ignored"


def _image_size(file: str) -> tuple[int, int]:
    if not file:
        return -1, -1
    try:
        return imageio.image_size(file)
    except imageio.ImageReadError:
        return -1, -1


def labelme_text(image_name: str, width: int | None, height: int | None, lesions: list,
                 reversed_corners: bool = False) -> str:
    """A LabelMe 5.x file as the release stores it: rectangles then polygons, indent 2, CRLF.

    ``lesions`` are (label, box [x0, y0, x1, y1], polygon) triples; the one writer of the
    project (the twin and manifest boxes both use it).
    """
    def shape(label, points, kind):
        return {"label": label, "points": [[float(x), float(y)] for x, y in points], "group_id": None,
                "description": "", "shape_type": kind, "flags": {}, "mask": None}
    rects = [shape(label, [box[2:], box[:2]] if reversed_corners else [box[:2], box[2:]], "rectangle")
             for label, box, _ in lesions]
    polys = [shape(label, poly, "polygon") for label, _, poly in lesions]
    doc = {"version": LABELME_VERSION, "flags": {}, "shapes": rects + polys, "imagePath": image_name,
           "imageData": None, "imageHeight": height, "imageWidth": width}
    return json.dumps(doc, indent=2, ensure_ascii=False).replace("\n", "\r\n")
