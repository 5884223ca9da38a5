"""What makes a rerun give the same bytes: provenance outside the weights, runtime-only settings
untracked by DVC, worker-independent augmentation, pinned dependencies, committed plots."""
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from assurexray.data.cache import ImageCache
from assurexray.data.datasets import CachedDataset, make_loader, seed_epoch
from assurexray.data.transforms import train_transform
from assurexray.params import RUNTIME_KEYS, Params, TrainParams, to_dict
from assurexray.training import checkpoint
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, provenance_path, save_checkpoint
from assurexray.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
META = CheckpointMeta(
    backbone="resnet18", classes=["Normal", "Benign", "Malignant"], image_size=32, cache_size=64,
    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], dropout=0.2, params={"seed": 1},
    split="stratified", epoch=3, best_val_macro_auc=0.8)


# --- checkpoint provenance ------------------------------------------------------------------

def test_identical_weights_give_identical_checkpoint_bytes(tmp_path, monkeypatch):
    model = build_model("resnet18", 3)
    first, second = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    stamps = iter([{"git_rev": "1" * 40, "git_dirty": False, "created_at": "2026-01-01T00:00:00"},
                   {"git_rev": "2" * 40, "git_dirty": True, "created_at": "2026-06-01T12:00:00"}])
    monkeypatch.setattr(checkpoint, "provenance", lambda: next(stamps))
    save_checkpoint(first, model, META)
    save_checkpoint(second, model, replace(META, git_rev="stale", created_at="stale"))
    assert first.read_bytes() == second.read_bytes()
    assert provenance_path(first) == tmp_path / "a" / "model.provenance.json"
    assert json.loads(provenance_path(second).read_text())["git_rev"] == "2" * 40
    _, meta = load_checkpoint(second)
    assert (meta.git_rev, meta.git_dirty, meta.created_at) == (
        "2" * 40, True, "2026-06-01T12:00:00")


def test_checkpoint_without_sidecar_loads_with_unknown_provenance(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("resnet18", 3), META)
    provenance_path(path).unlink()
    _, meta = load_checkpoint(path)
    assert meta.git_rev == "unknown" and meta.git_dirty is None
    assert replace(meta, git_rev=None, created_at=None) == META


def test_corrupt_sidecar_is_named(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, build_model("resnet18", 3), META)
    provenance_path(path).write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="model.provenance.json"):
        load_checkpoint(path)


def test_sidecars_are_git_tracked_outputs_and_feed_the_report():
    stages = PIPELINE["stages"]
    for stage, weights in (("train", "models/model.pt"), ("calibrate", "models/calibrated.pt")):
        outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in stages[stage]["outs"]}
        sidecar = str(provenance_path(weights))
        assert weights in outs and isinstance(outs[weights], str), f"{weights} stays DVC-cached"
        assert outs[sidecar] == {sidecar: {"cache": False}}, f"{stage}: {sidecar} not cache: false"
    assert "models/calibrated.provenance.json" in stages["report"]["deps"]


# --- runtime-only settings ------------------------------------------------------------------

def tracked(stage: dict) -> set[str]:
    return {p for p in stage.get("params", []) if isinstance(p, str)}


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def is_runtime(key: str) -> bool:
    """A RUNTIME_KEYS entry names a key or a whole section (``tune``)."""
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)


def test_runtime_keys_are_tracked_by_no_stage():
    leaves = leaf_keys(to_dict(Params()))
    assert all(any(is_runtime(k) for k in leaves if k.split(".")[0] == r.split(".")[0])
               for r in RUNTIME_KEYS)
    for name, stage in PIPELINE["stages"].items():
        for key in tracked(stage):
            hit = [r for r in RUNTIME_KEYS if r == key or r.startswith(key + ".")]
            assert not hit, f"stage {name} tracks runtime-only {hit} (through '{key}')"


def matrix_expanded(stage: dict) -> set[str]:
    """The stage's params with ``${item.X}`` replaced by every value of its matrix axis X."""
    keys = set()
    for key in tracked(stage):
        for axis, values in (stage.get("matrix") or {}).items():
            if f"${{item.{axis}}}" in key:
                section = yaml.safe_load((REPO / "params.yaml").read_text())
                for part in values.strip("${}").split("."):
                    section = section[part]
                keys |= {key.replace(f"${{item.{axis}}}", v) for v in section}
                break
        else:
            keys.add(key)
    return keys


def test_every_other_key_is_tracked_by_some_stage():
    """A result-affecting key that no stage lists would change results without a rerun."""
    listed = set().union(*(matrix_expanded(s) for s in PIPELINE["stages"].values()))
    untracked = sorted(k for k in leaf_keys(to_dict(Params())) if not is_runtime(k)
                       and not any(k == p or k.startswith(p + ".") for p in listed))
    assert not untracked, f"no stage tracks {untracked}: list them in dvc.yaml or RUNTIME_KEYS"


def test_augmentation_does_not_depend_on_the_number_of_workers(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.integers(0, 255, (10, 48, 48), dtype=np.uint8))
    ids = [f"i{n}" for n in range(10)]
    pd.DataFrame({"image_id": ids, "row": range(10), "scale": 1.0, "pad_x": 0, "pad_y": 0,
                  "width": 48, "height": 48}).to_csv(tmp_path / "meta.csv", index=False)
    (tmp_path / "lesions.json").write_text("{}")
    cache = ImageCache(tmp_path)

    def epoch(workers: int, number: int) -> list[torch.Tensor]:
        dataset = CachedDataset(cache, ids, np.arange(10) % 3, train_transform(TrainParams(), 32))
        loader = make_loader(dataset, 4, True, workers, seed=3)
        seed_epoch(loader, 3, number)
        return [images for images, _ in loader]

    in_process = epoch(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(in_process, epoch(2, 0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(in_process, epoch(0, 1)))


# --- pinned environment and committed plots -------------------------------------------------

def pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {re.sub(r"[-_.]+", "-", n.split("[")[0]).lower(): v  # moto[server] pins moto
            for n, v in (line.split("==") for line in lines if "==" in line)}


def test_lock_pins_every_requirement_at_the_same_version():
    wanted, locked = pins(REPO / "requirements.txt"), pins(REPO / "requirements.lock")
    assert len(locked) > len(wanted), "requirements.lock should pin the transitive dependencies"
    for name, version in wanted.items():
        assert locked.get(name, "").split("+")[0] == version, f"{name}: {version} vs the lock"
    assert "-c requirements.lock" in (REPO / "scripts" / "env.sh").read_text()


def test_plot_folders_are_committed_not_cached():
    """Documents link the PNGs: a DVC-cached plot folder would be a broken image in a clone."""
    for name, stage in PIPELINE["stages"].items():
        for out in stage.get("outs", []):
            path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if path.startswith("plots/"):
                assert options.get("cache") is False, f"stage {name}: {path} is DVC-cached"


# --- seed spread ----------------------------------------------------------------------------

def exp_state(rev: str, name, seed, train_seed, auc: float) -> dict:
    """One `dvc exp show --json` state (DVC 3.x ExpState) with the headline metric files."""
    analysis = {"test": {k: {"value": auc - d} for k, d in
                         (("macro_auc", 0), ("accuracy", 0.2), ("balanced_accuracy", 0.1))}}
    analysis["test"]["sensitivity"] = {"Malignant": {"value": 0.8}}
    metrics = {"metrics/analysis.json": {"data": analysis},
               "metrics/calibration.json": {"data": {"test": {"after": {"ece": 0.1}}}},
               "dvclive/train/metrics.json": {"data": {"best_val_macro_auc": auc - 0.05}}}
    params = {"params.yaml": {"data": {"seed": seed, "train": {"seed": train_seed}}}}
    return {"rev": rev, "name": name, "data": {"rev": rev, "metrics": metrics, "params": params},
            "error": None, "experiments": None}


def test_seed_spread_reads_committed_run_and_named_experiments(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("seed_spread", REPO / "scripts/seed_spread.py")
    seed_spread = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed_spread)
    baseline = exp_state("a" * 40, "main", 42, None, 0.90)
    baseline["experiments"] = [{"revs": [exp_state("b" * 40, "seed-1", 42, 1, 0.86)], "name": "seed-1"},
                               {"revs": [exp_state("c" * 40, "other", 42, 7, 0.10)], "name": "other"},
                               {"revs": [exp_state("d" * 40, "seed-2", 42, 2, 0.88)], "name": "seed-2"}]
    exps = tmp_path / "exps.json"
    exps.write_text(json.dumps([exp_state("workspace", None, 42, None, 0.5), baseline]))
    seed_spread.main([str(exps), "--names", "seed-1", "seed-2", "--out", str(tmp_path / "o.json")])
    out = json.loads((tmp_path / "o.json").read_text())
    assert [r["train_seed"] for r in out["runs"]] == [42, 1, 2]
    auc = out["metrics"]["test_macro_auc"]
    assert (auc["min"], auc["max"]) == (0.86, 0.90) and auc["mean"] == pytest.approx(0.88)
    with pytest.raises(SystemExit, match="seed-3"):
        seed_spread.main([str(exps), "--names", "seed-3", "--out", str(tmp_path / "o.json")])
    # A run still in the queue shows the baseline's metrics: it must not count as a seed.
    baseline["experiments"][0]["executor"] = {"state": "running"}
    exps.write_text(json.dumps([exp_state("workspace", None, 42, None, 0.5), baseline]))
    with pytest.raises(SystemExit, match="seed-1 is running"):
        seed_spread.main([str(exps), "--names", "seed-1", "seed-2", "--out", str(tmp_path / "o.json")])


# --- threads -----------------------------------------------------------------------------

def test_train_command_pins_no_kernels_or_threads():
    """Pinning kernels did not make weights processor-independent (README, Reproducibility)
    and cost every core but one; the thread count is the runtime key train.threads."""
    cmd = PIPELINE["stages"]["train"]["cmd"]
    assert cmd.startswith("python stages/train.py"), cmd


# --- a fresh clone without ../shared ---------------------------------------------------------

def test_missing_shared_files_skip_with_reason_but_fail_under_ci(tmp_path, monkeypatch):
    from conftest import shared_btxrd_dir

    monkeypatch.setenv("ASSUREXRAY_SHARED", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="btxrd is missing"):
        shared_btxrd_dir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        shared_btxrd_dir()
    (tmp_path / "btxrd").mkdir()
    (tmp_path / "btxrd" / "dataset.csv").write_text("image_id\n")
    assert shared_btxrd_dir() == tmp_path / "btxrd"
