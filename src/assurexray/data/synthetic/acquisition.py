"""Per-center acquisition style: canvas size, display (exposure, noise, blur) and burned-in marks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


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




def canvas_size(style: CenterStyle, scene: str, min_side: int, max_side: int, rng) -> tuple[int, int]:
    lo, hi = (min_side + f * (max_side - min_side) for f in style.side)
    long_side = int(round(rng.uniform(lo, hi)))
    short_side = max(min_side, int(round(long_side * rng.uniform(0.6, 1.0))))
    landscape = rng.uniform() < (0.75 if scene == "hip" else 0.25)
    return (short_side, long_side) if landscape else (long_side, short_side)


def display(bone, soft, unit: float, style: CenterStyle, rng) -> np.ndarray:
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


def burn_in(image: np.ndarray, style: CenterStyle, rng, boxes: list, letter: str) -> None:
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
