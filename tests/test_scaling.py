"""The scaling report: the frontier is chosen on validation AUC and training minutes only."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "scaling", Path(__file__).resolve().parents[1] / "bench" / "scaling.py")
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def point(name, minutes, val, test):
    auc = lambda v: {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05}  # noqa: E731
    return {"experiment": name, "backbone": name, "image_size": 96, "epochs": 2,
            "configured_epochs": 2,
            "train_minutes": minutes, "val_macro_auc": auc(val), "test_macro_auc": auc(test),
            "train_images_per_second": 10.0, "epoch_seconds": 60.0, "peak_memory_mb": 900.0,
            "train_images": 100}


def test_frontier_keeps_points_nothing_cheaper_beats_on_validation():
    rows = [point("cheap", 1, 0.70, 0.99), point("dominated", 3, 0.65, 0.99),
            point("best", 5, 0.80, 0.10)]
    assert [r["experiment"] for r in scaling.frontier(rows)] == ["cheap", "best"]


def report(tmp_path, rows, spread=None) -> str:
    args = type("Args", (), {"out": tmp_path / "s.md", "plots": tmp_path / "p",
                             "json": tmp_path / "s.json", "command": "python bench/scaling.py run",
                             "seed_spread": tmp_path / "spread.json"})
    if spread:
        args.seed_spread.write_text(json.dumps({"metrics": spread}))
    scaling.write_report(rows, args)
    assert (args.plots / "frontier.json").exists()
    return args.out.read_text()


def test_report_names_every_point_and_the_notice(tmp_path):
    text = report(tmp_path, [point("a", 1, 0.7, 0.6), point("b", 2, 0.8, 0.7),
                             point("c", 9, 0.81, 0.7)])
    assert "Research use only" in text and "not BTXRD" in text
    assert "| a | 96 | 2/2 | 0.700 (0.650-0.750) |" in text
    assert "CPU preset" in text and "-S model.backbone=b -S train.image_size=96" in text


def test_no_preset_from_points_that_learned_nothing(tmp_path):
    text = report(tmp_path, [point("a", 1, 0.45, 0.5)])
    assert "No CPU preset yet" in text and "-S model.backbone" not in text


def test_seed_spread_widens_the_preset_slack(tmp_path):
    rows = [point("a", 1, 0.7, 0.6), point("b", 2, 0.8, 0.7), point("c", 9, 0.81, 0.7)]
    text = report(tmp_path, rows)
    assert "no seed spread measured" in text and "-S model.backbone=b " in text
    spread = {"val_macro_auc": {"min": 0.7, "max": 0.94, "values": [0.7, 0.8, 0.94]},
              "test_macro_auc": {"min": 0.75, "max": 0.9, "values": [0.75, 0.8, 0.9]}}
    text = report(tmp_path, rows, spread)   # half the seed range (0.12) covers a's deficit
    assert "over 0.700-0.940" in text and "within 0.120 of the best" in text
    assert "-S model.backbone=a " in text


def test_queue_status_is_read_per_experiment(monkeypatch):
    out = ("Task     Name                 Created    Status\n"
           "15f99bc  scale-resnet18-128   05:00 AM   Running\n"
           "38cd009  scale-resnet18-192   05:00 AM   Queued\n"
           "8d49555  seed-1               04:35 AM   Failed\n\n"
           "Worker status: 2 active, 0 idle\n")
    monkeypatch.setattr(scaling.subprocess, "run",
                        lambda *a, **k: type("Done", (), {"stdout": out})())
    assert scaling.queue_status() == {"scale-resnet18-128": "Running",
                                      "scale-resnet18-192": "Queued", "seed-1": "Failed"}
