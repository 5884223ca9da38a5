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

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.data.datasets import CachedDataset
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


def summary_markdown(metrics: dict, cases: Sequence[Case], gallery_dir: str | Path,
                     summary_path: str | Path, synthetic: bool) -> str:
    """The generated docs/gradcam_summary.md: figures, then the gallery by relative path."""
    rel = Path(os.path.relpath(gallery_dir, Path(summary_path).parent)).as_posix()
    lines = [
        "_Generated by `stages/explain.py` from `metrics/explain.json`; do not edit by hand "
        "(rerun `dvc repro explain`)._",
        "",
        "# Grad-CAM summary",
        "",
        f"> **{NOT_FOR_CLINICAL_USE}**",
        "",
    ]
    if synthetic:
        lines += ["> **Synthetic data.** These figures come from the generated BTXRD twin, not "
                  "from real radiographs: they test the pipeline and say nothing about any "
                  "model's clinical behaviour.", ""]
    lines += _method_lines(metrics) + _localization_lines(metrics) + _road_lines(metrics)
    lines += _gallery_lines(cases, rel)
    return "\n".join(lines) + "\n"


NOT_MEASURED = "Not measured: no test image has a usable lesion annotation."


def _method_lines(metrics: dict) -> list[str]:
    choice = metrics["layer_selection"]
    return [
        f"Method **{metrics['method']}** on layer `{choice['selected_layer']}` of the "
        f"checkpoint's backbone, chosen by {choice['selected_by']} "
        f"(n = {choice['n_validation']} annotated validation images; candidates and their "
        "scores in `metrics/explain.json`). "
        f"Localization covers every test image with a cached lesion annotation "
        f"({metrics['n_annotated']} of {metrics['n_test']} test images); the CAM is computed "
        "for the **true class** (and, in the second table, for the predicted class). The "
        "pointing game counts a hit when the centroid of the CAM's maximal plateau lies in a "
        "lesion box; energy is the CAM mass inside the boxes; *chance* is the box area over the "
        "unpadded image area, the expected score of a random point or a uniform map. IoU uses "
        f"the CAM thresholded at {metrics['cam_threshold']:g} x its maximum.",
        "",
    ]


def _localization_lines(metrics: dict) -> list[str]:
    if metrics["localization"] is None:
        return ["## Localization", "", NOT_MEASURED, ""]
    lines = []
    for target, title in (("true_class", "CAM of the true class"),
                          ("predicted_class", "CAM of the predicted class")):
        groups = metrics["localization"][target]
        lines += [f"## Localization: {title}", "",
                  "| subset | n | pointing game | energy | chance | IoU box | IoU polygon |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        rows = [("all", groups["overall"])]
        rows += [(f"true {c}", g) for c, g in groups["by_class"].items()]
        rows += [("correct", groups["correct"]), ("incorrect", groups["incorrect"])]
        for name, g in rows:
            if not g["n"]:
                lines.append(f"| {name} | 0 | - | - | - | - | - |")
                continue
            lines.append(f"| {name} | {g['n']} | {_fmt(g['pointing_game'])} | "
                         f"{_fmt(g['energy_pointing'])} | {_fmt(g['chance'])} | "
                         f"{_fmt(g['iou_box'])} | {_fmt(g['iou_polygon'])} |")
        lines.append("")
    return lines


def _road_lines(metrics: dict) -> list[str]:
    road = metrics["faithfulness"]["road"]
    if road is None:
        return ["## Faithfulness (ROAD, true-class CAM)", "", NOT_MEASURED, ""]
    ps = road["percentiles"]
    return [
        "## Faithfulness (ROAD, true-class CAM)", "",
        "Change of the true-class probability when the (100 - p)% most relevant (MoRF) or least "
        "relevant (LeRF) pixels of the image content (never the letterbox padding) are imputed. "
        "A faithful map: large MoRF drop, small LeRF drop; combined score (LeRF - MoRF) / 2 = "
        f"**{road['combined']:.3f}** ({road['ci_level']:.0%} interval {_fmt(road['combined_ci_low'])}"
        f" to {_fmt(road['combined_ci_high'])}, {road['ci_method']}) on n = {road['n']} "
        f"images (a seeded sample of the {metrics['n_annotated']} annotated ones when fewer).", "",
        "| kept p% | " + " | ".join(str(p) for p in ps) + " |",
        "| --- |" + " --- |" * len(ps),
        "| MoRF | " + " | ".join(_fmt(road["morf"][str(p)]) for p in ps) + " |",
        "| LeRF | " + " | ".join(_fmt(road["lerf"][str(p)]) for p in ps) + " |", "",
    ]


def _gallery_lines(cases: Sequence[Case], rel: str) -> list[str]:
    lines = ["## Gallery", "",
             "Radiograph, CAM of the named class, and the annotation (box green, polygon red).", ""]
    for class_name in dict.fromkeys(c.class_name for c in cases):
        lines += [f"### {class_name}", ""]
        for kind, label in KINDS.items():
            chosen = [c for c in cases if c.class_name == class_name and c.kind == kind]
            lines += [f"**{label}s** ({len(chosen)})" + ("" if chosen else ": none"), ""]
            if chosen:
                lines += [f"![{c.file_name}]({rel}/{c.file_name})" for c in chosen] + [""]
    return lines


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
