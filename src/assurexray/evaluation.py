"""Batched inference, the predictions table, and the evaluate stage's plot data.

``predict_logits`` is the one inference loop of the project (evaluate, explain, robustness
and predict all call it), so every consumer sees the same eval-mode, no-grad numbers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from assurexray.cache import ImageCache
from assurexray.checkpoint import load_checkpoint
from assurexray.datasets import CachedDataset
from assurexray.metrics import classification_metrics
from assurexray.models import default_device
from assurexray.predictions import SplitPredictions, write_json
from assurexray.transforms import eval_transform

log = logging.getLogger(__name__)


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
            for batch in tqdm(loader, desc="predict", unit="batch", leave=False):
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                chunks.append(model(images.to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("predict_logits: the dataset is empty")
    return np.concatenate(chunks)


def check_cache_size(meta: dict, cache, cache_dir) -> None:
    """The model must see images letterboxed at the size it was trained on."""
    if cache.size != meta["cache_size"]:
        raise ValueError(f"{cache_dir}: cache images are {cache.size} px but the model was trained "
                         f"on a {meta['cache_size']} px cache; rerun the train stage")


def load_for_inference(model_path: str | Path, cache_dir: str | Path):
    """(model, meta, cache, eval transform, device): a checkpoint ready to score its cache,
    with the preprocessing read from the checkpoint, never re-typed."""
    device = default_device()
    model, meta = load_checkpoint(model_path, device)
    cache = ImageCache(cache_dir)
    check_cache_size(meta, cache, cache_dir)
    return model, meta, cache, eval_transform(meta["image_size"], meta["mean"], meta["std"]), device


def predict_images(model: torch.nn.Module, cache, image_ids, labels: np.ndarray,
                   classes: list[str], transform, batch_size: int,
                   device: torch.device | str) -> SplitPredictions:
    """Logits for ``image_ids`` read from ``cache`` (anything CachedDataset accepts)."""
    dataset = CachedDataset(cache, image_ids, labels, transform)
    logits = predict_logits(model, dataset, batch_size, device)
    return SplitPredictions(np.asarray(image_ids), list(classes), np.asarray(labels), logits)


def evaluation_metrics(partitions: dict[str, SplitPredictions]) -> dict:
    """{partition: classification_metrics} (same keys for every split strategy)."""
    out = {}
    for name, preds in partitions.items():
        out[name] = classification_metrics(preds.y_true, preds.probs(), preds.classes)
        for note in out[name]["notes"]:
            log.warning("%s: %s", name, note)
    return out


def write_plots(preds: SplitPredictions, metrics: dict, out_dir: str | Path) -> None:
    """DVC plot data (roc.json, pr.json, confusion.json) and PNGs (roc.png, confusion.png)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    roc, pr = curve_rows(preds.y_true, preds.probs(), preds.classes)
    write_json(out_dir / "roc.json", roc)
    write_json(out_dir / "pr.json", pr)
    write_json(out_dir / "confusion.json",
               confusion_rows(preds.y_true, preds.y_pred, preds.classes))
    aucs = {c: m["auc"] for c, m in metrics["per_class"].items()}
    plot_roc(roc, aucs, out_dir / "roc.png")
    plot_confusion(metrics["confusion_matrix"], preds.classes, out_dir / "confusion.png")


def _thin(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices of 0..n-1, both ends kept."""
    return np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))


def curve_rows(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
               max_points: int = 300) -> tuple[list[dict], list[dict]]:
    """One-vs-rest ROC rows {class, fpr, tpr} and PR rows {class, recall, precision}.

    A class absent from ``y_true`` has no curve and is logged.
    """
    roc, pr = [], []
    for i, c in enumerate(classes):
        positive = y_true == i
        if positive.all() or not positive.any():
            log.warning("class %r: no ROC/PR curve (it has no positive or no negative image)", c)
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, i])
        keep = _thin(len(fpr), max_points)
        roc += [{"class": c, "fpr": float(f), "tpr": float(t)}
                for f, t in zip(fpr[keep], tpr[keep])]
        precision, recall, _ = precision_recall_curve(positive, probs[:, i])
        keep = _thin(len(recall), max_points)
        pr += [{"class": c, "recall": float(r), "precision": float(p)}
               for r, p in zip(recall[keep], precision[keep])]
    return roc, pr


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One {actual, predicted} row per image, for DVC's confusion template."""
    return [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y_true, y_pred)]


def plot_roc(roc: list[dict], aucs: dict[str, float], path: str | Path) -> None:
    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.subplots()
    frame = pd.DataFrame(roc, columns=["class", "fpr", "tpr"])
    for c, rows in frame.groupby("class", sort=False):
        ax.plot(rows["fpr"], rows["tpr"], label=f"{c} (AUC {aucs[c]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1),
           title="One-vs-rest ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path) -> None:
    matrix = np.asarray(matrix)
    fig = Figure(figsize=(4.5, 4), dpi=120)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes,
           xlabel="Predicted", ylabel="Actual", title="Confusion matrix (test)")
    for (r, c), count in np.ndenumerate(matrix):
        ax.text(c, r, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
