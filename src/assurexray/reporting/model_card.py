"""The model card (docs/model_card.md), with the sections of Mitchell et al. (2019), "Model
Cards for Model Reporting": the context of templates/model_card.md.j2."""
from __future__ import annotations

from assurexray import __version__
from assurexray.reporting import sections
from assurexray.reporting.inputs import Inputs, Source, guarded
from assurexray.reporting.render import num, plain, render
from assurexray.training.checkpoint import CheckpointMeta

TREE = {None: "", True: " (uncommitted changes present)", False: " (clean tree)"}


def model_details(meta: CheckpointMeta) -> dict:
    params = meta.params
    return {"backbone": meta.backbone, "dropout": meta.dropout,
            "pretrained": (params.get("model") or {}).get("pretrained"),
            "classes": meta.classes, "cache_size": meta.cache_size,
            "image_size": meta.image_size,
            "mean": [round(v, 3) for v in meta.mean], "std": [round(v, 3) for v in meta.std],
            "train": params.get("train") or {}, "seed": params.get("seed"),
            "epoch": meta.epoch + 1, "best_auc": meta.best_val_macro_auc,
            "split": meta.split, "temperature": meta.temperature,
            "git_rev": meta.git_rev, "tree": TREE[meta.git_dirty],
            "created_at": meta.created_at, "version": __version__}


def training_data_source(info: Source, dataset: str, licence: str) -> str:
    """The data the model was trained on, by source."""
    source = info.data.get("source") if info.available else None
    if source in ("btxrd", "btxrd_dir"):
        return f"BTXRD, {dataset} (licence {licence})"
    if source == "synthetic":
        return f"the synthetic BTXRD twin (generated images mimicking BTXRD, {dataset}); no real radiograph"
    if source:
        return f"source `{source}` (user-provided images)"
    return f"unknown ({info.path} {info.problem})"


def factors(analysis: dict) -> dict:
    """Per factor: levels evaluated and the macro AUC range over the levels that are not small."""
    summary = analysis["subgroups"]
    rows = [[factor, s["levels"], s["small_levels"], s["undefined_levels"],
             f"{num(s['macro_auc_min'])} ({s['macro_auc_min_level']})"
             if s["macro_auc_min_level"] else "n/a",
             num(s["macro_auc_max"])]
            for factor, s in summary.items() if factor != "min_subgroup_size"]
    return {"minimum": summary["min_subgroup_size"], "rows": rows}


def audit_counts(audit: dict) -> dict:
    return {k: audit[k] for k in ("images_in", "usable", "excluded")}


SPREAD_FIGURES = (("test_macro_auc", "test macro AUC"), ("val_macro_auc", "validation macro AUC"),
                  ("test_accuracy", "test accuracy"),
                  ("test_malignant_sensitivity", "test malignant sensitivity"),
                  ("test_ece_after_scaling", "test ECE after scaling"))


def seed_spread(spread: Source, analysis: Source) -> str:
    """How far another training seed moves the headline figures, when it was measured for the
    run the card describes (the spread's own copy of this run's test AUC must match)."""
    howto = "`scripts/seed_spread.sh`"
    if not spread.available or not analysis.available:
        return f"not measured for this run ({howto})"
    try:
        runs, figures = spread.data["runs"], spread.data["metrics"]
        here, there = analysis.data["test"]["macro_auc"]["value"], runs[0]["metrics"]["test_macro_auc"]
        if here is None or abs(here - there) > 1e-9:
            return (f"{spread.path} was measured on another run (test macro AUC {num(there)} "
                    f"there, {num(here)} here): rerun {howto}")
        ranges = "; ".join(f"{label} {num(figures[key]['min'])}-{num(figures[key]['max'])} "
                           f"(mean {num(figures[key]['mean'])})" for key, label in SPREAD_FIGURES)
    except (LookupError, TypeError) as exc:  # MissingKey names the file
        return f"{spread.path} is incomplete ({exc}): rerun {howto}"
    seeds = ", ".join(str(r["train_seed"]) for r in runs)
    return f"measured over {len(runs)} training seeds ({seeds}; {howto}): {ranges}"


def context(inputs: Inputs) -> dict:
    """Everything model_card.md.j2 reads."""
    i = inputs
    published = sections.published()
    analysis = i.analysis
    return {
        **sections.document_header("AssureXRay model card", i),
        "details": guarded(lambda: model_details(i.checkpoint.data), i.checkpoint),
        "training_data": training_data_source(i.info, published["dataset"], published["licence"]),
        "classes": plain(i.info.data.get("classes")) if i.info.available
        else "the dataset's classes",
        "bootstrap": guarded(lambda: {k: analysis.data[k] for k in ("method", "iterations",
                                                                    "ci_level")}, analysis),
        "n_bins": i.calibration.data["n_bins"] if i.calibration.available else None,
        "split": i.params.split, "design": sections.split_design(i.params),
        "test_partition": guarded(lambda: sections.partitions(i.split.data, ("test",)), i.split),
        "audit": guarded(lambda: audit_counts(i.audit.data), i.audit),
        "train_partitions": guarded(lambda: sections.partitions(i.split.data, ("train", "val")),
                                    i.split),
        "headline": guarded(lambda: sections.headline(analysis.data), analysis),
        "operating_points": guarded(lambda: sections.operating_points(analysis.data), analysis),
        "factors": guarded(lambda: factors(analysis.data), analysis),
        "calibration": guarded(lambda: sections.calibration_summary(i.calibration.data),
                               i.calibration),
        "robustness": guarded(lambda: sections.robustness_summary(i.robustness.data),
                              i.robustness),
        "gradcam": guarded(lambda: sections.gradcam_summary(i.explain.data), i.explain),
        "caveats": sections.run_specific_caveats(i),
        "seed_spread": seed_spread(i.seed_spread, analysis),
        "published": published,
    }


def render_model_card(inputs: Inputs) -> str:
    """docs/model_card.md."""
    return render("model_card.md.j2", **context(inputs))
