"""Robustness to acquisition degradations: corrupt the test images, re-evaluate, compare.

Each corruption is an albumentations transform with fixed parameters (ranges collapsed to a
single value, p=1). Severity s of n moves the parameter a fraction s/n of the way from the
identity to the extreme value below, so severities=1 is the extreme level and a larger n adds
milder steps. Corruptions hit only the image content, never the letterbox padding: the
degradation happens at acquisition, before the image is letterboxed. They are applied to the
cached uint8 image before the eval transform, with a seeded generator, in a fixed image order.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from assurexray.console import progress
from assurexray.data.cache import content_boxes
from assurexray.evaluation.metrics import classification_metrics
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.inference.runner import predict_images

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("macro_auc", "accuracy", "balanced_accuracy")


def _brightness_contrast(f: float) -> tuple[A.BasicTransform, dict]:
    # Over-exposure: brighter and flatter.
    b, c = 0.25 * f, -0.5 * f
    return A.RandomBrightnessContrast(brightness_limit=(b, b), contrast_limit=(c, c), p=1), \
        {"brightness": b, "contrast": c}


def _gamma(f: float) -> tuple[A.BasicTransform, dict]:
    g = 1.0 + 1.0 * f
    return A.RandomGamma(gamma_limit=(100 * g, 100 * g), p=1), {"gamma": g}


def _gaussian_blur(f: float) -> tuple[A.BasicTransform, dict]:
    sigma = 3.0 * f  # cache pixels
    return A.GaussianBlur(blur_limit=0, sigma_limit=(sigma, sigma), p=1), {"sigma": sigma}


def _gaussian_noise(f: float) -> tuple[A.BasicTransform, dict]:
    # Added in float [0, 1] and only then quantized, so small noise is not rounded away.
    std = 0.12 * f
    return A.Compose([A.ToFloat(max_value=255), A.GaussNoise(std_range=(std, std), p=1),
                      A.FromFloat(dtype="uint8", max_value=255)]), {"std": std}


def _downscale(f: float) -> tuple[A.BasicTransform, dict]:
    scale = 1.0 - 0.75 * f
    return A.Downscale(scale_range=(scale, scale), p=1, interpolation_pair={
        "downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}), {"scale": scale}


def _jpeg(f: float) -> tuple[A.BasicTransform, dict]:
    quality = int(round(100 - 90 * f))
    return A.ImageCompression(compression_type="jpeg", quality_range=(quality, quality), p=1), \
        {"quality": quality}


CORRUPTIONS: dict[str, Callable[[float], tuple[A.BasicTransform, dict]]] = {
    "brightness_contrast": _brightness_contrast,
    "gamma": _gamma,
    "gaussian_blur": _gaussian_blur,
    "gaussian_noise": _gaussian_noise,
    "downscale": _downscale,
    "jpeg": _jpeg,
}


def corruption(name: str, severity: int, severities: int, seed: int) -> tuple[A.Compose, dict]:
    """The seeded transform for ``name`` at ``severity`` (1..severities) and its settings."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    if not 1 <= severity <= severities:
        raise ValueError(f"severity must lie in 1..{severities}, got {severity}")
    transform, settings = CORRUPTIONS[name](severity / severities)
    return A.Compose([transform], seed=seed), {k: round(v, 4) for k, v in settings.items()}


def corrupt_images(images: np.ndarray, boxes: np.ndarray, transform: A.Compose) -> np.ndarray:
    """A corrupted copy of (n, S, S) uint8 ``images``, each only inside its content box."""
    out = np.array(images, dtype=np.uint8, copy=True)
    for image, (x0, y0, x1, y1) in zip(out, boxes):
        image[y0:y1, x0:x1] = transform(image=np.ascontiguousarray(image[y0:y1, x0:x1]))["image"]
    return out


class ArrayCache:
    """An in-memory stand-in for cache.ImageCache (``.images``, ``.row_of``) over given ids."""

    def __init__(self, images: np.ndarray, image_ids):
        self.images = images
        self._rows = {image_id: i for i, image_id in enumerate(image_ids)}

    def row_of(self, image_id: str) -> int:
        return self._rows[image_id]


def summary(preds: SplitPredictions) -> dict[str, float]:
    m = classification_metrics(preds.y_true, preds.probs(), preds.classes)
    return {k: m[k] for k in SUMMARY_METRICS}


def evaluate_robustness(model: torch.nn.Module, cache, image_ids, labels: np.ndarray,
                        classes: list[str], transform, severities: int, batch_size: int,
                        device: torch.device | str, seed: int) -> dict:
    """Clean and corrupted summary metrics with their drops (clean - corrupted; > 0 is worse).

    Returns {n, severities, clean, corruptions: {name: {"<s>": {metrics, <metric>_drop,
    settings}}}, worst_macro_auc_drop, worst_corruption}.
    """
    rows = np.array([cache.row_of(i) for i in image_ids])
    images = np.asarray(cache.images[rows])
    boxes = content_boxes(cache.meta.set_index("row").loc[rows])
    clean = summary(predict_images(model, ArrayCache(images, image_ids), image_ids, labels,
                                   classes, transform, batch_size, device))
    results = {}
    passes = [(name, s) for name in CORRUPTIONS for s in range(1, severities + 1)]
    for name, s in progress(passes, desc="robustness", unit="pass"):
        corrupt, settings = corruption(name, s, severities, seed)
        corrupted = ArrayCache(corrupt_images(images, boxes, corrupt), image_ids)
        m = summary(predict_images(model, corrupted, image_ids, labels, classes, transform,
                                   batch_size, device))
        drops = {f"{k}_drop": clean[k] - m[k] for k in SUMMARY_METRICS}
        results.setdefault(name, {})[str(s)] = {**m, **drops, "settings": settings}
        log.info("%s severity %d %s: macro AUC %.3f (drop %.3f)", name, s, settings,
                 m["macro_auc"], drops["macro_auc_drop"])
    worst_drop, worst_name, worst_s = max(
        ((results[n][str(k)]["macro_auc_drop"], n, k) for n, k in passes),
        key=lambda t: -np.inf if np.isnan(t[0]) else t[0])
    return {"n": len(image_ids), "severities": severities, "clean": clean, "corruptions": results,
            "worst_macro_auc_drop": worst_drop, "worst_corruption": f"{worst_name}@{worst_s}"}


def drop_rows(report: dict) -> list[dict]:
    """Rows {pass: "<corruption>@<severity>", corruption, severity, macro_auc_drop,
    accuracy_drop} for a DVC plot (``pass`` labels the bars of a bar template)."""
    return [{"pass": f"{name}@{s}", "corruption": name, "severity": int(s),
             "macro_auc_drop": r["macro_auc_drop"],
             "accuracy_drop": r["accuracy_drop"]}
            for name, levels in report["corruptions"].items() for s, r in levels.items()]


def plot_robustness(report: dict, path) -> None:
    """Macro AUC per corruption against severity, with the clean level as a reference."""
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.subplots()
    for name, levels in report["corruptions"].items():
        severities = [0] + [int(s) for s in levels]
        aucs = [report["clean"]["macro_auc"]] + [r["macro_auc"] for r in levels.values()]
        ax.plot(severities, aucs, marker="o", label=name)
    ax.set(xlabel="Severity (0 = clean)", ylabel="Macro AUC (test)",
           xticks=range(report["severities"] + 1), title="Robustness to acquisition degradations")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
