"""Reconstruction, per-image anomaly scores and anomaly maps.

Inputs and reconstructions are (N, 1, S, S) in [0, 1]. Per image:

- ``mse``: mean squared reconstruction error;
- ``ssim``: 1 - mean SSIM between input and reconstruction (structure, not intensity);
- ``topk``: mean of the top ``topk_percent`` % pixel squared errors (a small lesion moves it
  where the whole-image mean would dilute it).

The anomaly map is the per-pixel squared error smoothed by a Gaussian of ``smoothing_sigma``
model pixels (single-pixel noise should not win the pointing game).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torchmetrics.functional.image import structural_similarity_index_measure

from assurexray.anomaly.checkpoint import AutoencoderMeta
from assurexray.anomaly.data import ae_transform

SCORES = ("mse", "ssim", "topk")


@dataclass(frozen=True)
class AnomalyResult:
    """Scores {name: (N,)}, maps (N, S, S), reconstructions (N, S, S; None for a feature
    detector)."""
    scores: dict[str, np.ndarray]
    maps: np.ndarray
    reconstructions: np.ndarray | None


@torch.inference_mode()
def reconstruct(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 1, S, S) reconstructions on the CPU, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def image_scores(inputs: torch.Tensor, recons: torch.Tensor, topk_percent: float,
                 ssim_window: int) -> dict[str, np.ndarray]:
    err = (inputs - recons).pow(2).flatten(1)
    k = max(1, int(round(err.shape[1] * topk_percent / 100)))
    ssim = structural_similarity_index_measure(recons, inputs, data_range=1.0,
                                               kernel_size=ssim_window, reduction="none")
    ssim_t = cast(torch.Tensor, ssim)  # reduction="none": one value per image
    return {"mse": err.mean(1).numpy(), "ssim": (1 - ssim_t).numpy(),
            "topk": err.topk(k, dim=1).values.mean(1).numpy()}


def anomaly_maps(inputs: torch.Tensor, recons: torch.Tensor, sigma: float) -> np.ndarray:
    """(N, S, S) smoothed squared error."""
    err = (inputs - recons).pow(2)[:, 0].numpy()
    return gaussian_filter(err, sigma=(0, sigma, sigma)) if sigma > 0 else err


def score_inputs(model: torch.nn.Module, inputs: torch.Tensor, score: dict, batch_size: int,
                 device: torch.device | str = "cpu") -> AnomalyResult:
    """Scores and maps of (N, 1, S, S) inputs; ``score`` is the checkpoint's score settings."""
    recons = reconstruct(model, inputs, batch_size, device)
    return AnomalyResult(image_scores(inputs, recons, score["topk_percent"], score["ssim_window"]),
                         anomaly_maps(inputs, recons, score["smoothing_sigma"]),
                         recons[:, 0].numpy())


def score_letterboxed(model: torch.nn.Module, meta: AutoencoderMeta, images: list[np.ndarray],
                      batch_size: int, device: torch.device | str = "cpu") -> AnomalyResult:
    """Scores and maps (model frame) of letterboxed uint8 images, e.g. ``predict``'s batch.

    A letterboxed square resized is the letterbox at the new size, so images boxed at another
    cache size than the autoencoder's need nothing more than the transform's resize.
    """
    transform = ae_transform(meta.image_size, train=False)
    inputs = torch.stack([transform(image=np.ascontiguousarray(im))["image"] for im in images])
    return score_inputs(model, inputs, meta.score, batch_size, device)
