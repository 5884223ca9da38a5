"""Batched inference: load a checkpoint for a cache, predict logits, build the predictions table.

``predict_logits`` is the one inference loop of the project (evaluate, explain, robustness
and predict all call it), so every consumer sees the same eval-mode, no-grad numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from assurexray.console import progress
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import CachedDataset
from assurexray.data.transforms import eval_transform
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint
from assurexray.training.models import default_device


def predict_logits(model: torch.nn.Module, data: Dataset | DataLoader, batch_size: int,
                   device: torch.device | str) -> np.ndarray:
    """(N, K) float32 logits in dataset order; the model's train/eval mode is restored after.

    ``data`` yields images or (image, label, ...) tuples; a Dataset is batched here without
    shuffling or worker processes, so the order (and any seeded corruption) is reproducible.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for batch in progress(loader, desc="predict", unit="batch", leave=False):
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                layout = torch.channels_last if images.dim() == 4 else torch.preserve_format
                inputs = images.to(device, memory_format=layout)
                chunks.append(model(inputs).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("predict_logits: the dataset is empty")
    return np.concatenate(chunks)


def check_cache_size(meta: CheckpointMeta, cache, cache_dir) -> None:
    """The model must see images letterboxed at the size it was trained on."""
    if cache.size != meta.cache_size:
        raise ValueError(f"{cache_dir}: cache images are {cache.size} px but the model was trained "
                         f"on a {meta.cache_size} px cache; rerun the train stage")


def load_for_inference(model_path: str | Path, cache_dir: str | Path):
    """(model, meta, cache, eval transform, device): a checkpoint ready to score its cache,
    with the preprocessing read from the checkpoint, never re-typed."""
    device = default_device()
    model, meta = load_checkpoint(model_path, device)
    cache = ImageCache(cache_dir)
    check_cache_size(meta, cache, cache_dir)
    return model, meta, cache, eval_transform(meta.image_size, meta.mean, meta.std), device


def predict_images(model: torch.nn.Module, cache, image_ids, labels: np.ndarray,
                   classes: list[str], transform, batch_size: int,
                   device: torch.device | str) -> SplitPredictions:
    """Logits for ``image_ids`` read from ``cache`` (anything CachedDataset accepts)."""
    dataset = CachedDataset(cache, image_ids, labels, transform)
    logits = predict_logits(model, dataset, batch_size, device)
    return SplitPredictions(np.asarray(image_ids), list(classes), np.asarray(labels), logits)
