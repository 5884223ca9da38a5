"""Image transforms from cached (S, S) uint8 letterboxed radiographs to normalized tensors.

Grayscale is replicated to 3 channels and normalized with the ImageNet statistics so that
ImageNet-pretrained backbones apply unchanged; the statistics are recorded in the checkpoint.
Augmentations stay anatomically plausible for radiographs: small rotations and shifts,
exposure changes and left/right flips (limbs come in both sides), never vertical flips.
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from assurexray.params import TrainParams

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(train_params: TrainParams, image_size: int,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> A.Compose:
    """Random radiograph augmentation, then the same tail as ``eval_transform``."""
    # Resizing first keeps every later operation at training resolution (the cheap path).
    steps = [_resize(image_size)]
    if train_params.clahe:
        steps.append(A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=0.5))
    steps += [
        A.Affine(rotate=(-10, 10), translate_percent=(-0.05, 0.05), scale=(0.9, 1.1),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HorizontalFlip(p=0.5),
    ]
    return A.Compose(steps + _to_tensor(mean, std))


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> A.Compose:
    """Deterministic resize and normalization (evaluation, explanation, prediction)."""
    return A.Compose([_resize(image_size)] + _to_tensor(mean, std))


def reseed(transform: A.Compose, seed: int) -> None:
    """Seed a Compose with ONE shared generator pair.

    ``Compose.set_random_seed`` gives every child its own generator with the same seed, so
    their draws are correlated (e.g. every flip would coincide with an affine); sharing one
    stream keeps the children independent and the whole sequence reproducible.
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _resize(image_size: int) -> A.Resize:
    # INTER_AREA: the cache is larger than the training size, and area averaging avoids aliasing.
    return A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)


def _to_tensor(mean, std) -> list:
    return [A.ToRGB(num_output_channels=3), A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            ToTensorV2()]
