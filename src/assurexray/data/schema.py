"""The contracts between stages: the normalized image index, lesions, the quality table.

Every data source ends in the same index (one row per image), so every later stage has one
code path. Class names travel with the data in ``dataset.json``; no stage hard-codes them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

# One row per image. ``file`` is a path (relative to the repository root or absolute);
# ``sites`` is ';'-joined; ``annotation`` is a LabelMe JSON path or ''; ``group`` is a
# source-provided patient/group id or '' (BTXRD has none); ``ingest_issue`` is '' or a
# ';'-joined list of reasons found while reading the metadata (the audit turns it into an
# exclusion or a warning). width/height are -1 when the header cannot be read.
INDEX_COLUMNS = [
    "image_id", "file", "label", "center", "view", "sites", "region", "subtype",
    "age", "sex", "annotation", "width", "height", "group", "ingest_issue",
]

# The audit's verdict, one row per index row: usable (bool), reason ('' when usable),
# warnings ('; '-joined, not excluding), content hash, perceptual hash, duplicate cluster id
# (exact or near; '' when unique), and whether its annotation may be used for localization.
QUALITY_COLUMNS = ["image_id", "usable", "reason", "warnings", "sha256", "phash", "dup_cluster",
                   "annotation_usable"]


@dataclass(frozen=True)
class Lesion:
    """One annotated lesion: its box (x0, y0, x1, y1, pixels) and polygon [(x, y), ...]."""
    label: str
    box: tuple[float, float, float, float]
    polygon: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What a source produced: its name, its class names in model output order, its root."""
    source: str
    classes: list[str]
    root: str

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        return cls(**json.loads(Path(path).read_text()))


def empty_index() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in INDEX_COLUMNS})


def read_index(path: str | Path) -> pd.DataFrame:
    """Read an index CSV keeping ids and text columns as strings ('' for missing)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: index lacks columns {missing}; rerun the prepare stage")
    for col in ("width", "height"):
        df[col] = df[col].astype(int)
    return df[INDEX_COLUMNS]


# Quality columns holding True/False.
BOOL_COLUMNS = ["usable", "annotation_usable"]
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def read_quality(path: str | Path) -> pd.DataFrame:
    """Read the audit's quality table: text columns as strings, the flag columns as bool."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in QUALITY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: quality table lacks columns {missing}; rerun the audit stage")
    for column in BOOL_COLUMNS:
        flags = df[column].str.lower().map(_BOOLS)
        if flags.isna().any():
            bad = df.loc[flags.isna(), column].unique().tolist()
            raise ValueError(f"{path}: '{column}' must be True/False, found {bad}")
        df[column] = flags.astype(bool)
    return df


def usable_index(index: pd.DataFrame, quality: pd.DataFrame) -> pd.DataFrame:
    """Index rows the audit kept, by image_id; index and quality must list the same ids."""
    check_aligned(index, quality)
    keep = set(quality.loc[quality["usable"].astype(bool), "image_id"])
    return index[index["image_id"].isin(keep)].sort_values("image_id").reset_index(drop=True)


def quality_by_id(quality: pd.DataFrame) -> pd.DataFrame:
    """The quality table indexed by image_id, without the rows of a repeated id.

    The audit excludes every row of an id that names several index rows (``check_aligned``
    makes sure), so no usable image is lost, and lookups by id stay unambiguous.
    """
    return quality[~quality["image_id"].duplicated(keep=False)].set_index("image_id")


def check_aligned(index: pd.DataFrame, quality: pd.DataFrame) -> None:
    """Index and quality table list the same ids; an id may repeat only if the audit excluded
    every one of its rows (a repeated id cannot say which image it means)."""
    usable = set(quality.loc[quality["usable"].astype(bool), "image_id"])
    for name, df in (("index", index), ("quality table", quality)):
        dup = df["image_id"][df["image_id"].duplicated() & df["image_id"].isin(usable)]
        if len(dup):
            raise ValueError(f"{name} repeats usable image ids {dup.head(5).tolist()}; "
                             "rerun the audit stage, which excludes repeated ids")
    only_index = sorted(set(index["image_id"]) - set(quality["image_id"]))
    only_quality = sorted(set(quality["image_id"]) - set(index["image_id"]))
    if only_index or only_quality:
        raise ValueError(
            f"index and quality table disagree: {len(only_index)} ids only in the index "
            f"{only_index[:5]}, {len(only_quality)} only in the quality table {only_quality[:5]}; "
            "rerun the audit stage")


def write_index(df: pd.DataFrame, path: str | Path) -> None:
    df[INDEX_COLUMNS].to_csv(path, index=False)
