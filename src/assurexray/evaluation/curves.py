"""The evaluate stage's metrics per partition and its plot data (ROC, PR, confusion)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from assurexray.evaluation.metrics import classification_metrics
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.jsonio import write_json

log = logging.getLogger(__name__)


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
    counts = np.asarray(matrix)
    fig = Figure(figsize=(4.5, 4), dpi=120)
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = np.arange(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes,
           xlabel="Predicted", ylabel="Actual", title="Confusion matrix (test)")
    for (r, c), count in np.ndenumerate(counts):
        ax.text(c, r, str(count), ha="center", va="center",
                color="white" if count > counts.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
