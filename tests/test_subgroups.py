"""Subgroup metrics, and the analyze stage end to end on a fake evaluated test set."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import softmax

from assurexray.data.schema import INDEX_COLUMNS, DatasetInfo, write_index
from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.operating_points import fit_operating_points
from assurexray.evaluation.subgroups import (
    FACTORS,
    age_band_labels,
    age_bands,
    forest_plot,
    plot_records,
    subgroup_factors,
    subgroup_table,
    summarize_subgroups,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
TEMPERATURE = 1.6
EDGES = [0, 18, 40, 65, 120]


def fake_split(n_groups: int, views: int, seed: int, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions frame, index frame) for ``n_groups`` patients of ``views`` images each,
    with BTXRD-like metadata (some of it missing)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(3, size=n_groups, p=[0.5, 0.4, 0.1]), views)
    n = len(labels)
    logits = 1.5 * np.eye(3)[labels] + rng.normal(size=(n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    preds = pd.DataFrame({"image_id": ids, "true": np.array(CLASSES)[labels],
                          "pred": np.array(CLASSES)[probs.argmax(axis=1)]})
    for i, c in enumerate(CLASSES):
        preds[f"prob_{c}"] = probs[:, i]
    for i, c in enumerate(CLASSES):
        preds[f"logit_{c}"] = logits[:, i]
    per_group = lambda values, p=None: np.repeat(rng.choice(values, size=n_groups, p=p), views)
    index = pd.DataFrame({c: [""] * n for c in INDEX_COLUMNS})
    index["image_id"] = ids
    index["file"] = [f"data/raw/{i}.jpeg" for i in ids]
    index["label"] = preds["true"]
    index["center"] = per_group(["1", "2", "3"], [0.78, 0.15, 0.07])
    index["view"] = rng.choice(["frontal", "lateral", "oblique"], size=n, p=[0.58, 0.34, 0.08])
    index["region"] = per_group(["upper limb", "lower limb", "pelvis", ""], [0.3, 0.55, 0.1, 0.05])
    index["age"] = per_group([str(a) for a in range(1, 89)] + [""])
    index["sex"] = per_group(["M", "F"])
    index["group"] = np.repeat([f"{prefix}g{g}" for g in range(n_groups)], views)
    index[["width", "height"]] = 512
    return preds, index


def fake_predictions(n_groups=120, views=2, seed=0):
    preds, index = fake_split(n_groups, views, seed, "t")
    p = Predictions(preds["image_id"].to_numpy(),
                    preds["true"].map(CLASSES.index).to_numpy(),
                    preds["pred"].map(CLASSES.index).to_numpy(),
                    preds[[f"prob_{c}" for c in CLASSES]].to_numpy(), index["group"].to_numpy())
    return p, index


def test_age_bands_from_edges():
    assert age_band_labels(EDGES) == ["0-17", "18-39", "40-64", "65-119"]
    bands = age_bands(pd.Series(["0", "17", "18", "64.5", "65", "", "n/a", "130"]), EDGES)
    assert bands.tolist() == ["0-17", "0-17", "18-39", "40-64", "65-119", "unknown", "unknown",
                              "out of range"]
    with pytest.raises(ValueError, match="age_bands"):
        age_band_labels([0, 40, 18])


def test_subgroup_counts_add_up_to_the_test_set_for_each_factor():
    p, index = fake_predictions()
    factors = subgroup_factors(index.sample(frac=1, random_state=0), p.image_ids, EDGES)
    table = subgroup_table(p, factors, CLASSES, EDGES, n_iter=50, ci_level=0.95, seed=0, min_size=20)
    overall = table[table["factor"] == "overall"].iloc[0]
    assert overall["n_images"] == len(p) and overall["n_groups"] == len(set(p.groups))
    for factor in FACTORS:
        rows = table[table["factor"] == factor]
        assert rows["n_images"].sum() == len(p), factor
        assert not rows["level"].duplicated().any()
    assert "unknown" in set(table.loc[table["factor"] == "region", "level"])
    ages = table.loc[table["factor"] == "age_band", "level"].tolist()
    assert ages == [b for b in age_band_labels(EDGES) + ["unknown"] if b in ages]


def test_small_levels_flagged_not_hidden_and_undefined_metrics_explained():
    p, index = fake_predictions()
    index.loc[index.index[:3], "sex"] = "X"  # a three-image level, one class only
    y = p.y_true.copy()
    y[:3] = 1
    p = Predictions(p.image_ids, y, p.y_pred, p.probs, p.groups)
    factors = subgroup_factors(index, p.image_ids, EDGES)
    table = subgroup_table(p, factors, CLASSES, EDGES, n_iter=50, ci_level=0.95, seed=0, min_size=20)
    row = table[(table["factor"] == "sex") & (table["level"] == "X")].iloc[0]
    assert row["small"] and row["n_images"] == 3
    assert pd.isna(row["macro_auc"]) and pd.isna(row["malignant_sensitivity"])
    assert row["accuracy"] == pytest.approx(np.mean(p.y_true[:3] == p.y_pred[:3]))
    assert row["reason"] == "macro_auc, malignant_sensitivity undefined: no Normal, Malignant images"
    big = table[(table["factor"] == "sex") & (table["level"] == "M")].iloc[0]
    assert not big["small"] and big["reason"] == "" and big["macro_auc_ci_low"] < big["macro_auc"]

    summary = summarize_subgroups(table, 20)
    assert summary["sex"]["levels"] == 3 and summary["sex"]["small_levels"] == 1
    assert summary["sex"]["undefined_levels"] == 1
    reliable = table[(table["factor"] == "sex") & ~table["small"]]
    assert summary["sex"]["macro_auc_min"] == pytest.approx(reliable["macro_auc"].min())
    assert [r["subgroup"] for r in plot_records(table)].count("sex=X") == 0


def test_missing_index_row_is_an_error():
    p, index = fake_predictions(n_groups=10)
    with pytest.raises(ValueError, match="no row for 2 predicted image"):
        subgroup_factors(index.iloc[2:], p.image_ids, EDGES)


def test_forest_plot_writes_png(tmp_path):
    p, index = fake_predictions(n_groups=40)
    table = subgroup_table(p, subgroup_factors(index, p.image_ids, EDGES), CLASSES, EDGES,
                           n_iter=20, ci_level=0.95, seed=0, min_size=20)
    forest_plot(table, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"


def write_fake_project(root: Path, n_groups: int, views: int, iterations: int) -> None:
    """Everything the analyze stage reads, as the upstream stages would write it."""
    val, val_index = fake_split(n_groups, views, seed=1, prefix="v")
    test, test_index = fake_split(n_groups, views, seed=2, prefix="t")
    (root / "data/predictions").mkdir(parents=True)
    (root / "data/splits").mkdir()
    val.to_csv(root / "data/predictions/val.csv", index=False)
    test.to_csv(root / "data/predictions/test.csv", index=False)
    index = pd.concat([val_index, test_index], ignore_index=True)
    write_index(index, root / "data/index.csv")
    index[["image_id", "group"]].to_csv(root / "data/splits/groups.csv", index=False)
    DatasetInfo("synthetic", CLASSES, "data/raw").save(root / "data/dataset.json")
    # what the calibrate stage writes: T and the thresholds fitted on calibrated val probs
    logits = val[[f"logit_{c}" for c in CLASSES]].to_numpy()
    y_val = val["true"].map(CLASSES.index).to_numpy()
    fitted = fit_operating_points(y_val, softmax(logits / TEMPERATURE, axis=1), CLASSES, 0.9,
                                  0.9, "youden", "calibrated")
    (root / "metrics").mkdir()
    (root / "metrics/calibration.json").write_text(json.dumps(
        {"temperature": TEMPERATURE, "operating_points": fitted}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["analysis"]["bootstrap_iterations"] = iterations
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def run_stage(root: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "stages/analyze.py"), "--params", "params.yaml",
           "--predictions", "data/predictions", "--groups", "data/splits/groups.csv",
           "--index", "data/index.csv", "--info", "data/dataset.json",
           "--calibration", "metrics/calibration.json", "--metrics", "metrics/analysis.json",
           "--subgroups", "metrics/subgroups.csv",
           "--plots", "plots/analysis"]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True)


def test_analyze_stage_writes_stable_keys(tmp_path):
    write_fake_project(tmp_path, n_groups=60, views=2, iterations=100)
    proc = run_stage(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "metrics/analysis.json").read_text())
    assert report["method"].startswith("grouped stratified percentile bootstrap")
    assert report["methods"]["accuracy"].startswith("Clopper-Pearson")
    assert report["methods"]["macro_auc"] == "grouped stratified percentile bootstrap"
    assert report["iterations"] == 100 and report["test"]["n_images"] == 120
    assert report["test"]["n_groups"] == 60 and report["test"]["note"] is None
    for key in ("macro_auc", "balanced_accuracy"):
        assert set(report["test"][key]) == {"value", "ci_low", "ci_high", "valid_resamples"}
    proportion = {"value", "ci_low", "ci_high", "count", "n", "n_groups", "n_effective"}
    assert set(report["test"]["accuracy"]) == proportion and report["test"]["accuracy"]["n"] == 120
    for key in ("auc", "sensitivity", "specificity"):
        assert list(report["test"][key]) == CLASSES
    assert set(report["test"]["sensitivity"]["Malignant"]) == proportion
    calibration = json.loads((tmp_path / "metrics/calibration.json").read_text())
    test = pd.read_csv(tmp_path / "data/predictions/test.csv")
    malignant = test["true"] == "Malignant"
    for task in ("malignant_vs_rest", "tumour_vs_normal"):
        points = report["operating_points"][task]
        assert set(points) == {"score", "positive", "score_class", "complement", "scale",
                               "decision", "youden", "sensitivity_target", "specificity_target"}
        assert points["scale"] == "calibrated"
        assert set(points["youden"]["test"]) == {"sensitivity", "specificity", "ppv", "npv"}
        assert points["youden"]["threshold"] == calibration["operating_points"][task]["youden"][
            "threshold"]
    # the shipped threshold is applied to the calibrated test probabilities
    youden = report["operating_points"]["malignant_vs_rest"]["youden"]
    score = softmax(test[[f"logit_{c}" for c in CLASSES]].to_numpy() / TEMPERATURE, axis=1)[:, 2]
    called = score >= youden["threshold"]
    assert youden["test"]["sensitivity"]["count"] == (called & malignant).sum()
    assert youden["test"]["sensitivity"]["n"] == malignant.sum()
    assert set(report["subgroups"]) == {"min_subgroup_size", *FACTORS}
    table = pd.read_csv(tmp_path / "metrics/subgroups.csv")
    assert (table.groupby("factor")["n_images"].sum() == 120).all()
    records = json.loads((tmp_path / "plots/analysis/subgroup_auc.json").read_text())
    assert records[0]["subgroup"] == "overall=all"
    assert (tmp_path / "plots/analysis/subgroup_auc.png").exists()

    (tmp_path / "data/dataset.json").write_text(json.dumps(
        {"source": "x", "classes": ["Normal", "Tumour"], "root": "data/raw"}))
    proc = run_stage(tmp_path)
    assert proc.returncode != 0 and "Tumour" in proc.stderr and "test.csv" in proc.stderr
