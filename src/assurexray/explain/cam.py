"""Class activation maps and their faithfulness, through pytorch-grad-cam.

Every CAM object is used as a context manager so its forward hooks on the target layer are
removed when the block ends, even on error; the model's mode is restored and the parameter
gradients the CAM left behind are dropped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch.utils.data import DataLoader, Dataset

from assurexray.console import progress
from assurexray.data.datasets import CachedDataset
from assurexray.training.models import cam_reshape_transform, cam_target_layer

# The CAM method registry (params.explain.method, `assurexray predict --cam-method`): name ->
# pytorch-grad-cam class. EigenCAM (first principal component of the activations) ignores the
# target class.
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM,
           "eigencam": EigenCAM}

def compute_cams(model: torch.nn.Module, inputs: torch.Tensor, target_classes: Sequence[int],
                 method: str = "gradcam") -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1] at the model input resolution, one per input.

    Each map is for its ``target_classes`` entry (the class logit is the target).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
    targets = [ClassifierOutputTarget(int(c)) for c in target_classes]
    device = next(model.parameters()).device
    was_training = model.training          # the CAM switches the model to eval mode
    maps = None
    try:
        with METHODS[method](model=model, target_layers=[cam_target_layer(model)],
                             reshape_transform=cam_reshape_transform(model)) as cam:
            maps = cam(input_tensor=inputs.to(device), targets=targets)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if maps is None:  # pytorch-grad-cam's __exit__ prints and swallows an IndexError
        raise IndexError(f"CAM failed for target classes {list(map(int, target_classes))}: "
                         "a class index outside the model's outputs?")
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def batches(dataset: Dataset, batch_size: int,
            desc: str = "cam") -> Iterator[tuple[slice, torch.Tensor]]:
    """(positions in ``dataset``, input batch) in order; ``dataset`` yields (image, label)
    pairs such as ``datasets.CachedDataset`` with ``transforms.eval_transform``."""
    start = 0
    for images, _ in progress(DataLoader(dataset, batch_size=batch_size, shuffle=False),
                          desc=desc, unit="batch"):
        yield slice(start, start + len(images)), images
        start += len(images)


def cams_for_dataset(model: torch.nn.Module, dataset: Dataset, target_classes: np.ndarray,
                     method: str, batch_size: int) -> np.ndarray:
    """(N, H, W) CAMs of every dataset item for its ``target_classes`` entry."""
    return np.concatenate([compute_cams(model, images, target_classes[part], method)
                           for part, images in batches(dataset, batch_size)])


def true_and_predicted_cams(model: torch.nn.Module, cache, image_ids: np.ndarray,
                            y_true: np.ndarray, y_pred: np.ndarray, transform, method: str,
                            batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of cached images for their true and for their predicted class; the second pass
    runs only on the misclassified images (the maps are equal elsewhere)."""
    cams_true = cams_for_dataset(model, CachedDataset(cache, image_ids, y_true, transform),
                                 y_true, method, batch_size)
    cams_pred = cams_true.copy()
    wrong = np.flatnonzero(y_pred != y_true)
    if wrong.size:
        cams_pred[wrong] = cams_for_dataset(
            model, CachedDataset(cache, image_ids[wrong], y_pred[wrong], transform),
            y_pred[wrong], method, batch_size)
    return cams_true, cams_pred


def road_scores(model: torch.nn.Module, dataset: Dataset, cams: np.ndarray,
                target_classes: np.ndarray, percentiles: Sequence[int], batch_size: int,
                seed: int) -> dict[str, np.ndarray]:
    """ROAD (Rong et al. 2022) confidence changes, {"morf": (P, N), "lerf": (P, N)}.

    At percentile p the (100 - p)% most relevant (MoRF) or least relevant (LeRF) pixels are
    imputed by noisy linear interpolation; the value is the softmax probability of the target
    class after minus before. A faithful map gives a large drop for MoRF and a small one for
    LeRF. CAM ties (e.g. the zero floor after the ReLU) are broken at random with ``seed`` so
    each percentile removes exactly its share of pixels; the imputation noise is seeded too.
    """
    rng = np.random.default_rng(seed)
    ranked = np.stack([tie_broken_ranks(c, rng) for c in cams])
    out = {"morf": [], "lerf": []}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part, batch in batches(dataset, batch_size, desc="road"):
            targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in target_classes[part]]
            batch = batch.to(device)
            with torch.inference_mode():  # the baseline once, not once per percentile
                before = np.float32([t(o).item() for t, o in zip(targets, model(batch))])
            for key, metric in (("morf", ROADMostRelevantFirst), ("lerf", ROADLeastRelevantFirst)):
                out[key].append([metric(p)(batch, ranked[part], targets, model,
                                           return_diff=False) - before for p in percentiles])
    return {k: np.concatenate(v, axis=1) for k, v in out.items()}


def road_subset(n: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of ``max_images`` of ``n`` (0 = all of them).

    ROAD costs two imputations and two forwards per percentile and image, so it runs on a
    fixed-size sample while the localization scores cover every image.
    """
    if max_images <= 0 or max_images >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))


def road_summary(road: dict[str, np.ndarray], percentiles: Sequence[int]) -> dict:
    """Mean confidence change per percentile, and ROAD's combined score: the mean over
    percentiles of (LeRF - MoRF) / 2 (higher = more faithful; 0 = no better than chance)."""
    return {
        "n": int(road["morf"].shape[1]),
        "percentiles": [int(p) for p in percentiles],
        "morf": {str(p): float(v) for p, v in zip(percentiles, road["morf"].mean(axis=1))},
        "lerf": {str(p): float(v) for p, v in zip(percentiles, road["lerf"].mean(axis=1))},
        "combined": float(((road["lerf"] - road["morf"]) / 2).mean()),
    }


def tie_broken_ranks(cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The map's pixel ranks scaled to [0, 1], equal values ordered at random."""
    order = np.lexsort((rng.random(cam.size), cam.ravel()))
    ranks = np.empty(cam.size, dtype=np.float32)
    ranks[order] = np.arange(cam.size, dtype=np.float32) / max(cam.size - 1, 1)
    return ranks.reshape(cam.shape)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """RGB uint8 heat-map overlay of a (h, w) map on an (H, W) uint8 radiograph."""
    if cam.shape != image.shape:
        cam = cv2.resize(cam, image.shape[::-1], interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)
