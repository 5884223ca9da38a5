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
    def load(cls, path: str | Path) -> "DatasetInfo":
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


def write_index(df: pd.DataFrame, path: str | Path) -> None:
    df[INDEX_COLUMNS].to_csv(path, index=False)
