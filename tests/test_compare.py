"""`assurexray compare` reads DVC's experiment records and lines the two splits up."""
import json

from assurexray.cli import main


def record(rev, name, split, auc, low, high, timestamp):
    data = {"rev": rev, "timestamp": timestamp,
            "params": {"params.yaml": {"data": {"split": split, "seed": 42,
                                                "data": {"source": "synthetic"}}}},
            "metrics": {"metrics/analysis.json": {"data": {"test": {
                "macro_auc": {"value": auc, "ci_low": low, "ci_high": high}}}}}}
    return {"rev": rev, "name": name, "data": data, "error": None}


def exp_show():
    """The shape `dvc exp show --json` prints: baselines with nested experiments."""
    old_center = record("c0", "old-center", "center", 0.50, 0.40, 0.60, "2026-11-20T10:00:00")
    new_center = record("c1", "new-center", "center", 0.61, 0.55, 0.67, "2026-11-21T10:00:00")
    baseline = record("b0", "main", "stratified", 0.82, 0.78, 0.86, "2026-11-19T10:00:00")
    baseline["experiments"] = [{"revs": [r], "name": r["name"]} for r in (old_center, new_center)]
    workspace = {"rev": "workspace", "name": None, "error": None,
                 "data": {**baseline["data"], "rev": "workspace", "timestamp": None}}
    return [workspace, baseline]


def test_compare_picks_newest_run_per_split_and_computes_gap(tmp_path, capsys):
    source = tmp_path / "exp.json"
    source.write_text(json.dumps(exp_show()))
    stem = tmp_path / "cmp"
    assert main(["compare", "--exp-json", str(source), "--out", str(stem)]) == 0
    table = json.loads(stem.with_suffix(".json").read_text())
    row = next(r for r in table["rows"] if r["metric"] == "Macro AUC")
    assert row["stratified"]["value"] == 0.82
    assert row["center"] == {"value": 0.61, "ci_low": 0.55, "ci_high": 0.67}
    assert abs(row["gap"] - (0.61 - 0.82)) < 1e-12
    assert table["experiments"]["center"]["name"] == "new-center"
    markdown = stem.with_suffix(".md").read_text()
    assert "0.610 (0.550-0.670)" in markdown and "not for clinical use" in markdown.lower()
    assert "**Synthetic data" in "\n".join(markdown.splitlines()[:3])  # the shared header


def test_compare_reports_a_missing_split(tmp_path):
    only_stratified = exp_show()[1]
    only_stratified["experiments"] = []
    source = tmp_path / "exp.json"
    source.write_text(json.dumps([only_stratified]))
    assert main(["compare", "--exp-json", str(source), "--out", str(tmp_path / "c")]) == 1
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["center"] is None and row["gap"] is None
