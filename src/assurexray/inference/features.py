"""What the monitors look at: image statistics of a decoded radiograph and the model's
penultimate-layer embedding, computed in the same forward pass as the logits.

The statistics are taken on the decoded (H, W) uint8 image shrunk to at most ``STATS_SIDE``
pixels (area averaging), so they do not depend on the file's resolution and cost little on a
large radiograph; colour, size, aspect, bit depth and modality come from the file
(``imageio.read_decoded``).
"""
from __future__ import annotations

import cv2
import numpy as np

STATS_SIDE = 256
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
FEATURES = (*(f"p{q:02d}" for q in PERCENTILES), "mean", "contrast", "edge", "dark_share",
            "bright_share", "chroma", "width", "height", "aspect", "bit_depth", "modality")
# Content statistics: what a radiograph looks like whatever scanner wrote it (the image-level
# out-of-distribution score uses these; size, bit depth and modality only feed drift).
CONTENT_FEATURES = FEATURES[:FEATURES.index("chroma") + 1]
# The smallest spread a content statistic is standardised by: one grey level, or 1% of the
# pixels for the shares. A statistic constant in training (chroma 0 on grey files) would
# otherwise turn any trace of it (JPEG colour noise) into an enormous distance.
SHARES = ("dark_share", "bright_share")
CONTENT_MIN_SCALE = np.array([0.01 if name in SHARES else 1.0 for name in CONTENT_FEATURES])
# Grey levels counted as background (radiographs have large near-black areas) and as burn-out.
DARK, BRIGHT = 16, 240
LEVELS = np.arange(256, dtype=np.float64)
# DICOM modalities of plain radiography; every other modality is coded 2, JPEG/PNG 0.
RADIOGRAPHY = {"CR", "DX", "RG"}


def image_stats(gray: np.ndarray, full: tuple[int, int], info: dict) -> np.ndarray:
    """One row of ``FEATURES`` (float64) for a decoded image (of full size ``full`` =
    (width, height); ``gray`` may be a reduced decode) and its ``imageio.read_decoded`` info."""
    gh, gw = gray.shape
    scale = min(1.0, STATS_SIDE / max(gh, gw))
    small = gray if scale == 1.0 else cv2.resize(
        gray, (max(1, round(gw * scale)), max(1, round(gh * scale))), interpolation=cv2.INTER_AREA)
    w, h = full
    counts = np.bincount(small.ravel(), minlength=256)
    n = small.size
    mean = counts @ LEVELS / n
    std = np.sqrt(counts @ (LEVELS - mean) ** 2 / n)
    modality = info.get("modality", "")
    code = 0 if not modality else 1 if modality.upper() in RADIOGRAPHY else 2
    return np.array([*uint8_percentiles(counts, PERCENTILES), mean, std, edge_strength(small),
                     counts[:DARK + 1].sum() / n, counts[BRIGHT:].sum() / n,
                     info.get("chroma", 0.0), w, h, w / h, info.get("bit_depth", 8), code],
                    dtype=np.float64)


def edge_strength(img: np.ndarray) -> float:
    """Mean absolute difference between vertical neighbours plus that between horizontal ones
    (OpenCV's saturating uint8 difference is exact, and a tenth of numpy's float cost)."""
    h, w = img.shape
    down = cv2.sumElems(cv2.absdiff(img[1:], img[:-1]))[0] / ((h - 1) * w) if h > 1 else 0.0
    right = cv2.sumElems(cv2.absdiff(img[:, 1:], img[:, :-1]))[0] / (h * (w - 1)) if w > 1 else 0.0
    return down + right


def uint8_percentiles(counts: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile`` (linear interpolation) of uint8 pixels from their 256-bin histogram:
    the same numbers without sorting the image, which made the statistics cost as much as the
    decode itself."""
    cum = np.cumsum(counts)
    rank = (cum[-1] - 1) * np.asarray(percentiles, dtype=np.float64) / 100
    low = np.floor(rank)
    v_low = np.searchsorted(cum, low, side="right")
    v_high = np.searchsorted(cum, np.minimum(low + 1, cum[-1] - 1), side="right")
    return v_low + (rank - low) * (v_high - v_low)


def content_columns() -> list[int]:
    return [FEATURES.index(name) for name in CONTENT_FEATURES]
