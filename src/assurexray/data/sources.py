"""Data sources: each one ends in the same normalized index, ingest notes and DatasetInfo.

Sources (``params.data.source``): ``synthetic`` (a generated BTXRD twin), ``btxrd`` (the
downloaded release), ``btxrd_dir`` (a release already on disk) and ``manifest`` (a CSV of
path,label[,...] rows or a folder with one sub-folder per class). Manifest boxes are written as
LabelMe files so that one annotation parser (``btxrd.parse_labelme``) serves every source.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from assurexray.data import btxrd, download, imageio
from assurexray.data.schema import INDEX_COLUMNS, DatasetInfo
from assurexray.data.synthetic.writer import generate_twin
from assurexray.errors import AssureXRayError
from assurexray.params import Params

log = logging.getLogger(__name__)

NOTE_COLUMNS = btxrd.NOTE_COLUMNS
MANIFEST_REQUIRED = ["path", "label"]
MANIFEST_OPTIONAL = ["center", "site", "group", "view", "age", "sex"]
BOX_COLUMNS = ["x0", "y0", "x1", "y1"]
# Manifest column -> index column, where the names differ.
MANIFEST_TO_INDEX = {"site": "sites"}
ANNOTATIONS_DIR = "annotations"


class SourceError(AssureXRayError, ValueError):
    """A source cannot be read; the message names the file or the params key to fix."""


# The data source registry (params.data.source): name -> reader(params, raw_dir) giving
# (index, notes, info); raw files it writes go under raw_dir.
SourceReader = Callable[[Params, Path], tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]]
SOURCES: dict[str, SourceReader] = {}


def register_source(name: str) -> Callable[[SourceReader], SourceReader]:
    """Decorator adding a source reader under ``name``."""
    def add(reader: SourceReader) -> SourceReader:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} is already registered")
        SOURCES[name] = reader
        return reader
    return add


def prepare_source(params: Params, raw_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    """Build (index, notes, info) for ``params.data.source``; raw files go under ``raw_dir``.

    The user's own data (``manifest``, ``btxrd_dir``) must lie inside ``data.tracked_path``,
    which DVC hashes, so that no edit of it goes unseen; generated and downloaded data are
    fixed by their params (seed, checksums).
    """
    source = params.data.source
    if source not in SOURCES:
        raise SourceError(f"params key 'data.source' = {source!r}: expected one of "
                          f"{', '.join(SOURCES)}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    return SOURCES[source](params, raw_dir)


@register_source("manifest")
def _manifest(params: Params, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    path = _configured_path(params.data.manifest.path, "data.manifest.path",
                            "a CSV or a folder per class")
    index, notes, classes = read_manifest(path, raw_dir)
    check_tracked([path, *index["file"]], params.data.tracked_path, "data.manifest.path")
    return index, notes, DatasetInfo("manifest", classes, str(path))


@register_source("synthetic")
def _synthetic(params: Params, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    s = params.data.synthetic
    root = generate_twin(raw_dir, n_images=s.n_images, seed=params.seed,
                         defects=s.defects, min_side=s.min_side, max_side=s.max_side)
    return _btxrd_layout("synthetic", root)


@register_source("btxrd")
def _btxrd(params: Params, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    config = params.data.btxrd
    cache_dir = Path(config.cache_dir) if config.cache_dir else download.default_cache_dir()
    return _btxrd_layout("btxrd", download.fetch_and_extract(config, raw_dir, cache_dir))


@register_source("btxrd_dir")
def _btxrd_dir(params: Params, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    root = _configured_path(params.data.btxrd_dir.path, "data.btxrd_dir.path",
                            "a folder holding images/, Annotations/, dataset.xlsx")
    check_tracked([root], params.data.tracked_path, "data.btxrd_dir.path")
    return _btxrd_layout("btxrd_dir", root)


def _btxrd_layout(source: str, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, DatasetInfo]:
    """The BTXRD release layout (the twin mirrors it): one ingest for three sources."""
    index, notes = btxrd.ingest_btxrd_dir(root)
    return index, notes, DatasetInfo(source, list(btxrd.CLASSES), str(root))


def check_tracked(paths: list, tracked: str, key: str) -> None:
    """Every path (files or folders, '' skipped) lies inside ``tracked`` (``data.tracked_path``).

    Compared after resolving links: DVC follows the tracked folder when it is itself a link,
    but not links inside it.
    """
    root = os.path.realpath(tracked)
    resolved = [os.path.realpath(p) for p in paths if str(p)]
    outside = [p for p in resolved if os.path.commonpath([p, root]) != root]
    if outside:
        holder = os.path.commonpath([p if os.path.isdir(p) else os.path.dirname(p) for p in resolved])
        raise SourceError(
            f"{len(outside)} file(s) of {key} lie outside data.tracked_path ({tracked}), the folder "
            f"DVC watches for changes to your data, e.g. {outside[0]}: set data.tracked_path to a "
            f"folder holding all of them (here {holder}) or move them into {tracked}")


def _configured_path(value: str | None, key: str, what: str) -> Path:
    if not value:
        raise SourceError(f"params key '{key}' is null: set it to {what}")
    path = Path(value)
    if not path.exists():
        raise SourceError(f"'{key}' = {value}: no such file or folder")
    return path


# --------------------------------------------------------------------------- manifests

def read_manifest(path: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Index a manifest CSV or a folder-per-class tree; returns (index, notes, classes).

    Classes are the sorted distinct labels found in the data. Boxes become LabelMe files in
    ``out_dir/annotations/``. A row with a missing path or label stays in the index with an
    ``ingest_issue``.
    """
    path = Path(path)
    if path.is_dir():
        entries, notes = _scan_class_folders(path)
    else:
        entries, notes = _read_manifest_csv(path), []
    index = _index_from_entries(entries, Path(out_dir) / ANNOTATIONS_DIR)
    # every label the source names is a class, also one whose only image gets excluded
    classes = sorted({label for e in entries for label in e.labels})
    if not classes:
        raise SourceError(f"{path}: no labelled image found")
    log.info("%s: %d images, classes %s, %d notes", path, len(index), classes, len(notes))
    return index, pd.DataFrame(notes, columns=NOTE_COLUMNS), classes


@dataclass
class _Entry:
    """One image of a manifest before it becomes an index row."""
    rel: str                     # path relative to ``base``; '' when the manifest row has none
    base: Path
    key: str                     # what the image_id derives from
    values: dict[str, str]       # label and the optional manifest columns
    labels: list[str]            # every label the source gives this image
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)


def _read_manifest_csv(path: Path) -> list[_Entry]:
    """One entry per distinct image path; rows without a path stay separate."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: cannot read the manifest CSV: {exc}") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if any(c in df.columns for c in BOX_COLUMNS):
        missing += [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: manifest lacks column(s) {missing} "
                          "(needs path,label; box columns come as x0,y0,x1,y1 together)")
    ignored = sorted(set(df.columns) - set(MANIFEST_REQUIRED + MANIFEST_OPTIONAL + BOX_COLUMNS))
    if ignored:
        log.warning("%s: ignoring unknown manifest column(s) %s", path, ignored)
    df = df.map(str.strip).reindex(columns=MANIFEST_REQUIRED + MANIFEST_OPTIONAL + BOX_COLUMNS,
                                   fill_value="")
    df["line"] = range(2, len(df) + 2)  # CSV line numbers (the header is line 1)
    base = path.parent
    groups: dict[str, list[pd.Series]] = {}
    for _, row in df.iterrows():
        file = os.path.normpath(os.path.abspath(base / row["path"])) if row["path"] else ""
        groups.setdefault(file or f"row{row['line']}", []).append(row)
    keys = dict(zip(groups, id_paths(list(groups), base)))
    return [_entry_of_rows(keys[file], base, rows) for file, rows in groups.items()]


def id_paths(files: list[str], base: Path) -> list[str]:
    """What image ids derive from: each absolute path relative to ``base`` (the manifest's
    folder) or, for files outside it, to the deepest folder holding all of those, so the same
    data in another folder gives the same ids. Anything else (a row key) passes unchanged."""
    base = os.path.abspath(base)
    outside = {f for f in files if os.path.isabs(f) and os.path.commonpath([f, base]) != base}
    root = os.path.commonpath([os.path.dirname(f) for f in outside]) if outside else base
    return [os.path.relpath(f, root if f in outside else base) if os.path.isabs(f) else f
            for f in files]


def _entry_of_rows(key: str, base: Path, rows: list[pd.Series]) -> _Entry:
    """Merge the rows of one image: their values must agree; each row may add a box."""
    lines = ", ".join(str(r["line"]) for r in rows)
    entry = _Entry(rows[0]["path"], base, key, {}, [])
    if not entry.rel:
        entry.issues.append(f"empty path on manifest line {lines}")
    for col in ["label"] + MANIFEST_OPTIONAL:
        found = list(dict.fromkeys(r[col] for r in rows if r[col]))
        entry.values[col] = found[0] if len(found) == 1 else ""
        if len(found) > 1:
            entry.issues.append(f"conflicting {col} values {found} on manifest lines {lines}")
    entry.labels = list(dict.fromkeys(r["label"] for r in rows if r["label"]))
    if not entry.labels:
        entry.issues.append(f"empty label on manifest line {lines}")
    for r in rows:
        cells = [r[c] for c in BOX_COLUMNS]
        if any(cells):
            box = _box(cells)
            if box:
                entry.boxes.append(box)
            else:
                entry.issues.append(f"annotation box on manifest line {r['line']} ignored: "
                                    f"x0,y0,x1,y1 = {cells} are not 4 finite numbers")
    return entry


def _box(cells: list[str]) -> tuple[float, float, float, float] | None:
    try:
        box = tuple(float(c) for c in cells)
    except ValueError:
        return None
    return box if all(map(math.isfinite, box)) else None


def _scan_class_folders(root: Path) -> tuple[list[_Entry], list[tuple[str, str]]]:
    """Images under root/<class>/ (any depth); every other file goes to the notes."""
    entries, notes = [], []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if len(rel.parts) == 1:
            notes.append((str(file), "not inside a class folder, ignored"))
        elif file.suffix.lower() not in imageio.IMAGE_SUFFIXES:
            notes.append((str(file), f"not an image file (suffix '{file.suffix}'), ignored"))
        else:
            label = rel.parts[0]
            values = dict.fromkeys(MANIFEST_OPTIONAL, "") | {"label": label}
            entries.append(_Entry(str(rel), root, str(rel), values, [label]))
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(e.labels == [folder.name] for e in entries):
            notes.append((str(folder), "class folder without images, ignored"))
    return entries, notes


def _index_from_entries(entries: list[_Entry], annotations_dir: Path) -> pd.DataFrame:
    rows = []
    for image_id, e in zip(unique_ids([e.key for e in entries]), entries):
        file = str(e.base / e.rel) if e.rel else ""
        width, height = _header_size(file)
        annotation = ""
        if e.boxes:
            annotation = str(annotations_dir / f"{image_id}.json")
            write_labelme(annotation, file, width, height, e.values["label"], e.boxes)
        values = {MANIFEST_TO_INDEX.get(k, k): v for k, v in e.values.items()}
        rows.append({**dict.fromkeys(INDEX_COLUMNS, ""), **values, "image_id": image_id,
                     "file": file, "annotation": annotation, "width": width, "height": height,
                     "ingest_issue": "; ".join(e.issues)})
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def _header_size(file: str) -> tuple[int, int]:
    """(width, height) from the image header, (-1, -1) when unreadable (the audit says why)."""
    try:
        return imageio.image_size(file) if file else (-1, -1)
    except imageio.ImageReadError:
        return -1, -1


def unique_ids(rel_paths: list[str]) -> list[str]:
    """Stable image ids from relative paths: the path without suffix, sanitized to
    [A-Za-z0-9._-]; paths that collide all get a suffix hashed from their own path."""
    bases = [re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(p)[0]).strip("._") or "image"
             for p in rel_paths]
    counts = pd.Series(bases).value_counts()
    return [f"{b}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" if counts[b] > 1 else b
            for b, p in zip(bases, rel_paths)]


def write_labelme(path: str | Path, image_file: str, width: int, height: int, label: str,
                  boxes: list[tuple[float, ...]]) -> None:
    """A LabelMe file with one rectangle and one matching 4-corner polygon per box."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lesions = [(label, (x0, y0, x1, y1), [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
               for x0, y0, x1, y1 in boxes]
    image = os.path.relpath(image_file, path.parent) if image_file else ""
    text = btxrd.labelme_text(image, width if width > 0 else None, height if height > 0 else None, lesions)
    path.write_bytes(text.encode("utf-8"))
