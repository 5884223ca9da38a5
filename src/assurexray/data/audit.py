"""Data audit: decode every indexed image once, check it, its label and its annotation, and
cluster exact and near duplicates.

Verdicts: an image is EXCLUDED when it cannot serve classification (no readable pixels, no
trustworthy label, an exact copy labelled differently). Annotation problems are WARNINGS: the
image stays usable for classification, its annotation is not used for localization
(``annotation_usable`` False). Duplicates are kept and share a ``dup_cluster`` id so that the
split keeps each cluster in one partition.

Every reason and warning reads ``<kind>: <detail>``; the kinds below are the stable keys of
``metrics/audit.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from assurexray.console import progress
from assurexray.data import btxrd, imageio
from assurexray.data.duplicates import cluster_ids, duplicate_pairs, phash
from assurexray.data.schema import QUALITY_COLUMNS, DatasetInfo
from assurexray.params import AuditParams

log = logging.getLogger(__name__)

# Exclusion kinds, in priority order (an image's first reason decides its count).
MISSING = "missing image"
ZERO_BYTE = "zero-byte image"
TRUNCATED = "truncated image"
UNREADABLE = "unreadable image"
NO_METADATA = "no metadata row"
BAD_METADATA = "contradictory metadata"
EMPTY_LABEL = "empty label"
UNKNOWN_LABEL = "unknown label"
REPEATED_ID = "repeated image_id"
DUPLICATE_LABEL_CONFLICT = "exact duplicate with another label"
EXCLUSION_KINDS = (MISSING, ZERO_BYTE, TRUNCATED, UNREADABLE, NO_METADATA, BAD_METADATA,
                   EMPTY_LABEL, UNKNOWN_LABEL, REPEATED_ID, DUPLICATE_LABEL_CONFLICT)

# Warning kinds.
ANNOTATION_MISSING_FILE = "annotation file missing"
MALFORMED_ANNOTATION = "malformed annotation"
BAD_SHAPE = "invalid annotation shape"
OUT_OF_BOUNDS = "annotation outside image"
LABEL_MISMATCH = "annotation label mismatch"
SIZE_MISMATCH = "annotation size mismatch"
UNEXPECTED_ANNOTATION = "normal image with annotation"
ANNOTATION_INGEST = "annotation ingest issue"
UNANNOTATED = "abnormal image without annotation"
NEAR_DUPLICATE_LABEL_CONFLICT = "near duplicate with another label"
WARNING_KINDS = (ANNOTATION_MISSING_FILE, MALFORMED_ANNOTATION, BAD_SHAPE, OUT_OF_BOUNDS,
                 LABEL_MISMATCH, SIZE_MISMATCH, UNEXPECTED_ANNOTATION, ANNOTATION_INGEST,
                 UNANNOTATED, NEAR_DUPLICATE_LABEL_CONFLICT)
# ... those that make the annotation unusable for localization.
ANNOTATION_WARNING_KINDS = {ANNOTATION_MISSING_FILE, MALFORMED_ANNOTATION, BAD_SHAPE, OUT_OF_BOUNDS,
                            LABEL_MISMATCH, SIZE_MISMATCH, UNEXPECTED_ANNOTATION, ANNOTATION_INGEST}

# ingest_issue entries (';'-joined by the sources) -> kind, by prefix. Issues about the
# annotation only are warnings; any other metadata issue makes the label untrustworthy.
INGEST_ISSUE_KINDS = (
    ("no metadata row", NO_METADATA),
    ("image file missing", MISSING),
    ("empty path", MISSING),
    ("empty label", EMPTY_LABEL),
    ("image_id repeated", REPEATED_ID),
    ("annotation", ANNOTATION_INGEST),
)

BOUNDS_TOLERANCE_PX = 1.0  # LabelMe points drawn on the image edge land a fraction outside
ANNOTATION_USABLE = "annotation_usable"  # quality.csv column: localization may use the annotation


def kind_of(message: str) -> str:
    """The kind of a '<kind>: <detail>' reason or warning."""
    return message.split(":", 1)[0]


def jpeg_truncated(data: bytes) -> bool:
    """A JPEG whose last scan (SOS marker) is not followed by an end-of-image marker.

    Used to name a decoding failure: 0xFFD9 cannot occur inside entropy-coded data, and an
    embedded EXIF thumbnail's own EOI comes before the main image's last scan.
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


# --------------------------------------------------------------------------- decoding

@dataclass(frozen=True)
class Scan:
    """What one pass over an image file found; ``error`` is '' or an exclusion reason."""
    sha256: str = ""
    phash: int | None = None
    width: int = -1
    height: int = -1
    error: str = ""


def scan_image(file: str, max_pixels: int) -> Scan:
    """Read, hash and decode one image file; never raises for a bad file."""
    if not file:
        return Scan(error=f"{MISSING}: the index row names no image file")
    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        return Scan(error=f"{MISSING}: {file} does not exist")
    except OSError as exc:
        return Scan(error=f"{UNREADABLE}: {file}: {exc}")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return Scan(sha, error=f"{ZERO_BYTE}: {file} is empty")
    try:
        img = imageio.read_image(file, max_pixels)
    except imageio.ImageReadError as exc:
        if jpeg_truncated(data):
            return Scan(sha, error=f"{TRUNCATED}: {exc}")
        return Scan(sha, error=f"{UNREADABLE}: {exc}")
    return Scan(sha, phash(img), img.shape[1], img.shape[0])


def _scan_args(args: tuple[str, int]) -> Scan:
    return scan_image(*args)


def scan_images(files: list[str], max_pixels: int, workers: int = 1) -> list[Scan]:
    """scan_image over all files, in order, with a progress bar (``workers`` processes)."""
    jobs = [(f, max_pixels) for f in files]
    bar = dict(total=len(jobs), desc="audit: decoding images", unit="img")
    if workers <= 1:
        return [_scan_args(j) for j in progress(jobs, **bar)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(progress(pool.imap(_scan_args, jobs, chunksize=8), **bar))


# --------------------------------------------------------------------------- checks

def ingest_findings(ingest_issue: str) -> tuple[list[str], list[str]]:
    """(exclusion reasons, warnings) from an index row's ';'-joined ingest_issue."""
    reasons, warnings = [], []
    for issue in filter(None, (part.strip() for part in ingest_issue.split(";"))):
        kind = next((k for prefix, k in INGEST_ISSUE_KINDS if issue.startswith(prefix)), BAD_METADATA)
        (warnings if kind == ANNOTATION_INGEST else reasons).append(
            kind if issue == kind else f"{kind}: {issue}")
    return reasons, warnings


def label_findings(label: str, classes: list[str]) -> list[str]:
    if not label:
        return [f"{EMPTY_LABEL}: the label is unknown"]
    if label not in classes:
        return [f"{UNKNOWN_LABEL}: '{label}' is not one of the dataset classes {classes}"]
    return []


def annotation_findings(path: str, width: int, height: int, expected_labels: set[str]) -> list[str]:
    """Warnings about one LabelMe file checked against the decoded image size and the labels
    the metadata allows ([] when the annotation can be used for localization)."""
    if not Path(path).is_file():
        return [f"{ANNOTATION_MISSING_FILE}: {path} does not exist"]
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{MALFORMED_ANNOTATION}: {path} is not valid JSON ({exc})"]
    shape_problems = _shape_problems(path, doc)
    if shape_problems:
        return shape_problems
    try:
        parsed = btxrd.read_labelme(path)
    except btxrd.AnnotationError as exc:
        return [f"{MALFORMED_ANNOTATION}: {exc}"]
    found = []
    if (parsed.width, parsed.height) != (width, height):
        found.append(f"{SIZE_MISMATCH}: {path} says {parsed.width}x{parsed.height}, "
                     f"the image is {width}x{height}")
    allowed = {label.casefold() for label in expected_labels}
    for i, lesion in enumerate(parsed.lesions):
        points = np.array([lesion.box[:2], lesion.box[2:], *lesion.polygon])
        if (points < -BOUNDS_TOLERANCE_PX).any() or (points > [width + BOUNDS_TOLERANCE_PX,
                                                                height + BOUNDS_TOLERANCE_PX]).any():
            found.append(f"{OUT_OF_BOUNDS}: lesion {i} box {_fmt_box(lesion.box)} "
                         f"leaves the {width}x{height} image")
        if lesion.label.casefold() not in allowed:
            found.append(f"{LABEL_MISMATCH}: lesion {i} is '{lesion.label}', "
                         f"the metadata says {sorted(expected_labels)}")
    return found


def _shape_problems(path: str, doc) -> list[str]:
    shapes = doc.get("shapes") if isinstance(doc, dict) else None
    found = []
    for i, shape in enumerate(shapes if isinstance(shapes, list) else []):
        if not isinstance(shape, dict) or not isinstance(shape.get("points"), list):
            continue  # read_labelme reports structure errors
        kind, n = shape.get("shape_type"), len(shape["points"])
        if kind == "rectangle" and n != 2:
            found.append(f"{BAD_SHAPE}: {path} shape {i} is a rectangle with {n} points, not 2")
        elif kind == "polygon" and n < 3:
            found.append(f"{BAD_SHAPE}: {path} shape {i} is a polygon with {n} points, fewer than 3")
    return found


def _fmt_box(box) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def coverage_findings(label: str, has_annotation: bool, normal: str | None,
                      dataset_annotated: bool) -> list[str]:
    """Normal images must not be annotated; abnormal ones should be when the source annotates."""
    if normal is None or not label:
        return []
    if label == normal and has_annotation:
        return [f"{UNEXPECTED_ANNOTATION}: a {normal} image has an annotation (not used)"]
    if label != normal and not has_annotation and dataset_annotated:
        return [f"{UNANNOTATED}: no annotation for a {label} image"]
    return []


# --------------------------------------------------------------------------- the audit

@dataclass
class AuditResult:
    """The quality table plus what the report and plots need."""
    info: DatasetInfo
    table: pd.DataFrame   # index columns + decoded size + verdict columns, one row per index row
    pairs: pd.DataFrame   # duplicate pairs: a, b (row positions), distance, exact
    notes: pd.DataFrame   # ingest notes: path, reason
    metrics: dict

    @property
    def quality(self) -> pd.DataFrame:
        return self.table[QUALITY_COLUMNS]


def run_audit(index: pd.DataFrame, notes: pd.DataFrame, info: DatasetInfo,
              params: AuditParams) -> AuditResult:
    """Audit every index row (rows in = rows out); see the module docstring for the rules."""
    index = index.reset_index(drop=True)
    scans = scan_images(list(index["file"]), params.max_image_pixels, params.workers)
    pairs = duplicate_pairs(scans, params.near_duplicate_hamming)
    normal = next((c for c in info.classes if c.casefold() == "normal"), None)
    annotated = bool((index["annotation"] != "").any())
    repeated = index["image_id"].duplicated(keep=False)
    verdicts = [_row_verdict(row, scan, info.classes, normal, annotated, repeated[i])
                for i, (row, scan) in enumerate(zip(index.to_dict("records"), scans))]
    table = index.assign(
        decoded_width=[s.width for s in scans], decoded_height=[s.height for s in scans],
        sha256=[s.sha256 for s in scans],
        phash=[f"{s.phash:016x}" if s.phash is not None else "" for s in scans],
        dup_cluster=cluster_ids(len(index), pairs),
        reasons=[v[0] for v in verdicts], warning_list=[v[1] for v in verdicts])
    _duplicate_label_findings(table, pairs)
    table["usable"] = table["reasons"].map(lambda r: not r)
    table["reason"] = table["reasons"].map("; ".join)
    table["warnings"] = table["warning_list"].map("; ".join)
    table[ANNOTATION_USABLE] = table["usable"] & (table["annotation"] != "") & table["warning_list"].map(
        lambda ws: not any(kind_of(w) in ANNOTATION_WARNING_KINDS for w in ws))
    result = AuditResult(info, table, pairs, notes.reset_index(drop=True), {})
    result.metrics = audit_metrics(result)
    log.info("audit: %d images in, %d usable, %d excluded", len(table), table["usable"].sum(),
             (~table["usable"]).sum())
    return result


def _row_verdict(row: dict, scan: Scan, classes: list[str], normal: str | None,
                 dataset_annotated: bool, repeated: bool) -> tuple[list[str], list[str]]:
    reasons, warnings = ingest_findings(row["ingest_issue"])
    reasons = ([scan.error] if scan.error else []) + reasons + label_findings(row["label"], classes)
    if repeated:
        reasons.append(f"{REPEATED_ID}: '{row['image_id']}' names more than one index row")
    if reasons:  # excluded: its annotation and coverage no longer matter
        return _first_per_kind(reasons), warnings
    warnings += coverage_findings(row["label"], bool(row["annotation"]), normal, dataset_annotated)
    if row["annotation"] and row["label"] != normal:
        expected = set(filter(None, row["subtype"].split(";"))) or {row["label"]}
        warnings += annotation_findings(row["annotation"], scan.width, scan.height, expected)
    return [], _first_per_kind(warnings)


def _first_per_kind(messages: list[str]) -> list[str]:
    """Drop a message when an earlier one has the same kind (e.g. a missing file seen twice)."""
    seen, kept = set(), []
    for m in messages:
        if kind_of(m) not in seen:
            seen.add(kind_of(m))
            kept.append(m)
    return kept


def _duplicate_label_findings(table: pd.DataFrame, pairs: pd.DataFrame) -> None:
    """Exact copies with different labels are all excluded; near copies only warned about."""
    for a, b, exact in zip(pairs["a"], pairs["b"], pairs["exact"]):
        la, lb = table.at[a, "label"], table.at[b, "label"]
        if not la or not lb or la == lb:
            continue
        for me, other, other_label in ((a, b, lb), (b, a, la)):
            other_id = table.at[other, "image_id"]
            if exact:
                table.at[me, "reasons"] = _first_per_kind(table.at[me, "reasons"] + [
                    f"{DUPLICATE_LABEL_CONFLICT}: same file content as {other_id} ({other_label})"])
            else:
                table.at[me, "warning_list"] = table.at[me, "warning_list"] + [
                    f"{NEAR_DUPLICATE_LABEL_CONFLICT}: {other_id} ({other_label}) looks the same"]


# --------------------------------------------------------------------------- metrics

def audit_metrics(result: AuditResult) -> dict:
    """metrics/audit.json: counts with stable keys (every kind present, zero or not)."""
    t = result.table
    usable = t[t["usable"]]
    primary = Counter(kind_of(r[0]) for r in t["reasons"] if r)
    warned = Counter(k for ws in t["warning_list"] for k in {kind_of(w) for w in ws})
    exact = result.pairs[result.pairs["exact"]]
    return {
        "source": result.info.source,
        "images_in": len(t),
        "usable": len(usable),
        "excluded": int((~t["usable"]).sum()),
        "excluded_by_reason": {k: primary[k] for k in EXCLUSION_KINDS},
        "warnings_by_kind": {k: warned[k] for k in WARNING_KINDS},
        "class_by_center": class_by_center(usable, result.info.classes),
        "exact_duplicate_pairs": len(exact),
        "near_duplicate_pairs": len(result.pairs) - len(exact),
        "duplicate_clusters": int(t.loc[t["dup_cluster"] != "", "dup_cluster"].nunique()),
        "images_in_duplicate_clusters": int((t["dup_cluster"] != "").sum()),
        "annotation": {
            "images_with_annotation": int((t["annotation"] != "").sum()),
            "usable_annotations": int(t[ANNOTATION_USABLE].sum()),
            "coverage_by_class": {r["class"]: r["coverage"] for r in annotation_coverage(result)},
        },
        "notes": {"total": len(result.notes),
                  "by_reason": dict(sorted(Counter(map(note_kind, result.notes["reason"])).items()))},
    }


def note_kind(reason: str) -> str:
    """A note reason without its per-file detail (after ':' or ' (')."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


def class_by_center(usable: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    centers = sorted(set(usable["center"].replace("", "unknown")))
    counts = Counter(zip(usable["label"], usable["center"].replace("", "unknown")))
    return {c: {ctr: counts[(c, ctr)] for ctr in centers} for c in classes}


def annotation_coverage(result: AuditResult) -> list[dict]:
    """Per class, among usable images: how many have an annotation, how many a usable one."""
    usable = result.table[result.table["usable"]]
    out = []
    for c in result.info.classes:
        rows = usable[usable["label"] == c]
        good = int(rows[ANNOTATION_USABLE].sum())
        out.append({"class": c, "images": len(rows), "annotated": int((rows["annotation"] != "").sum()),
                    "usable_annotation": good, "coverage": round(good / len(rows), 4) if len(rows) else 0.0})
    return out
