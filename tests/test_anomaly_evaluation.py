"""Normal-vs-abnormal evaluation of autoencoder scores and the comparison with the classifier."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from assurexray.anomaly.classifier_comparison import CLASSIFIER, comparison, comparison_context, curves
from assurexray.anomaly.evaluation import evaluate_scores
from assurexray.params import AnalysisParams
from assurexray.reporting.render import header, render

ANALYSIS = AnalysisParams(bootstrap_iterations=200)


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["Normal", "Benign", "Malignant"], size=n, p=[0.5, 0.35, 0.15])
    tumour = labels != "Normal"
    base = rng.normal(size=n) + 1.2 * tumour
    return pd.DataFrame({"image_id": [f"I{seed}_{i}" for i in range(n)], "label": labels,
                         "group": [f"G{seed}_{i // 2}" for i in range(n)],
                         "center": rng.choice(["1", "2"], size=n),
                         "mse": base, "ssim": rng.normal(size=n), "topk": base * 2})


def test_aucs_intervals_and_validation_thresholds():
    val, test = table(120, 1), table(160, 2)
    out = evaluate_scores(val, test, "Normal", "mse", ANALYSIS, seed=0)
    positive = test["label"] != "Normal"
    auc = out["auc"]["mse"]
    assert auc["value"] == pytest.approx(roc_auc_score(positive, test["mse"]))
    assert auc["ci_low"] < auc["value"] < auc["ci_high"]
    assert out["auc"]["topk"]["value"] == pytest.approx(auc["value"])  # same ranking
    benign = (test["label"] == "Benign") | ~positive
    assert out["auc_by_class"]["Benign"]["value"] == pytest.approx(
        roc_auc_score(positive[benign], test["mse"][benign]))
    assert set(out["auc_by_center"]) == {"1", "2"}
    youden = out["operating_points"]["youden"]
    # the threshold comes from validation: the validation rates are recomputable from it
    val_pos = val["label"] != "Normal"
    flagged = val["mse"] >= youden["threshold"]
    assert youden["val"]["sensitivity"] == pytest.approx((flagged & val_pos).sum() / val_pos.sum())


def test_comparison_is_paired_with_the_classifier():
    val, test = table(100, 3), table(140, 4)
    evaluation = evaluate_scores(val, test, "Normal", "mse", ANALYSIS, seed=0)
    evaluation["localization"] = {"overall": {"n": 5, "pointing_game": 0.4, "chance": 0.1}}
    classifier = np.where(test["label"] != "Normal", 10.0, 0.0) + 0.01 * np.arange(len(test))
    comp = comparison({"reversed": test}, {"reversed": evaluation}, classifier,
                      {"n": 7, "pointing_game": 0.3, "chance": 0.1}, "Normal", ANALYSIS, seed=0)
    assert comp[CLASSIFIER]["auc"]["value"] == pytest.approx(1.0)
    diff = comp["reversed"]["auc_minus_classifier"]
    assert diff["value"] == pytest.approx(comp["reversed"]["auc"]["value"] - 1.0)
    assert diff["ci_high"] < 0
    assert comp["reversed"]["auc"]["value"] == pytest.approx(evaluation["auc"]["mse"]["value"])
    assert comp["reversed"]["localization"]["pointing_game"] == 0.4
    evaluation["identity"] = {"n": 4, "lesion_copy": 0.1, "error_ratio": 3.0,
                              "pointing_game": 0.5, "chance": 0.1}
    doc = render("anomaly_comparison.md.j2", **comparison_context(comp, {"reversed": evaluation}),
                 header=header("Anomaly", "a test", "nothing", "synthetic"))
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| reversed | mse | ") and rows[2].startswith("| classifier | ")
    assert "| reversed | 4 | 0.10 | 3.00 | 0.500 | 0.100 |" in doc
    assert "Research use only" in doc
    roc, _ = curves({"reversed": test}, {"reversed": evaluation}, classifier, "Normal")
    assert {r["class"] for r in roc} == {"reversed", CLASSIFIER}


def test_a_model_that_scored_other_images_is_refused():
    a, b = table(40, 5), table(40, 6)
    ev = {"primary_score": "mse", "localization": {"overall": {}}}
    with pytest.raises(ValueError, match="other test images"):
        comparison({"unet": a, "reversed": b}, {"unet": ev, "reversed": ev}, None, None,
                   "Normal", ANALYSIS, seed=0)


def test_the_comparison_shows_each_detectors_validation_choice_and_cost():
    val, test = table(100, 3), table(140, 4)
    evaluation = evaluate_scores(val, test, "Normal", "mse", ANALYSIS, seed=0)
    evaluation["localization"] = {"overall": {"n": 5, "pointing_game": 0.4, "chance": 0.1}}
    config = {"detector": "patchcore", "image_size": 256, "layers": [2], "aggregation": "topk",
              "coreset_ratio": 0.01, "k": 1, "bank_patches": 4382}
    evaluation.update(config=config, state_mb=0.7, file_mb=0.8, selection=[
        {**config, "val_auc": 0.89}, {**config, "image_size": 128, "val_auc": 0.81},
        {**config, "skipped": "memory bank over max_bank_mb"}])
    comp = comparison({"patchcore": test}, {"patchcore": evaluation}, None, None, "Normal",
                      ANALYSIS, seed=0)
    context = comparison_context(comp, {"patchcore": evaluation})
    assert context["identity"] == []    # the identity check is the autoencoders'
    (row,) = context["detectors"]
    assert row["val_auc"] == 0.89 and row["val_auc_range"] == [0.81, 0.89]
    assert row["candidates"] == 3
    doc = render("anomaly_comparison.md.j2", **context,
                 header=header("Anomaly", "a test", "nothing", "synthetic"))
    assert "| patchcore | 256 px | 2 | topk | " in doc and "| 0.810-0.890 | 0.7 | 0.8 |" in doc
