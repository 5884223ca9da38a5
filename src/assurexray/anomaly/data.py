"""Autoencoder inputs: single-channel [0, 1] tensors from the decoded cache.

The autoencoders learn what normal looks like, so their training and early-stopping sets hold
normal images only: ``NormalImages`` refuses any other label, which makes a leak of a tumour
image into training an error rather than a silently weaker model.
"""
from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from assurexray.data.datasets import CachedDataset
from assurexray.errors import AssureXRayError

NORMAL = "Normal"


class AbnormalImageError(AssureXRayError, ValueError):
    """A non-normal image was about to reach an autoencoder's training data."""


def not_applicable_reason(classes: Sequence[str]) -> str | None:
    """Why anomaly detection cannot apply to a labelled set with these classes (None when it
    can): every detector learns what normal looks like from the 'Normal' images alone. The
    anomaly stages write this reason (``evaluation.applicability``) instead of failing."""
    if any(c.lower() == NORMAL.lower() for c in classes):
        return None
    return (f"the labelled set has no '{NORMAL}' class (classes {list(classes)}), and anomaly "
            "detection learns what normal looks like from normal images only")


def normal_index(classes: Sequence[str]) -> int:
    """Position of the 'Normal' class (any case); the anomaly stages need one."""
    reason = not_applicable_reason(classes)
    if reason:
        raise AssureXRayError(f"anomaly detection does not apply: {reason}")
    return next(i for i, c in enumerate(classes) if c.lower() == NORMAL.lower())


def ae_transform(image_size: int, train: bool) -> A.Compose:
    """Resize (area averaging, as the classifier) to [0, 1] float; mild augmentation in training
    (left/right flips and small shifts keep a radiograph normal)."""
    steps = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if train:
        steps += [A.HorizontalFlip(p=0.5),
                  A.Affine(translate_percent=(-0.03, 0.03), rotate=(-5, 5),
                           border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5)]
    return A.Compose(steps + [A.ToFloat(max_value=255.0), ToTensorV2()])


def coarse_noise(shape: tuple[int, int], cells: int, std: float,
                 rng: np.random.Generator) -> torch.Tensor:
    """(1, H, W) Gaussian noise drawn on a cells x cells grid and upsampled bilinearly: blotches
    the size of a lesion, which a denoising autoencoder must learn to remove (Kascenas et al.)."""
    grid = torch.from_numpy(rng.normal(0.0, std, (1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(grid, size=shape, mode="bilinear", align_corners=False)[0]


class NormalImages(Dataset):
    """(input, target) pairs of normal images: the target is the clean image, the input is it
    plus coarse noise when ``noise_std`` > 0 (denoising autoencoder), else the same image."""

    def __init__(self, cache, image_ids: Sequence[str], labels: np.ndarray,
                 classes: Sequence[str], transform, noise_std: float = 0.0, noise_cells: int = 8):
        normal = normal_index(classes)
        leaked = [i for i, label in zip(image_ids, labels) if int(label) != normal]
        if leaked:
            raise AbnormalImageError(
                f"{len(leaked)} non-normal image(s) were passed to an autoencoder's training "
                f"data, e.g. {leaked[:3]}; only '{classes[normal]}' images may train it")
        self.base = CachedDataset(cache, image_ids, labels, transform)
        self.noise_std, self.noise_cells = noise_std, noise_cells
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean, _ = self.base[index]
        if self.noise_std <= 0:
            return clean, clean
        h, w = clean.shape[-2:]
        return clean + coarse_noise((h, w), self.noise_cells, self.noise_std,
                                    self.rng), clean

    def reseed(self, seed: int) -> None:
        self.base.reseed(seed)
        self.rng = np.random.default_rng(seed)


def normal_subset(image_ids: Sequence[str], labels: np.ndarray,
                  normal: int) -> tuple[list[str], np.ndarray]:
    """The normal images of a split (ids, labels)."""
    keep = np.asarray(labels) == normal
    return [i for i, k in zip(image_ids, keep) if k], np.asarray(labels)[keep]


def input_tensors(cache, image_ids: Sequence[str], image_size: int) -> torch.Tensor:
    """(N, 1, S, S) evaluation inputs of cached images."""
    dataset = CachedDataset(cache, image_ids, None, ae_transform(image_size, train=False))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])

