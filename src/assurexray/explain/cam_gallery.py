"""The Grad-CAM gallery: deterministic case selection, triptych PNGs and the summary page.

For each class c the gallery shows up to k true positives (highest p(c) first), false
positives (predicted c, another truth; highest p(c) first) and false negatives (truth c,
missed; lowest p(c) first), ties broken by image id. Every panel of class c shows the CAM of
class c: what made a TP or FP call, where the model looked for a missed FN.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from assurexray.data.datasets import CachedDataset
from assurexray.evaluation.applicability import applies
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.explain.cam import cams_for_dataset, overlay

log = logging.getLogger(__name__)

KINDS = {"tp": "true positive", "fp": "false positive", "fn": "false negative"}


@dataclass(frozen=True)
class Case:
    """One gallery image: the CAM class, the kind of outcome, its rank within that kind."""
    class_name: str
    kind: str
    rank: int
    image_id: str
    true: str
    pred: str
    prob: float          # p(class_name)
    prob_pred: float     # p(pred)

    @property
    def file_name(self) -> str:
        return f"{_slug(self.class_name)}_{self.kind}_{self.rank}.png"


def select_cases(preds: SplitPredictions, per_class: int) -> list[Case]:
    """Up to ``per_class`` TP, FP and FN per class, in class then kind order (see module doc)."""
    probs = preds.probs()
    y_pred = preds.y_pred
    ids = np.asarray(preds.image_ids).astype(str)
    cases = []
    for c, name in enumerate(preds.classes):
        p = probs[:, c]
        kinds = {
            "tp": ((preds.y_true == c) & (y_pred == c), -p),
            "fp": ((preds.y_true != c) & (y_pred == c), -p),
            "fn": ((preds.y_true == c) & (y_pred != c), p),
        }
        for kind, (keep, key) in kinds.items():
            rows = np.flatnonzero(keep)
            rows = rows[np.lexsort((ids[rows], key[rows]))][:per_class]
            cases += [Case(name, kind, rank, ids[i], preds.classes[preds.y_true[i]],
                           preds.classes[y_pred[i]], float(p[i]), float(probs[i, y_pred[i]]))
                      for rank, i in enumerate(rows, start=1)]
    return cases


def render_triptych(path: str | Path, image: np.ndarray, cam: np.ndarray,
                    lesions: Sequence[dict], case: Case, method: str) -> None:
    """Radiograph | CAM overlay | annotation, captioned with truth, prediction, probability.

    ``image`` and ``lesions`` share the cache frame; ``cam`` is resized onto the image.
    """
    fig = Figure(figsize=(9.6, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("radiograph")
    axes[1].imshow(overlay(image, cam))
    empty = " (empty map)" if float(cam.max()) <= 0 else ""
    axes[1].set_title(f"{method}: class {case.class_name}{empty}")
    axes[2].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[2].set_title("annotation" if lesions else "no lesion annotation")
    for les in lesions:
        x0, y0, x1, y1 = les["box"]
        axes[2].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.2))
        if len(les["polygon"]) >= 3:
            axes[2].add_patch(Polygon(les["polygon"], closed=True, fill=False, color="red", lw=1.2))
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{case.image_id} | {KINDS[case.kind]} for {case.class_name} | true: {case.true}"
                 f" | pred: {case.pred} (p={case.prob_pred:.2f}) | p({case.class_name})="
                 f"{case.prob:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def write_gallery(model, cache, transform, cases: Sequence[Case], classes: Sequence[str],
                  out_dir: str | Path, method: str, batch_size: int,
                  layer: str | None = None) -> list[Path]:
    """Render every case into ``out_dir`` (PNGs of an earlier run are removed first), with the
    CAM of target ``layer`` (None: the family's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    if not cases:
        log.warning("no gallery cases: the predictions hold no TP, FP or FN")
        return []
    ids = [c.image_id for c in cases]
    targets = np.array([list(classes).index(c.class_name) for c in cases])
    cams = cams_for_dataset(model, CachedDataset(cache, ids, None, transform), targets, method,
                            batch_size, layer)
    paths = []
    for case, cam_map in zip(cases, cams):
        path = out_dir / case.file_name
        render_triptych(path, cache.image(case.image_id), cam_map, cache.lesions(case.image_id),
                        case, method)
        paths.append(path)
    return paths


def summary_context(metrics: dict, cases: Sequence[Case], gallery_dir: str | Path,
                    summary_path: str | Path) -> dict:
    """The body of reports/gradcam_summary.md (templates/gradcam_summary.md.j2 in the reporting
    wing): raw figures from the explain metrics, the gallery by path relative to the summary.
    A localization or ROAD section that does not apply (no annotated test image) is None,
    with its reason in ``not_applicable``."""
    rel = Path(os.path.relpath(gallery_dir, Path(summary_path).parent)).as_posix()
    loc = metrics["localization"]
    road = metrics["faithfulness"]["road"]
    keys = ("method", "n_annotated", "n_test", "cam_threshold", "layer_selection")
    return {key: metrics[key] for key in keys} | {
        "not_applicable": None if applies(loc) else loc["reason"],
        "localization": None if not applies(loc) else
        [(title, _localization_rows(loc[target])) for target, title in
         (("true_class", "CAM of the true class"), ("predicted_class", "CAM of the predicted class"))],
        "road": None if not applies(road) else
        {key: road[key] for key in ("combined", "combined_ci_low", "combined_ci_high", "ci_level",
                                    "ci_method", "n", "n_groups", "percentiles")} |
        {curve: [road[curve][str(p)] for p in road["percentiles"]] for curve in ("morf", "lerf")},
        "gallery": _gallery(cases, rel)}


def _localization_rows(groups: dict) -> list[dict]:
    """One row per subset, each figure as {value, ci_low, ci_high} (its grouped interval when
    the metrics hold one; the pointing game's with count and n); a figure the subset cannot
    define (n = 0) has value None."""
    subsets = [("all", groups["overall"]), *((f"true {c}", g) for c, g in groups["by_class"].items()),
               ("correct", groups["correct"]), ("incorrect", groups["incorrect"])]
    keys = ("pointing_game", "energy_pointing", "chance", "iou_box", "iou_polygon")
    return [{"name": name, "n": g["n"], "values": [_cell(g, k) for k in keys]}
            for name, g in subsets]


def _cell(summary: dict, key: str) -> dict:
    interval = (summary.get("intervals") or {}).get(key)
    return interval or {"value": summary.get(key) if summary["n"] else None}


def _gallery(cases: Sequence[Case], rel: str) -> list[dict]:
    """Per CAM class, per kind: the chosen cases as (file name, link)."""
    return [{"name": class_name,
             "kinds": [(label, [(c.file_name, f"{rel}/{c.file_name}") for c in cases
                                if c.class_name == class_name and c.kind == kind])
                       for kind, label in KINDS.items()]}
            for class_name in dict.fromkeys(c.class_name for c in cases)]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
