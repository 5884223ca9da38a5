"""Decode-once image cache: every usable image letterboxed into one (N, S, S) uint8 array.

Coordinate convention (images, boxes, polygons, everywhere in AssureXRay): continuous pixel
coordinates with the origin at the top-left CORNER of the top-left pixel, so pixel (i, j)
covers [i, i+1) x [j, j+1) and its centre is (i + 0.5, j + 0.5). LabelMe uses the same frame.
In it, OpenCV's resize (which maps pixel centres by (x + 0.5) * s - 0.5) is exactly x * s,
so a point maps into the letterboxed frame by x' = x * scale + pad_x (same for y).

Files become cache pixels through ``letterboxed_file`` alone, used by ``build_cache`` and by
``predict``: a reduced JPEG decode (``imageio.read_image_reduced``), letterboxed with the
geometry of the full image. Its reduced field of view ends at most s - 1 original pixels short
of the full one (scale 1/s), which moves the far edge by less than one cache pixel.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from assurexray.console import progress
from assurexray.data import btxrd
from assurexray.data.imageio import DEFAULT_MAX_PIXELS, ImageReadError, read_image_reduced
from assurexray.data.schema import quality_by_id, usable_index
from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)

META_COLUMNS = ["image_id", "row", "scale", "pad_x", "pad_y", "width", "height"]
DECODE_CHUNK = 64  # images submitted at a time to the decoding threads


class CacheError(AssureXRayError, RuntimeError):
    """An image could not be cached, or a cache folder is incomplete; the message says which."""


def letterbox(img: np.ndarray, size: int,
              full_size: tuple[int, int] | None = None) -> tuple[np.ndarray, float, int, int]:
    """Resize keeping aspect ratio so the longer side is ``size``, centred on a zero square.

    Returns (out, scale, pad_x, pad_y): a point (x, y) of the image lands at
    (x * scale + pad_x, y * scale + pad_y). ``scale`` is exact for the longer side; the shorter
    side is rounded to whole pixels, which moves its far edge by at most half a pixel.
    ``full_size`` (width, height): ``img`` is a reduced decode of an image of that size; the
    geometry then refers to the full image.
    """
    if img.ndim != 2 or img.dtype != np.uint8 or 0 in img.shape:
        raise ValueError(f"letterbox expects a non-empty (H, W) uint8 image, got "
                         f"{img.shape} {img.dtype}")
    h, w = img.shape
    width, height = full_size or (w, h)
    scale = size / max(width, height)
    new_w, new_h = _resized(width, height, scale)
    if (new_w, new_h) != (w, h):
        interpolation = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interpolation)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((size, size), dtype=np.uint8)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = img
    return out, scale, pad_x, pad_y


def _resized(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def content_box(width: int, height: int, scale: float, pad_x: int,
                pad_y: int) -> tuple[int, int, int, int]:
    """Pixels (x0, y0, x1, y1), half-open, that hold the image in its letterboxed frame.

    Arguments as in a meta.csv row; the padding is everything outside this box. The one
    implementation: robustness corrupts, and localization and ROAD score, inside it.
    """
    new_w, new_h = _resized(int(width), int(height), float(scale))
    return int(pad_x), int(pad_y), int(pad_x) + new_w, int(pad_y) + new_h


def content_boxes(meta: pd.DataFrame) -> np.ndarray:
    """(n, 4) int ``content_box`` of every row of a meta.csv frame, in row order."""
    rows = meta[["width", "height", "scale", "pad_x", "pad_y"]].itertuples(index=False)
    return np.array([content_box(*row) for row in rows], dtype=int).reshape(-1, 4)


def map_points(points, scale: float, pad_x: int, pad_y: int) -> np.ndarray:
    """Map (N, 2) original (x, y) coordinates into the letterboxed frame (see module doc)."""
    return np.asarray(points, dtype=float).reshape(-1, 2) * scale + (pad_x, pad_y)


def letterboxed_file(path: str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
                     ) -> tuple[np.ndarray, float, int, int, int, int]:
    """(out, scale, pad_x, pad_y, width, height): the image file as cache pixels, with the
    geometry of ``letterbox`` and the full image's size; raises ImageReadError."""
    img, (width, height) = read_image_reduced(path, size, max_pixels)
    return *letterbox(img, size, (width, height)), width, height


def _decode(item: tuple[str, str], size: int,
            max_pixels: int) -> tuple[np.ndarray, float, int, int, int, int]:
    image_id, path = item
    try:
        return letterboxed_file(path, size, max_pixels)
    except ImageReadError as exc:
        raise CacheError(f"{path} ({image_id}): {exc.reason}; the audit should have excluded "
                         "it: rerun the audit stage") from None


def build_cache(index: pd.DataFrame, quality: pd.DataFrame, size: int, out_dir: str | Path,
                workers: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """Decode, letterbox and store every usable image once; returns the meta table.

    Writes images.npy (N, size, size) uint8, meta.csv and lesions.json into ``out_dir``
    atomically (a temporary folder renamed at the end). ``workers`` > 1 decodes in parallel
    processes, keeping index order. ``max_pixels`` must be the audit's limit, so that every
    image the audit accepted is read here too.
    """
    rows = usable_index(index, quality)
    if rows.empty:
        raise CacheError("no usable images to cache: the audit excluded every image")
    items = list(zip(rows["image_id"], rows["file"]))
    with _atomic_dir(Path(out_dir)) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(items), size, size))
        decode = partial(_decode, size=size, max_pixels=max_pixels)
        results = progress(_decoded(items, decode, workers), total=len(items), desc="decode",
                       unit="img")
        meta = []
        for row, (out, *geometry) in enumerate(results):
            images[row] = out
            meta.append((items[row][0], row, *geometry))
        images.flush()
        del images
        meta = pd.DataFrame(meta, columns=META_COLUMNS)
        meta.to_csv(tmp / "meta.csv", index=False)
        lesions = cached_lesions(rows[_annotation_usable(rows, quality)], meta)
        (tmp / "lesions.json").write_text(json.dumps(lesions, indent=1) + "\n")
    log.info("cached %d images at %d px, lesions for %d", len(meta), size, len(lesions))
    return meta


def _decoded(items: list[tuple[str, str]], decode, workers: int):
    """decode(item) for every item, in order; in ``workers`` threads when more than one.

    Threads, not processes: Pillow and OpenCV release the GIL while decoding and resizing,
    and forking a process that has used OpenCV's thread pool can deadlock. Work is submitted
    in chunks, so memory stays bounded and a failure stops the run without decoding the rest.
    """
    if workers <= 1:
        yield from map(decode, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), DECODE_CHUNK):
            yield from pool.map(decode, items[start:start + DECODE_CHUNK])


def _annotation_usable(rows: pd.DataFrame, quality: pd.DataFrame) -> np.ndarray:
    """Per row: may localization use its annotation (the audit's verdict)?"""
    return rows["image_id"].map(quality_by_id(quality)["annotation_usable"]).to_numpy(bool)


def cached_lesions(rows: pd.DataFrame, meta: pd.DataFrame) -> dict[str, list[dict]]:
    """Lesions of the annotated ``rows`` whose annotation parses, in cache pixels.

    build_cache passes only the images whose annotation the audit accepted for localization;
    an annotation that still fails to parse is left out (logged), as the audit would have.
    """
    frame = meta.set_index("image_id")
    out = {}
    for image_id, path in zip(rows["image_id"], rows["annotation"]):
        if not path:
            continue
        try:
            lesions = btxrd.parse_labelme(path)
        except btxrd.AnnotationError as exc:
            log.warning("%s: lesions not cached: %s", image_id, exc)
            continue
        scale, pad_x, pad_y = frame.loc[image_id, ["scale", "pad_x", "pad_y"]]
        out[image_id] = [_mapped(lesion, scale, int(pad_x), int(pad_y)) for lesion in lesions]
    return out


def _mapped(lesion, scale: float, pad_x: int, pad_y: int) -> dict:
    box = map_points(np.reshape(lesion.box, (2, 2)), scale, pad_x, pad_y)
    polygon = map_points(lesion.polygon, scale, pad_x, pad_y)
    return {"label": lesion.label, "box": np.round(box.ravel(), 3).tolist(),
            "polygon": np.round(polygon, 3).tolist()}


@contextlib.contextmanager
def _atomic_dir(out_dir: Path):
    """Yield a fresh temporary folder beside ``out_dir``; on success it replaces ``out_dir``."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


class ImageCache:
    """Read side of the cache: memory-mapped images, meta, lesions by image id."""

    def __init__(self, cache_dir: str | Path):
        cache_dir = Path(cache_dir)
        missing = [n for n in ("images.npy", "meta.csv", "lesions.json")
                   if not (cache_dir / n).exists()]
        if missing:
            raise CacheError(f"{cache_dir}: cache lacks {missing}; rerun the preprocess stage")
        self.images = np.load(cache_dir / "images.npy", mmap_mode="r")
        self.meta = pd.read_csv(cache_dir / "meta.csv", dtype={"image_id": str},
                                keep_default_na=False)
        if len(self.meta) != len(self.images):
            raise CacheError(f"{cache_dir}: meta.csv has {len(self.meta)} rows for "
                             f"{len(self.images)} images; rerun the preprocess stage")
        self._rows = dict(zip(self.meta["image_id"], self.meta["row"]))
        self._lesions = json.loads((cache_dir / "lesions.json").read_text())

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def row_of(self, image_id: str) -> int:
        try:
            return int(self._rows[image_id])
        except KeyError:
            raise KeyError(f"{image_id} is not in the cache (excluded by the audit?)") from None

    def image(self, image_id: str) -> np.ndarray:
        return np.asarray(self.images[self.row_of(image_id)])

    def lesions(self, image_id: str) -> list[dict]:
        """Cached lesions (cache pixels); [] for images without a usable annotation."""
        return self._lesions.get(image_id, [])
