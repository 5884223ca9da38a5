"""Class activation maps and their faithfulness, through pytorch-grad-cam.

Every CAM object is used as a context manager so its forward hooks on the target layer are
removed when the block ends, even on error; the model's mode is restored and the parameter
gradients the CAM left behind are dropped.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from torch.utils.data import DataLoader, Dataset

from assurexray.console import progress
from assurexray.data.datasets import CachedDataset
from assurexray.evaluation.bootstrap import BOOTSTRAP, GroupedResampling
from assurexray.training.models import cam_reshape_transform, cam_target_layer

# The CAM method registry (params.explain.method, `assurexray predict --cam-method`): name ->
# pytorch-grad-cam class. EigenCAM (first principal component of the activations) ignores the
# target class.
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM,
           "eigencam": EigenCAM}

def compute_cams(model: torch.nn.Module, inputs: torch.Tensor,
                 target_classes: Sequence[int] | np.ndarray, method: str = "gradcam",
                 layer: str | None = None) -> np.ndarray:
    """(N, H, W) float32 maps in [0, 1] at the model input resolution, one per input.

    Each map is for its ``target_classes`` entry (the class logit is the target). ``layer``:
    the dotted name of the target layer (None: the family's, ``cam_target_layer``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
    targets = [ClassifierOutputTarget(int(c)) for c in target_classes]
    target_layer = cam_target_layer(model) if layer is None else model.get_submodule(layer)
    device = next(model.parameters()).device
    was_training = model.training          # the CAM switches the model to eval mode
    maps = None
    try:
        with METHODS[method](model=model, target_layers=[target_layer],
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
                     method: str, batch_size: int, layer: str | None = None) -> np.ndarray:
    """(N, H, W) CAMs of every dataset item for its ``target_classes`` entry."""
    return np.concatenate([compute_cams(model, images, target_classes[part], method, layer)
                           for part, images in batches(dataset, batch_size)])


def true_and_predicted_cams(model: torch.nn.Module, cache, image_ids: np.ndarray,
                            y_true: np.ndarray, y_pred: np.ndarray, transform, method: str,
                            batch_size: int, layer: str | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of cached images for their true and for their predicted class; the second pass
    runs only on the misclassified images (the maps are equal elsewhere)."""
    cams_true = cams_for_dataset(model, CachedDataset(cache, image_ids, y_true, transform),
                                 y_true, method, batch_size, layer)
    cams_pred = cams_true.copy()
    wrong = np.flatnonzero(y_pred != y_true)
    if wrong.size:
        cams_pred[wrong] = cams_for_dataset(
            model, CachedDataset(cache, image_ids[wrong], y_pred[wrong], transform),
            y_pred[wrong], method, batch_size, layer)
    return cams_true, cams_pred


def road_scores(model: torch.nn.Module, dataset: Dataset, cams: np.ndarray,
                content_boxes: Sequence[Sequence[float]], target_classes: np.ndarray,
                percentiles: Sequence[int], batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """ROAD (Rong et al. 2022) confidence changes, {"morf": (P, N), "lerf": (P, N)}.

    At percentile p the (100 - p)% most relevant (MoRF) or least relevant (LeRF) content pixels
    are imputed by pytorch-grad-cam's noisy linear imputer; the value is the softmax
    probability of the target class after minus before. A faithful map gives a large drop for
    MoRF and a small one for LeRF. Only the pixels inside each image's letterbox content box
    (``content_boxes``, model-input frame) are ranked and imputed, on the content crop alone:
    the zero padding holds no evidence, and ranking it would let LeRF "remove" padding for free
    and let interpolation pull black into the image. CAM ties (e.g. the zero floor after the
    ReLU) are broken at random with ``seed`` so each percentile removes exactly its share of
    pixels; the imputation noise is seeded too.
    """
    rng = np.random.default_rng(seed)
    crops = [content_crop(box, cam.shape) for box, cam in zip(content_boxes, cams)]
    ranks = [tie_broken_ranks(cam[crop], rng) for cam, crop in zip(cams, crops)]
    out: dict[str, list[list[np.ndarray]]] = {"morf": [], "lerf": []}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part, batch in batches(dataset, batch_size, desc="road"):
            targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in target_classes[part]]
            before = _target_scores(model, batch.to(device), targets)  # once, not per percentile
            for key, most_relevant_first in (("morf", True), ("lerf", False)):
                out[key].append([_target_scores(model, road_inputs(
                    batch, ranks[part], crops[part], p, most_relevant_first).to(device), targets)
                    - before for p in percentiles])
    return {k: np.concatenate(v, axis=1) for k, v in out.items()}


def content_crop(box: Sequence[float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, cols) of the pixels whose centre lies in ``box`` (as ``localization.box_mask``)."""
    x0, y0, x1, y1 = box
    return (slice(max(0, math.ceil(y0 - 0.5)), min(shape[0], math.ceil(y1 - 0.5))),
            slice(max(0, math.ceil(x0 - 0.5)), min(shape[1], math.ceil(x1 - 0.5))))


def road_inputs(batch: torch.Tensor, ranks: Sequence[np.ndarray],
                crops: Sequence[tuple[slice, slice]], percentile: int,
                most_relevant_first: bool) -> torch.Tensor:
    """A copy of (N, C, H, W) ``batch`` with each image's content crop ROAD-imputed: the pixels
    of ``ranks`` (crop-sized, in [0, 1]) outside the kept ``percentile`` are filled in, by
    pytorch-grad-cam's rule (keep rank < the percentile; for LeRF of 1 - rank)."""
    out = batch.detach().cpu().clone()
    imputer = NoisyLinearImputer()
    for image, rank, (rows, cols) in zip(out, ranks, crops):
        score = rank if most_relevant_first else 1.0 - rank
        keep = torch.from_numpy(np.float32(score < np.percentile(score, percentile)))
        image[:, rows, cols] = imputer(image[:, rows, cols].contiguous(), keep)
    return out


def _target_scores(model: torch.nn.Module, inputs: torch.Tensor, targets) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray([t(o).item() for t, o in zip(targets, model(inputs))], dtype=np.float32)


def seeded_subset(n: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset of ``max_images`` of ``n`` (0 = all of them).

    ROAD (two imputations and two forwards per percentile and image) and the layer selection
    (a CAM per candidate layer) run on a fixed-size sample.
    """
    if max_images <= 0 or max_images >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))


def road_summary(road: dict[str, np.ndarray], percentiles: Sequence[int],
                 resampling: GroupedResampling) -> dict:
    """Mean confidence change per percentile, and ROAD's combined score: the mean over images
    of each image's mean over percentiles of (LeRF - MoRF) / 2 (higher = more faithful; 0 = no
    better than chance), with a grouped bootstrap interval (``resampling``, aligned with the
    images: whole patient groups resampled, views of one patient not being independent; None
    below two groups)."""
    per_image = ((road["lerf"] - road["morf"]) / 2).mean(axis=0)
    interval = resampling.mean_interval(per_image)
    return {
        "n": int(road["morf"].shape[1]),
        "percentiles": [int(p) for p in percentiles],
        "morf": {str(p): float(v) for p, v in zip(percentiles, road["morf"].mean(axis=1))},
        "lerf": {str(p): float(v) for p, v in zip(percentiles, road["lerf"].mean(axis=1))},
        "n_groups": interval["n_groups"],
        "combined": float(per_image.mean()),
        "combined_ci_low": interval["ci_low"],
        "combined_ci_high": interval["ci_high"],
        "ci_level": resampling.ci_level,
        "ci_method": BOOTSTRAP,
        "pixels": "letterbox content only",
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
