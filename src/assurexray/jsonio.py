"""Strict JSON files: every metrics, plot-data and record file the stages write.

Numpy scalars and arrays become Python values and NaN/inf become null, so a file never holds a
token that a strict JSON reader (DVC's metrics, a browser) rejects.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(obj):
    """Recursively convert numpy scalars to Python and NaN/inf to None, for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj) -> None:
    """Strict JSON (NaN -> null), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
