"""The report stage regenerates the model card and the run report from the metrics files."""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.data.splits import split_metrics
from assurexray.evaluation.applicability import not_applicable
from assurexray.evaluation.bootstrap import METHOD, GroupedResampling, Predictions, bootstrap_metrics
from assurexray.evaluation.calibration import ece_before_after, temperature_scaling_report
from assurexray.evaluation.curves import evaluation_metrics
from assurexray.evaluation.operating_points import evaluate_operating_points, fit_operating_points
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.evaluation.subgroups import subgroup_table, summarize_subgroups
from assurexray.explain.cam import road_summary
from assurexray.explain.localization import grouped_summary, score_cam
from assurexray.jsonio import json_safe
from assurexray.params import Params, to_dict
from assurexray.reporting.inputs import load_inputs
from assurexray.reporting.model_card import render_model_card
from assurexray.reporting.render import SYNTHETIC_BANNER, ci, num
from assurexray.reporting.report import render_report
from assurexray.training.checkpoint import CheckpointMeta, save_checkpoint
from assurexray.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
PLACEHOLDERS = re.compile(r"TODO|TBD|XXX|\bnan\b|\bNone\b|[{}]")


def interval(value, low, high, valid=200):
    return {"value": value, "ci_low": low, "ci_high": high, "valid_resamples": valid}


def rate(value):
    return {c: interval(value, value - 0.05, value + 0.05) for c in CLASSES}


def operating_point(sens, spec, target=None, note=None):
    point = {"threshold": 0.4321, "note": note,
             "val": {"sensitivity": 0.9, "specificity": 0.7, "ppv": 0.5, "npv": 0.95},
             "test": {"sensitivity": interval(sens, sens - 0.1, min(1, sens + 0.1)),
                      "specificity": interval(spec, spec - 0.1, min(1, spec + 0.1)),
                      "ppv": interval(0.5, 0.4, 0.6), "npv": interval(None, None, None, 0)}}
    return point if target is None else {"target": target, **point}


ANALYSIS = {
    "method": "grouped stratified percentile bootstrap", "iterations": 200, "ci_level": 0.95,
    "seed": 42,
    "test": {"n_images": 180, "n_groups": 121, "note": None,
             "macro_auc": interval(0.8123, 0.7712, 0.8519),
             "accuracy": interval(0.7, 0.65, 0.75),
             "balanced_accuracy": interval(0.66, 0.6, 0.72),
             "auc": rate(0.8), "sensitivity": rate(0.6), "specificity": rate(0.85)},
    "operating_points": {
        "malignant_vs_rest": {
            "score": "P(Malignant)", "youden": operating_point(0.7, 0.8),
            # met on validation, missed on test: the report must say so
            "sensitivity_target": operating_point(0.8123, 0.5, target=0.9),
            "specificity_target": operating_point(
                0.3, 0.85, target=0.9,
                note="specificity >= 0.90 not reachable on validation; best is 0.870 at the "
                     "highest score")},
        "tumour_vs_normal": {"skipped": "tumour vs normal needs a 'Normal' class"}},
    "subgroups": {"min_subgroup_size": 20,
                  **{f: {"levels": 2, "small_levels": 1, "undefined_levels": 0,
                         "macro_auc_min": 0.71, "macro_auc_min_level": "2",
                         "macro_auc_max": 0.83}
                     for f in ("center", "view", "region", "age_band", "sex")}},
}

SUBGROUP_ROWS = [
    {"factor": "overall", "level": "all", "n_images": 180, "n_groups": 121, "small": False,
     "reason": ""},
    {"factor": "center", "level": "1", "n_images": 170, "n_groups": 113, "small": False,
     "reason": ""},
    {"factor": "center", "level": "3", "n_images": 10, "n_groups": 8, "small": True,
     "reason": "macro_auc undefined: no Normal images"},
]


def hand_made_subgroups() -> pd.DataFrame:
    rows = []
    for i, r in enumerate(SUBGROUP_ROWS):
        row = dict(r)
        for m in ("accuracy", "balanced_accuracy", "macro_auc", "malignant_sensitivity"):
            undefined = m == "macro_auc" and r["small"]
            value = None if undefined else 0.61 + i / 10
            row.update({m: value, f"{m}_ci_low": None if undefined else value - 0.1,
                        f"{m}_ci_high": None if undefined else value + 0.1,
                        f"{m}_valid_resamples": 0 if undefined else 200})
        rows.append(row)
    return pd.DataFrame(rows)


def loc_summary(n, pointing, chance):
    return {"n": n, "pointing_game": pointing, "energy_pointing": 0.3, "chance": chance,
            "iou_box": 0.2, "iou_polygon": None, "n_polygon": 0, "n_empty_cam": 0}


OVERALL_INTERVALS = {  # the explain stage's grouped intervals (energy and IoU left out: plain)
    "pointing_game": {"value": 0.55, "ci_low": 0.38, "ci_high": 0.71, "count": 22, "n": 40},
    "pointing_vs_chance": {"value": 3.06, "ci_low": 2.1, "ci_high": 4.0}}
LOCALIZATION = {"overall": {**loc_summary(40, 0.55, 0.18), "intervals": OVERALL_INTERVALS},
                "by_class": {"Benign": loc_summary(30, 0.6, 0.2),
                             "Malignant": loc_summary(10, 0.4, 0.12)},
                "correct": loc_summary(25, 0.64, 0.19), "incorrect": {"n": 0}}

SPREAD_FIGURES = ("test_macro_auc", "val_macro_auc", "test_accuracy", "test_malignant_sensitivity",
                  "test_ece_after_scaling")
SEED_SPREAD = {"runs": [{"name": "committed", "train_seed": 42,
                         "metrics": {"test_macro_auc": ANALYSIS["test"]["macro_auc"]["value"]}},
                        {"name": "seed-1", "train_seed": 1, "metrics": {}}],
               "metrics": {f: {"mean": 0.8, "min": 0.75, "max": 0.85}
                           for f in (*SPREAD_FIGURES, "test_balanced_accuracy")}}
METRICS = {
    "audit.json": {
        "source": "synthetic", "images_in": 1203, "usable": 1199, "excluded": 4,
        "excluded_by_reason": {"zero-byte image": 1, "truncated image": 1, "missing image": 0,
                               "unreadable image": 2},
        "warnings_by_kind": {"malformed annotation": 1, "annotation outside image": 0},
        "class_by_center": {"Normal": {"1": 500, "2": 80}, "Benign": {"1": 400, "2": 100},
                            "Malignant": {"1": 90, "2": 29}},
        "exact_duplicate_pairs": 7, "near_duplicate_pairs": 5, "duplicate_clusters": 9,
        "images_in_duplicate_clusters": 21,
        "annotation": {"images_with_annotation": 600, "usable_annotations": 598,
                       "coverage_by_class": {"Normal": 0.0, "Benign": 0.99, "Malignant": 1.0}},
        "notes": {"total": 0, "by_reason": {}}},
    "split.json": {
        "images": {"usable": 1199, "withheld": 0, "excluded": 4}, "groups": {"total": 800},
        **{p: {"images": n, "groups": g, "by_class": {"Normal": n // 2, "Benign": n // 3,
                                                       "Malignant": n - n // 2 - n // 3},
               "class_fraction": {}, "by_center": {"1": n - 20, "2": 20}}
           for p, n, g in (("train", 839, 560), ("val", 180, 119), ("test", 180, 121))},
        "leakage": {"groups_crossing_partitions": 0, "dup_clusters_crossing_partitions": 0}},
    "evaluate.json": {
        p: {"n": 180, "accuracy": 0.7, "balanced_accuracy": 0.66, "macro_auc": 0.81,
            "macro_f1": 0.6, "weighted_f1": 0.68,
            "per_class": {c: {"support": 60, "auc": 0.8, "sensitivity": 0.6, "specificity": 0.8,
                              "ppv": 0.6, "npv": 0.8, "f1": 0.6} for c in CLASSES},
            "confusion_matrix": [[50, 8, 2], [10, 40, 10], [3, 20, 37]], "notes": []}
        for p in ("val", "test")},
    "calibration.json": {
        "temperature": 1.7321, "n_bins": 15,
        **{p: {s: {"ece": 0.1234 if s == "before" else 0.0456, "mce": 0.3, "brier": 0.4,
                   "nll": 0.9, "accuracy": 0.7} for s in ("before", "after")}
           for p in ("val", "test")}},
    "robustness.json": {
        "n": 180, "severities": 2,
        "clean": {"macro_auc": 0.81, "accuracy": 0.7, "balanced_accuracy": 0.66},
        "corruptions": {"gaussian_blur": {
            str(s): {"macro_auc": 0.81 - 0.1 * s, "accuracy": 0.7 - 0.05 * s,
                     "balanced_accuracy": 0.6, "macro_auc_drop": 0.1 * s,
                     "accuracy_drop": 0.05 * s, "balanced_accuracy_drop": 0.06,
                     "settings": {"sigma": 1.5 * s}} for s in (1, 2)}},
        "worst_macro_auc_drop": 0.2, "worst_corruption": "gaussian_blur@2"},
    "explain.json": {
        "method": "gradcam", "cam_threshold": 0.5, "n_test": 180, "n_annotated": 40,
        "localization": {"true_class": LOCALIZATION, "predicted_class": LOCALIZATION},
        "faithfulness": {"road": {"n": 40, "percentiles": [20, 80],
                                  "morf": {"20": -0.2, "80": -0.1},
                                  "lerf": {"20": -0.05, "80": 0.0}, "combined": 0.0625,
                                  "combined_ci_low": 0.01, "combined_ci_high": 0.11,
                                  "n_groups": 31, "ci_level": 0.95,
                                  "ci_method": "grouped stratified percentile bootstrap"}},
        "gallery": {"n_images": 9}},
    "analysis.json": ANALYSIS,
    "seed_spread.json": SEED_SPREAD,
    "anomaly.json": {  # anomaly_summary's layout: comparison per model, identity per autoencoder
        "comparison": {name: {"score": score, "auc": {"value": auc, "ci_low": auc - 0.05,
                                                      "ci_high": auc + 0.05},
                              "auc_minus_classifier": None if name == "classifier" else
                              {"value": auc - 0.9, "ci_low": auc - 0.95, "ci_high": auc - 0.85},
                              "auc_by_class": {"Benign": {"value": auc}, "Malignant": {"value": auc}},
                              "localization": {"pointing_game": 0.3, "chance": 0.05,
                                               "energy_pointing": 0.1, "iou_box": 0.1}}
                       for name, score, auc in (("classifier", "1 - P(Normal)", 0.9),
                                                ("unet", "mse", 0.55))},
        "architectures": {"unet": {"identity": {"n": 32, "lesion_copy": 0.94, "error_ratio": 1.2,
                                                "pointing_game": 0.26, "chance": 0.05}}}},
}
TRAIN = {"train_loss": 0.61234, "val_loss": 0.7, "val_macro_auc": 0.79, "val_accuracy": 0.68,
         "lr": 0.0, "step": 11, "best_epoch": 8, "best_val_macro_auc": 0.8011}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("mobilenetv3_small_100", len(CLASSES), dropout=0.0)
    meta = CheckpointMeta(backbone="mobilenetv3_small_100", classes=CLASSES, image_size=160,
                          cache_size=256, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                          dropout=0.0, params=to_dict(Params()), split="stratified", epoch=8,
                          best_val_macro_auc=0.8011, temperature=1.7321)
    path = tmp_path_factory.mktemp("model") / "calibrated.pt"
    save_checkpoint(path, model, meta)
    return path


def make_project(root: Path, checkpoint: Path, source: str = "synthetic") -> dict:
    """Every input of the report stage, hand-made after the producers' layouts."""
    (root / "metrics").mkdir(parents=True)
    for name, data in METRICS.items():
        (root / "metrics" / name).write_text(json.dumps(data, indent=2))
    hand_made_subgroups().to_csv(root / "metrics" / "subgroups.csv", index=False)
    (root / "dvclive" / "train").mkdir(parents=True)
    (root / "dvclive" / "train" / "metrics.json").write_text(json.dumps(TRAIN))
    (root / "data").mkdir()
    (root / "data" / "dataset.json").write_text(
        json.dumps({"source": source, "classes": CLASSES, "root": "data/raw"}))
    for png in ("evaluate/roc.png", "gallery/Malignant_fn_IMG1.png", "extra/thing.png"):
        (root / "plots" / png).parent.mkdir(parents=True, exist_ok=True)
        (root / "plots" / png).write_bytes(b"\x89PNG\r\n\x1a\n")
    return {"info": root / "data" / "dataset.json", "model": checkpoint,
            "metrics_dir": root / "metrics",
            "train_metrics": root / "dvclive" / "train" / "metrics.json",
            "plots_dir": root / "plots"}


def render(paths: dict, params: Params = Params()) -> tuple[str, str]:
    inputs = load_inputs(params, **paths)
    return render_model_card(inputs), render_report(inputs, paths["plots_dir"].parent / "docs")


@pytest.fixture()
def project(tmp_path, checkpoint) -> dict:
    return make_project(tmp_path, checkpoint)


def test_synthetic_banner_first_and_clinical_notice(project):
    for doc in render(project):
        head = "\n".join(doc.splitlines()[:6])
        assert SYNTHETIC_BANNER in head
        assert "Generated by the report stage" in head
        assert NOT_FOR_CLINICAL_USE in doc


def test_no_synthetic_banner_for_real_data(tmp_path, checkpoint):
    paths = make_project(tmp_path, checkpoint, source="btxrd")
    for doc in render(paths):
        assert "synthetic" not in doc.lower()
        assert NOT_FOR_CLINICAL_USE in doc and "Data source: `btxrd`" in doc


def test_figures_come_from_the_files(project):
    card, report = render(project)
    macro_auc = ci(ANALYSIS["test"]["macro_auc"])
    assert macro_auc == "0.812 (0.771-0.852)"
    assert macro_auc in card and macro_auc in report
    # audit reconciliation, temperature and ECE, training, git revision, robustness, Grad-CAM
    assert "**1203** = usable **1199** + excluded **4** (reconciles)" in report
    assert "| zero-byte image | 1 |" in report and "| missing image |" not in report
    assert "T = **1.732**" in report and "**0.046** after" in card
    assert "Epochs run: 12; best epoch 9" in report and "validation macro AUC **0.801**" in report
    assert re.search(r"git revision `[0-9a-f]{40}|git revision `unknown`", card)
    assert "backbone `mobilenetv3_small_100`" in card and "temperature 1.732" in card
    assert "| gaussian_blur | 2 | sigma 3 | 0.610 | 0.200 |" in report
    assert "largest drop **0.200** under gaussian_blur@2" in report
    assert ("| all | 40 | 0.550 (0.380-0.710), 22/40 | 0.180 | above chance (x3.06, interval "
            "2.10-4.00) | 0.300 |") in report
    assert "| true Malignant | 10 | 0.400 | 0.120 | above chance (x3.33) |" in report  # no interval
    assert "n 40, 31 patient groups): combined score **0.062 (0.010-0.110)**" in report
    assert "pointing game **0.550 (0.380-0.710), 22/40** vs chance 0.180" in card
    unet_row = "| unet | mse | 0.550 (0.500-0.600) | no |"   # the anomaly table, in both
    assert unet_row in card and unet_row in report
    # published references are present and labelled as such
    for doc in (card, report):
        assert "published references, not results of this run" in doc
        assert "| malignant recall 0.839, precision 0.734 | doi 10.1038/s41597-024-04311-y |" in doc


def test_operating_point_targets_missed_are_reported(project):
    card, report = render(project)
    assert "| sensitivity >= 0.90 | 0.4321 | 0.900 | 0.700 | 0.812 (0.712-0.912) |" in report
    assert "met on validation, but test sensitivity is 0.812" in report
    assert "specificity >= 0.90 not reachable on validation" in report
    assert "**tumour_vs_normal**: skipped (tumour vs normal needs a 'Normal' class)." in report
    assert "Target not met" in card


def test_subgroups_small_levels_flagged(project):
    _, report = render(project)
    row = next(line for line in report.splitlines() if line.startswith("| center | 3 |"))
    assert "⚠ small" in row and "macro_auc undefined: no Normal images" in row
    assert "| n/a |" in row  # the undefined macro AUC, not 'nan' or 'None'
    assert "fewer than 20 images (1 here)" in report
    big = next(line for line in report.splitlines() if line.startswith("| center | 1 |"))
    assert "⚠" not in big


def test_figures_linked_relative_to_the_report(project):
    _, report = render(project)
    assert "![roc](../plots/evaluate/roc.png)" in report
    gallery = report.index("![Malignant_fn_IMG1](../plots/gallery/Malignant_fn_IMG1.png)")
    assert report.index("## Grad-CAM localization") < gallery < report.index("## Published")
    assert report.index("## Other figures") < report.index("![thing](../plots/extra/thing.png)")


def test_no_placeholder_text(project):
    for doc in render(project):
        assert not PLACEHOLDERS.search(doc), PLACEHOLDERS.search(doc).group()
        assert "not available" not in doc.lower()


def test_missing_files_and_keys_give_explicit_lines(project):
    (project["metrics_dir"] / "robustness.json").unlink()
    (project["metrics_dir"] / "subgroups.csv").unlink()
    analysis = {k: v for k, v in ANALYSIS.items() if k != "operating_points"}
    (project["metrics_dir"] / "analysis.json").write_text(json.dumps(analysis))
    project["model"] = project["metrics_dir"] / "no_model.pt"
    card, report = render(project)
    robustness = project["metrics_dir"].as_posix() + "/robustness.json"
    assert f"_Not available ({robustness} missing: run `dvc repro`)._" in report
    assert "subgroups.csv missing: run `dvc repro`" in report
    assert "analysis.json has no key 'operating_points'" in report
    assert "no_model.pt missing: run `dvc repro`" in card
    assert ci(ANALYSIS["test"]["macro_auc"]) in report  # sections that can still render do
    for doc in (card, report):
        assert not PLACEHOLDERS.search(doc)


def test_renders_with_nothing_there(tmp_path):
    paths = {"info": tmp_path / "dataset.json", "model": tmp_path / "model.pt",
             "metrics_dir": tmp_path / "metrics", "train_metrics": tmp_path / "m.json",
             "plots_dir": tmp_path / "plots"}
    for doc in render(paths):
        assert "Data source unknown" in "\n".join(doc.splitlines()[:4])
        assert NOT_FOR_CLINICAL_USE in doc and not PLACEHOLDERS.search(doc)
        assert doc.count("Not available (") >= 3


def test_corrupt_checkpoint_is_reported(project):
    bad = project["metrics_dir"] / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    card, _ = render({**project, "model": bad})
    assert "bad.pt unreadable (not a valid checkpoint): run `dvc repro`" in card


def test_producer_layouts_render_completely(project):
    """analysis, evaluate, calibration, split and localization metrics written by the real
    producers leave no section 'not available'."""
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ids = np.array([f"IMG{i:04d}" for i in range(n)])
    preds = Predictions(ids, y, probs.argmax(1), probs, np.array([f"g{i // 2}" for i in range(n)]))
    factors = pd.DataFrame({"center": np.where(y == 0, "1", "2"), "view": "frontal",
                            "region": "upper limb", "age_band": "18-39", "sex": "F"})
    table = subgroup_table(preds, factors, CLASSES, [0, 18, 40], 50, 0.95, 0, 20)
    cal = temperature_scaling_report(logits, y, logits, y, 10)
    analysis = {"method": METHOD, "iterations": 50, "ci_level": 0.95, "seed": 0,
                "test": {"n_images": n, "n_groups": 45, "note": None,
                         **bootstrap_metrics(preds, CLASSES, 50, 0.95, 0)},
                "operating_points": evaluate_operating_points(fit_operating_points(
                    preds.y_true, preds.probs, CLASSES, 0.9, 0.9, "youden", "calibrated"),
                    preds, CLASSES, 0.95),
                "subgroups": summarize_subgroups(table, 20),
                "calibration": ece_before_after(
                    probs, softmax(logits / cal["temperature"], axis=1), y, 10, cal["temperature"],
                    GroupedResampling(preds.groups, y, 50, 0.95, 0))}
    split_preds = SplitPredictions(ids, CLASSES, y, logits)
    frame = pd.DataFrame({"image_id": ids, "group": preds.groups, "label": np.array(CLASSES)[y],
                          "center": "1", "partition": np.array(["train", "val", "test"])[y]})
    quality = pd.DataFrame({"image_id": ids, "usable": True, "dup_cluster": ""})
    cam = rng.random((8, 8))
    lesion_groups = GroupedResampling(np.array(["g0", "g0", "g1"]), np.ones(3, int), 50, 0.95, 0)
    lesion = [{"label": "x", "box": [0, 0, 4, 4], "polygon": []}]
    scores = [score_cam(cam, lesion, [0, 0, 8, 8], 0.5)] * 3
    explain = {"method": "gradcam", "cam_threshold": 0.5, "n_test": n, "n_annotated": 3,
               "localization": {t: grouped_summary(scores, ["Benign"] * 3, [True, False, True],
                                                   CLASSES, lesion_groups)
                                for t in ("true_class", "predicted_class")},
               "faithfulness": {"road": road_summary({"morf": rng.random((2, 3)),
                                                      "lerf": rng.random((2, 3))}, [20, 80],
                                                     lesion_groups)},
               "gallery": {"n_images": 0}}
    produced = {"analysis.json": analysis,
                "evaluate.json": evaluation_metrics({"val": split_preds, "test": split_preds}),
                "calibration.json": cal,
                "split.json": split_metrics(frame, quality, CLASSES), "explain.json": explain}
    for name, data in produced.items():
        (project["metrics_dir"] / name).write_text(json.dumps(json_safe(data)))
    table.to_csv(project["metrics_dir"] / "subgroups.csv", index=False)
    docs = render(project)
    for doc in docs:
        assert "not available" not in doc.lower()
        assert not PLACEHOLDERS.search(doc), PLACEHOLDERS.search(doc).group()
    # the model card states the scale of the shipped thresholds, and n beside proportions
    assert "on the calibrated probability scale" in docs[0]
    accuracy = analysis["test"]["accuracy"]
    assert f"{accuracy['count']}/{accuracy['n']}" in docs[0]
    # the pointing game with its grouped exact interval and count/n, ECE and ROAD intervals
    pointing = explain["localization"]["true_class"]["overall"]["intervals"]["pointing_game"]
    ece = analysis["calibration"]["ece"]["after"]
    for doc in docs:
        assert f"**{ci(pointing)}**" in doc and pointing["n"] == 3
        assert f"{num(ece['value'])} ({num(ece['ci_low'])}-{num(ece['ci_high'])})" in doc
    road = explain["faithfulness"]["road"]
    assert f"({num(road['combined_ci_low'])}-{num(road['combined_ci_high'])})" in docs[1]


def test_stage_writes_both_documents(project, tmp_path):
    docs = tmp_path / "docs"
    args = ["--params", str(REPO / "params.yaml"), "--info", str(project["info"]),
            "--model", str(project["model"]), "--metrics-dir", str(project["metrics_dir"]),
            "--train-metrics", str(project["train_metrics"]), "--plots-dir",
            str(project["plots_dir"]), "--model-card", str(docs / "model_card.md"),
            "--report", str(docs / "report.md")]
    done = subprocess.run([sys.executable, str(REPO / "stages" / "report.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    card, report = ((docs / name).read_text() for name in ("model_card.md", "report.md"))
    assert card.startswith("# AssureXRay model card") and SYNTHETIC_BANNER in report
    assert "![roc](../plots/evaluate/roc.png)" in report
    assert "not available: nothing" in done.stderr


def test_explain_without_annotated_images_is_stated(project):
    """The explain stage writes n_annotated 0 and "not applicable" localization/ROAD records
    when no test image has a usable annotation: both documents give the reason."""
    na = not_applicable("none of the 9 test images has a box")
    explain = {**METRICS["explain.json"], "n_annotated": 0, "localization": na,
               "faithfulness": {"road": na}}
    (project["metrics_dir"] / "explain.json").write_text(json.dumps(explain))
    card, report = render(project)
    for doc in (card, report):
        assert ("gradcam: localization and faithfulness not applicable: none of the 9 test "
                "images has a box.") in doc
        assert "Grad-CAM localization and faithfulness do not apply: none of the 9" in doc
        assert "not available" not in doc.lower() and not PLACEHOLDERS.search(doc)
    assert "Faithfulness (ROAD): not applicable (see below)." in report
    assert "**CAM of the true class**" not in report


def test_seed_spread_shown_only_for_the_run_it_measured(project):
    card = render(project)[0]
    assert "measured over 2 training seeds (42, 1;" in card
    assert "test macro AUC 0.750-0.850 (mean 0.800)" in card
    band = "over 2 training seeds: mean (min-max)"
    report = render(project)[1]
    for doc in (card, report):  # the headline table carries the band beside this run's value
        assert band in doc and "| macro AUC (one-vs-rest) | " in doc and "| 0.800 (0.750-0.850) |" in doc
    path = project["metrics_dir"] / "seed_spread.json"
    other = copy.deepcopy(SEED_SPREAD)
    other["runs"][0]["metrics"]["test_macro_auc"] -= 0.01   # the spread of another run
    path.write_text(json.dumps(other))
    assert "was measured on another run" in render(project)[0]
    assert band not in render(project)[0]
    path.unlink()
    assert "Seed-to-seed spread: not measured for this run" in render(project)[0]
