"""Out-of-distribution image sets, generated offline and deterministically (seeded).

Each set is a list of encoded files (PNG or JPEG bytes), so the evaluation reads them through
the same reader as an upload. Far from the training data (not radiographs at all):

- ``texture``: natural-looking colour textures (multi-scale smoothed noise, as in bark, stone);
- ``document``: scanned-page look, dark text lines on a light background.

Near the training data (radiograph-like, but not what the model was trained on):

- ``chest_film``: synthetic chest films (thorax, dark lung fields, ribs, spine);
- ``inverted``: the given radiographs with inverted grey levels (a MONOCHROME1 read wrongly);
- ``corrupted``: the given radiographs under heavy noise, blur and occluding blocks.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

FAR_SETS = ("texture", "document")
NEAR_SETS = ("chest_film", "inverted", "corrupted")


def _encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise ValueError(f"cannot encode a {img.shape} image as {ext}")
    return buf.tobytes()


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell), max(2, w // cell)))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def texture(rng: np.random.Generator) -> bytes:
    h, w = rng.integers(200, 420, size=2)
    layers = [sum(_smooth(rng, h, w, cell) / (i + 1) for i, cell in enumerate((64, 16, 4)))
              for _ in range(3)]
    img = np.stack(layers, axis=2)
    img = (img - img.min()) / (np.ptp(img) or 1.0)
    tint = rng.uniform(0.3, 1.0, size=3)
    return _encode(np.clip(img * tint * 255, 0, 255).astype(np.uint8), ".jpg")


def document(rng: np.random.Generator) -> bytes:
    h, w = int(rng.integers(320, 480)), int(rng.integers(240, 360))
    img = np.full((h, w), int(rng.integers(215, 250)), dtype=np.uint8)
    y = int(rng.integers(20, 40))
    while y < h - 20:
        words = "".join(rng.choice(list("abcdefghij klmnop qrstuvwxyz 0123456789"), size=40))
        cv2.putText(img, words, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, int(rng.integers(0, 60)), 1)
        y += int(rng.integers(14, 24))
    return _encode(img)


def chest_film(rng: np.random.Generator) -> bytes:
    s = int(rng.integers(256, 400))
    img = np.zeros((s, s), dtype=np.float64)
    cv2.ellipse(img, (s // 2, s // 2 + s // 10), (int(s * 0.42), int(s * 0.45)), 0, 0, 360, 170, -1)
    for side in (-1, 1):   # lung fields
        cv2.ellipse(img, (s // 2 + side * int(s * 0.17), s // 2), (int(s * 0.13), int(s * 0.3)),
                    0, 0, 360, 60, -1)
    for k in range(9):     # ribs
        y = int(s * (0.25 + 0.07 * k))
        cv2.ellipse(img, (s // 2, y), (int(s * 0.33), int(s * 0.05)), 0, 180, 360, 200, 3)
    cv2.rectangle(img, (s // 2 - s // 40, int(s * 0.1)), (s // 2 + s // 40, s), 230, -1)  # spine
    img = cv2.GaussianBlur(img, (0, 0), s / 150) + rng.normal(0, 6, img.shape)
    return _encode(np.clip(img, 0, 255).astype(np.uint8))


def inverted(gray: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(255 - gray)


def corrupted(gray: np.ndarray, rng: np.random.Generator) -> bytes:
    img = cv2.GaussianBlur(gray.astype(np.float64), (0, 0), 3.0) + rng.normal(0, 60, gray.shape)
    h, w = gray.shape
    for _ in range(6):     # occluding blocks (burned-in labels, detector faults)
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y:y + h // 6, x:x + w // 6] = rng.choice([0, 255])
    return _encode(np.clip(img, 0, 255).astype(np.uint8), ".jpg")


SYNTHETIC: dict[str, Callable[[np.random.Generator], bytes]] = {
    "texture": texture, "document": document, "chest_film": chest_film}
FROM_RADIOGRAPHS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "inverted": inverted, "corrupted": corrupted}


def generate_sets(radiographs: Sequence[np.ndarray], n: int, seed: int) -> dict[str, list[bytes]]:
    """{set name: n encoded files}; the radiograph-derived sets cycle through ``radiographs``."""
    sets = {}
    for k, (name, make) in enumerate(SYNTHETIC.items()):
        rng = np.random.default_rng([seed, k])
        sets[name] = [make(rng) for _ in range(n)]
    for k, (name, derive) in enumerate(FROM_RADIOGRAPHS.items()):
        rng = np.random.default_rng([seed, 100 + k])
        sets[name] = [derive(radiographs[i % len(radiographs)], rng) for i in range(n)]
    return sets
