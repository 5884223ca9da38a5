"""`dvc repro` to the end on labelled sets unlike BTXRD: without lesion boxes, without a
'Normal' class, with two classes. What cannot apply says why in its metrics and documents."""
import json

import pytest

from assurexray.evaluation.applicability import applies
from labelled_sets import labelled_project
from test_end_to_end import run

pytestmark = pytest.mark.slow  # three full `dvc repro` runs on generated sets

# case: (classes, with lesion boxes)
CASES = {"no_boxes": (["Benign", "Malignant", "Normal"], False),
         "no_normal": (["Benign", "Malignant", "Other"], True),
         "two_classes": (["Normal", "Tumour"], True)}
NO_BOX = "none of the 8 test images has a usable lesion annotation (box)"
NO_NORMAL = "the labelled set has no 'Normal' class"


def read(root, name: str):
    path = root / name
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()


@pytest.mark.parametrize("case", CASES)
def test_dvc_repro_runs_to_the_end_and_says_what_does_not_apply(case, tmp_path):
    classes, boxes = CASES[case]
    root = labelled_project(tmp_path, classes, boxes)
    run(["dvc", "repro"], root)
    assert "up to date" in run(["dvc", "status"], root).lower()
    assert read(root, "data/dataset.json")["classes"] == classes
    explain, anomaly = read(root, "metrics/explain.json"), read(root, "metrics/anomaly.json")
    report, card = read(root, "reports/report.md"), read(root, "reports/model_card.md")

    if boxes:
        assert explain["localization"]["true_class"]["overall"]["n"] > 0
        assert applies(explain["faithfulness"]["road"])
    else:
        for record in (explain["localization"], explain["faithfulness"]["road"]):
            assert record["applicable"] is False and NO_BOX in record["reason"]
        assert read(root, "reports/gradcam_summary.md").count(f"Not applicable: {NO_BOX}") == 2
        for doc in (report, card):
            assert f"localization and faithfulness do not apply: {NO_BOX}" in doc

    if "Normal" in classes:
        assert set(anomaly["architectures"]) == {"unet", "reversed", "patchcore", "padim"}
        assert anomaly["comparison"]["classifier"]["auc"]["value"] is not None
    else:
        assert anomaly["applicable"] is False and NO_NORMAL in anomaly["reason"]
        for arch in ("unet", "reversed"):
            for record in (read(root, f"data/anomaly/{arch}/evaluation.json"),
                           read(root, f"dvclive/anomaly_train/{arch}/metrics.json")):
                assert record == anomaly
        assert f"Not applicable: {NO_NORMAL}" in read(root, "reports/anomaly_comparison.md")
        assert f"Not applicable: {NO_NORMAL}" in report

    tasks = read(root, "metrics/analysis.json")["operating_points"]
    assert ("skipped" in tasks["tumour_vs_normal"]) == ("Normal" not in classes)
    assert tasks["malignant_vs_rest"]["positive"] == [
        "Malignant" if "Malignant" in classes else classes[-1]]
