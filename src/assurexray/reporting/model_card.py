"""The model card (reports/model_card.md), with the sections of Mitchell et al. (2019), "Model
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
            "weights": weights_text(meta.weights),
            "classes": meta.classes, "cache_size": meta.cache_size,
            "image_size": meta.image_size,
            "mean": [round(v, 3) for v in meta.mean], "std": [round(v, 3) for v in meta.std],
            "train": params.get("train") or {}, "seed": params.get("seed"),
            "epoch": meta.epoch + 1, "best_auc": meta.best_val_macro_auc,
            "split": meta.split, "temperature": meta.temperature,
            "git_rev": meta.git_rev, "tree": TREE[meta.git_dirty],
            "created_at": meta.created_at, "version": __version__}


def weights_text(source: dict | None) -> str:
    """Where the initial weights came from, as the checkpoint records it."""
    if not source:
        return "not recorded"
    if source["init"] == "package":
        return (f"ImageNet weights from the package {source['package']} {source['version']} "
                f"(`{source['file']}`, SHA-256 {source['sha256']})")
    if source["init"] == "file":
        return f"the local file `{source['file']}` (SHA-256 {source['sha256']})"
    return {"scratch": "random (trained from scratch)",
            "hub": "ImageNet weights downloaded by timm"}[source["init"]]


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
    run the card describes (``sections.run_spread``)."""
    howto = "`scripts/seed_spread.sh`"
    matching = sections.run_spread(spread, analysis)
    if matching is None:
        return (f"not measured for this run ({howto})" if not spread.available
                else f"{spread.path} was measured on another run or is incomplete: rerun {howto}")
    try:
        figures = matching["metrics"]
        ranges = "; ".join(f"{label} {num(figures[key]['min'])}-{num(figures[key]['max'])} "
                           f"(mean {num(figures[key]['mean'])})" for key, label in SPREAD_FIGURES)
    except (LookupError, TypeError) as exc:
        return f"{spread.path} is incomplete ({exc}): rerun {howto}"
    seeds = ", ".join(str(r["train_seed"]) for r in matching["runs"])
    return f"measured over {len(matching['runs'])} training seeds ({seeds}; {howto}): {ranges}"


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
        "headline": guarded(lambda: sections.headline(
            analysis.data, sections.run_spread(i.seed_spread, analysis)), analysis),
        "operating_points": guarded(lambda: sections.operating_points(analysis.data), analysis),
        "factors": guarded(lambda: factors(analysis.data), analysis),
        "calibration": guarded(lambda: sections.calibration_summary(
            i.calibration.data, analysis.data if analysis.available else None), i.calibration),
        "robustness": guarded(lambda: sections.robustness_summary(i.robustness.data),
                              i.robustness),
        "gradcam": guarded(lambda: sections.gradcam_summary(i.explain.data), i.explain),
        "anomaly": guarded(lambda: sections.anomaly(i.anomaly.data), i.anomaly),
        "caveats": sections.run_specific_caveats(i),
        "seed_spread": seed_spread(i.seed_spread, analysis),
        "published": published,
    }


def render_model_card(inputs: Inputs) -> str:
    """reports/model_card.md."""
    return render("model_card.md.j2", **context(inputs))
