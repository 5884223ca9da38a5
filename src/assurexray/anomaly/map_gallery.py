"""The anomaly gallery: input | reconstruction | error map | annotation, per chosen test image
(a feature detector has no reconstruction: input | anomaly map | annotation).

Chosen per kind, from the primary score: the highest-scoring tumours (found), the
highest-scoring normals (false alarms) and the lowest-scoring tumours (missed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.explain.cam import overlay

KINDS = {"found": "highest-scoring tumour", "false_alarm": "highest-scoring normal",
         "missed": "lowest-scoring tumour"}


def select_cases(test: pd.DataFrame, normal: str, score: str, per_kind: int) -> list[tuple]:
    """(kind, rank, row position) triples; ties broken by image id for reproducibility."""
    tumour = (test["label"] != normal).to_numpy()
    order = np.lexsort((test["image_id"].to_numpy(), -test[score].to_numpy(float)))
    picks = {"found": [i for i in order if tumour[i]],
             "false_alarm": [i for i in order if not tumour[i]],
             "missed": [i for i in order[::-1] if tumour[i]]}
    return [(kind, rank, int(i)) for kind, rows in picks.items()
            for rank, i in enumerate(rows[:per_kind], start=1)]


def render(path: Path, image: np.ndarray, recon: np.ndarray | None, amap: np.ndarray,
           lesions: list[dict], title: str) -> None:
    """One row of panels; ``image``, ``recon``, ``amap`` and ``lesions`` share one frame."""
    panels = 3 if recon is None else 4
    fig = Figure(figsize=(2.6 * panels, 3.2), dpi=100)
    axes = list(fig.subplots(1, panels))
    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("input")
    if recon is not None:
        axes[1].imshow(recon, cmap="gray", vmin=0, vmax=1)
        axes[1].set_title("reconstruction")
    peak = float(amap.max())
    axes[-2].imshow(overlay(gray, amap / peak if peak > 0 else amap))
    axes[-2].set_title("error map (per-image scale)" if recon is not None
                       else "anomaly map (per-image scale)")
    axes[-1].imshow(gray, cmap="gray", vmin=0, vmax=255)
    axes[-1].set_title("annotation" if lesions else "no lesion annotation")
    for les in lesions:
        x0, y0, x1, y1 = les["box"]
        axes[-1].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                    color="lime", lw=1.2))
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{title}\n{NOT_FOR_CLINICAL_USE}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def write_gallery(out_dir: str | Path, test: pd.DataFrame, cases: list[tuple], inputs: np.ndarray,
                  recons: np.ndarray | None, maps: np.ndarray, lesions: list[list[dict]],
                  arch: str, score: str) -> list[Path]:
    """Render ``cases`` (rows of ``test`` and of the arrays) into ``out_dir`` (old PNGs removed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    paths = []
    for kind, rank, i in cases:
        row = test.iloc[i]
        path = out_dir / f"{kind}_{rank}.png"
        family = "detector" if recons is None else "autoencoder"
        render(path, inputs[i], None if recons is None else recons[i], maps[i], lesions[i],
               f"{arch} {family} | {KINDS[kind]} #{rank} | {row['image_id']} | true: "
               f"{row['label']} | {score} score {row[score]:.4g}")
        paths.append(path)
    return paths
