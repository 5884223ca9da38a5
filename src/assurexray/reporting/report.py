"""The run report (reports/report.md): every section's context, read from the pipeline's files.

Every figure is read from the files the pipeline wrote; none is typed here (published
reference results come from published.yaml, each with its citation). A missing file, or one
lacking a key a section reads, turns that section into an explicit 'not available' line.
"""
from __future__ import annotations

from pathlib import Path

from assurexray.evaluation.applicability import applies
from assurexray.params import Params
from assurexray.reporting import sections
from assurexray.reporting.inputs import Inputs, guarded
from assurexray.reporting.render import ci, num, plain, relative_link, render, short


def audit(audit: dict) -> dict:
    return {"images_in": audit["images_in"], "usable": audit["usable"],
            "excluded": audit["excluded"],
            "reconciles": audit["usable"] + audit["excluded"] == audit["images_in"],
            "reasons": [[k, n] for k, n in audit["excluded_by_reason"].items() if n],
            "warnings": [[k, n] for k, n in audit["warnings_by_kind"].items() if n],
            "duplicates": {k: audit[k] for k in ("exact_duplicate_pairs", "near_duplicate_pairs",
                                                 "duplicate_clusters",
                                                 "images_in_duplicate_clusters")},
            "centers": ["class", *(f"center {c}" for c in
                                   next(iter(audit["class_by_center"].values()), {}))],
            "class_by_center": [[cls, *row.values()]
                                for cls, row in audit["class_by_center"].items()],
            "annotation": {"files": audit["annotation"]["images_with_annotation"],
                           "usable": audit["annotation"]["usable_annotations"],
                           "coverage": ", ".join(f"{c} {num(v)}" for c, v in
                                                 audit["annotation"]["coverage_by_class"].items())}}


def split(split: dict, params: Params) -> dict:
    leak = split["leakage"]
    images = split["images"]
    return {"design": sections.split_design(params),
            "images": {k: images[k] for k in ("usable", "excluded", "withheld")},
            "groups": split["groups"]["total"],
            "partitions": sections.partitions(split, ("train", "val", "test")),
            "leakage": [[name, leak[key], "pass" if leak[key] == 0 else "**FAIL**"]
                        for name, key in (("patient groups spanning two partitions",
                                           "groups_crossing_partitions"),
                                          ("duplicate clusters spanning two partitions",
                                           "dup_clusters_crossing_partitions"))]}


def training(train: dict) -> dict:
    return {"epochs": train["step"] + 1, "best_epoch": train["best_epoch"] + 1,
            "best_auc": train["best_val_macro_auc"],
            "last": ", ".join(f"{name} {num(train[k], 4)}" for k, name in
                              (("train_loss", "training loss"), ("val_loss", "validation loss"),
                               ("val_macro_auc", "validation macro AUC"),
                               ("val_accuracy", "validation accuracy")))}


def evaluation(evaluate: dict) -> dict:
    """Point estimates on val and test, the test confusion matrix, and any notes."""
    parts = [p for p in ("val", "test") if p in evaluate]
    keys = (("n", "images"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
            ("macro_auc", "macro AUC"), ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1"))
    test = evaluate["test"]
    classes = list(test["per_class"])
    return {"parts": parts,
            "rows": [[name, *(evaluate[p][k] if k == "n" else num(evaluate[p][k]) for p in parts)]
                     for k, name in keys],
            "classes": classes,
            "confusion": [[c, *row] for c, row in zip(classes, test["confusion_matrix"])],
            "notes": [f"{p}: {n}" for p in parts for n in evaluate[p]["notes"]]}


def calibration(cal: dict, analysis: dict | None = None) -> dict:
    """Calibration metrics before and after scaling; the test ECE with analyze's grouped
    interval when ``analysis`` holds it."""
    cols = [(p, s) for p in ("val", "test") for s in ("before", "after")]
    names = (("mce", "MCE"), ("brier", "Brier score"), ("nll", "NLL"), ("accuracy", "accuracy"))
    ece = ["ECE", *(sections.ece_text(cal[p][s]["ece"], s, analysis if p == "test" else None, 4)
                    for p, s in cols)]
    return {"temperature": cal["temperature"], "n_bins": cal["n_bins"],
            "header": ["metric", *(f"{p} {s}" for p, s in cols)],
            "rows": [ece, *([name, *(num(cal[p][s][k], 4) for p, s in cols)]
                            for k, name in names)]}


SUBGROUP_METRICS = (("macro_auc", "macro AUC"), ("accuracy", "accuracy"),
                    ("balanced_accuracy", "balanced accuracy"),
                    ("malignant_sensitivity", "malignant sensitivity"))


def subgroups(rows: list[dict], analysis) -> dict:
    minimum = (f"fewer than {analysis.data['subgroups']['min_subgroup_size']} images"
               if analysis.available and "subgroups" in analysis.data
               else "fewer images than `analysis.min_subgroup_size`")
    body = []
    for r in rows:
        flags = (["⚠ small"] if r["small"] else []) + ([r["reason"]] if r["reason"] else [])
        body.append([r["factor"], r["level"], r["n_images"], r["n_groups"],
                     *(ci({"value": r[m], "ci_low": r[f"{m}_ci_low"], "ci_high": r[f"{m}_ci_high"]})
                       for m, _ in SUBGROUP_METRICS), "; ".join(flags)])
    return {"minimum": minimum, "n_small": sum(bool(r["small"]) for r in rows),
            "header": ["factor", "level", "images", "groups", *(n for _, n in SUBGROUP_METRICS),
                       "flags"], "rows": body}


def robustness(rob: dict) -> dict:
    rows = [[name, s, plain({k: short(v) for k, v in r["settings"].items()}),
             num(r["macro_auc"]), num(r["macro_auc_drop"]), num(r["accuracy"]),
             num(r["accuracy_drop"]), num(r["balanced_accuracy_drop"])]
            for name, levels in rob["corruptions"].items() for s, r in levels.items()]
    clean = {k: rob["clean"][k] for k in ("macro_auc", "accuracy", "balanced_accuracy")}
    return {"n": rob["n"], "severities": rob["severities"], "clean": clean, "rows": rows,
            "summary": sections.robustness_summary(rob)}


def localization_rows(groups: dict) -> list[list]:
    subsets = [("all", groups["overall"]),
               *((f"true {c}", g) for c, g in groups["by_class"].items()),
               ("correct", groups["correct"]), ("incorrect", groups["incorrect"])]
    return [[name, g["n"], sections.with_interval(g, "pointing_game"), num(g.get("chance")),
             sections.vs_chance(g),
             *(sections.with_interval(g, k) for k in ("energy_pointing", "iou_box", "iou_polygon"))]
            for name, g in subsets]


def gradcam(explain: dict) -> dict:
    loc = explain["localization"]
    road = explain["faithfulness"]["road"]
    return {"method": explain["method"], "n_annotated": explain["n_annotated"],
            "n_test": explain["n_test"], "cam_threshold": explain["cam_threshold"],
            "tables": [] if not applies(loc) else
            [(title, localization_rows(loc[target])) for target, title in
             (("true_class", "CAM of the true class"),
              ("predicted_class", "CAM of the predicted class"))],
            "road": None if not applies(road) else
            {"n": road["n"], "n_groups": road.get("n_groups"), "level": road["ci_level"],
             "method": road["ci_method"],
             "combined": ci({"value": road["combined"], "ci_low": road["combined_ci_low"],
                             "ci_high": road["combined_ci_high"]})},
            "summary": sections.gradcam_summary(explain)}


def context(inputs: Inputs, doc_dir: Path) -> dict:
    """Everything report.md.j2 reads; figures are linked relative to ``doc_dir``."""
    i = inputs
    figures = {name: [(p.stem, relative_link(p, doc_dir)) for p in paths]
               for name, paths in i.figures.items()}
    return {
        **sections.document_header("AssureXRay run report", i),
        "figures": figures,
        "audit": guarded(lambda: audit(i.audit.data), i.audit),
        "split": guarded(lambda: split(i.split.data, i.params), i.split),
        "params_split": i.params.split,
        "training": guarded(lambda: training(i.train.data), i.train),
        "headline": guarded(lambda: sections.headline(
            i.analysis.data, sections.run_spread(i.seed_spread, i.analysis)), i.analysis),
        "evaluation": guarded(lambda: evaluation(i.evaluate.data), i.evaluate),
        "calibration": guarded(lambda: calibration(
            i.calibration.data, i.analysis.data if i.analysis.available else None),
            i.calibration),
        "operating_points": guarded(lambda: sections.operating_points(i.analysis.data),
                                    i.analysis),
        "subgroups": guarded(lambda: subgroups(i.subgroups.data, i.analysis), i.subgroups),
        "robustness": guarded(lambda: robustness(i.robustness.data), i.robustness),
        "gradcam": guarded(lambda: gradcam(i.explain.data), i.explain),
        "anomaly": guarded(lambda: sections.anomaly(i.anomaly.data), i.anomaly),
        "published": sections.published(),
        "caveats": sections.run_specific_caveats(i),
    }


def render_report(inputs: Inputs, doc_dir: str | Path) -> str:
    """reports/report.md; figures are linked relative to ``doc_dir`` (the report's folder)."""
    return render("report.md.j2", **context(inputs, Path(doc_dir)))
