"""Data sources: manifests (CSV, folder per class) and the params dispatch all end in one index."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from assurexray.data import audit, btxrd, download, sources
from assurexray.data.schema import INDEX_COLUMNS, DatasetInfo, read_index, write_index
from assurexray.params import AuditParams, Params, load_params

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, w: int = 120, h: int = 90, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def with_data(params: Params, **changes) -> Params:
    return dataclasses.replace(params, data=dataclasses.replace(params.data, **changes))


@pytest.fixture
def manifest_csv(tmp_path) -> Path:
    root = tmp_path / "study"
    write_image(root / "imgs" / "a.png", seed=1)
    write_image(root / "imgs" / "b.jpg", seed=2)
    write_image(root / "other" / "c.png", w=60, h=200, seed=3)
    write_image(root / "imgs" / "d.png", seed=4)
    rows = [
        "path,label,center,site,group,view,age,sex,x0,y0,x1,y1",
        "imgs/a.png,tumour,A,femur,p1,frontal,34,F,10,20,50,60",
        "imgs/a.png,tumour,A,femur,p1,frontal,34,F,60,10,100,40",
        "imgs/b.jpg,healthy,B,,p1,lateral,34,F,,,,",
        "other/c.png,,A,,p2,,,,,,,",
        ",tumour,A,,,,,,,,,",
        "imgs/d.png,tumour,A,,p3,,,,1,2,three,4",
        "imgs/b.jpg,tumour,B,,p1,lateral,34,F,,,,",
    ]
    path = root / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_manifest_csv_builds_a_valid_index(manifest_csv, tmp_path):
    index, notes, classes = sources.read_manifest(manifest_csv, tmp_path / "raw")
    assert list(index.columns) == INDEX_COLUMNS
    assert classes == ["healthy", "tumour"]  # from the data, sorted
    assert len(index) == 5 and notes.empty  # a.png twice = one image; the pathless row stays
    rows = index.set_index("image_id").to_dict("index")
    a = rows["imgs_a"]
    assert Path(a["file"]) == manifest_csv.parent / "imgs" / "a.png" and Path(a["file"]).exists()
    assert (a["label"], a["center"], a["sites"], a["group"], a["view"], a["age"], a["sex"]) == (
        "tumour", "A", "femur", "p1", "frontal", "34", "F")
    assert (a["width"], a["height"], a["ingest_issue"]) == (120, 90, "")
    assert rows["other_c"]["width"] == 60 and rows["other_c"]["height"] == 200
    assert rows["other_c"]["label"] == "" and "empty label" in rows["other_c"]["ingest_issue"]
    assert rows["imgs_b"]["label"] == "" and "conflicting label" in rows["imgs_b"]["ingest_issue"]
    assert rows["row6"]["file"] == "" and "empty path on manifest line 6" in rows["row6"]["ingest_issue"]
    assert rows["imgs_d"]["annotation"] == "" and rows["imgs_d"]["ingest_issue"].startswith("annotation box")
    # the index survives the CSV round trip the next stages use
    write_index(index, tmp_path / "index.csv")
    pd.testing.assert_frame_equal(read_index(tmp_path / "index.csv"), index.astype({"width": int, "height": int}))


def test_manifest_boxes_become_labelme_that_the_btxrd_parser_reads(manifest_csv, tmp_path):
    index, _, _ = sources.read_manifest(manifest_csv, tmp_path / "raw")
    ann = index.set_index("image_id").at["imgs_a", "annotation"]
    assert Path(ann).parent == tmp_path / "raw" / "annotations"
    parsed = btxrd.read_labelme(ann)
    assert (parsed.width, parsed.height) == (120, 90)
    assert sorted(l.box for l in parsed.lesions) == [(10, 20, 50, 60), (60, 10, 100, 40)]
    assert all(l.label == "tumour" and len(l.polygon) == 4 for l in parsed.lesions)
    doc = json.loads(Path(ann).read_text())
    assert (Path(ann).parent / doc["imagePath"]).resolve() == (manifest_csv.parent / "imgs" / "a.png").resolve()


def test_manifest_then_audit_keeps_every_row(manifest_csv, tmp_path):
    index, notes, classes = sources.read_manifest(manifest_csv, tmp_path / "raw")
    result = audit.run_audit(index, notes, DatasetInfo("manifest", classes, str(manifest_csv)),
                             AuditParams(workers=1))
    q = result.quality.set_index("image_id")
    assert list(result.quality["image_id"]) == list(index["image_id"])
    assert q.at["imgs_a", "usable"] and q.at["imgs_a", "annotation_usable"] and q.at["imgs_a", "warnings"] == ""
    assert not q.at["other_c", "usable"] and audit.EMPTY_LABEL in q.at["other_c", "reason"]
    assert not q.at["imgs_b", "usable"] and audit.BAD_METADATA in q.at["imgs_b", "reason"]
    assert not q.at["row6", "usable"] and audit.MISSING in q.at["row6", "reason"]
    assert q.at["imgs_d", "usable"] and audit.ANNOTATION_INGEST in q.at["imgs_d", "warnings"]


def test_manifest_csv_errors_name_file_and_column(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,center\nx.png,1\n")
    with pytest.raises(sources.SourceError, match=r"m\.csv.*'label'"):
        sources.read_manifest(bad, tmp_path)
    bad.write_text("path,label,x0,y0\nx.png,a,1,2\n")
    with pytest.raises(sources.SourceError, match=r"x1"):
        sources.read_manifest(bad, tmp_path)


def test_folder_per_class(tmp_path):
    root = tmp_path / "tree"
    write_image(root / "malignant" / "deep" / "er" / "m1.png", seed=1)
    write_image(root / "benign" / "b1.jpg", seed=2)
    write_image(root / "benign" / "b 2.png", seed=3)
    write_image(root / "normal" / "n1.PNG", seed=4)
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "stray.png").write_bytes(b"")
    (root / "empty_class").mkdir()
    index, notes, classes = sources.read_manifest(root, tmp_path / "raw")
    assert classes == ["benign", "malignant", "normal"]
    assert dict(zip(index["image_id"], index["label"])) == {
        "benign_b_2": "benign", "benign_b1": "benign", "malignant_deep_er_m1": "malignant",
        "normal_n1": "normal"}
    assert (index["group"] == "").all() and (index["annotation"] == "").all()
    reasons = dict(zip(notes["path"].map(lambda p: Path(p).name), notes["reason"]))
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["stray.png"].startswith("not inside a class folder")
    assert reasons["empty_class"].startswith("class folder without images")
    assert len(notes) == 3  # every non-image file accounted for


def test_unique_ids_are_sanitized_stable_and_collision_free():
    paths = ["a/b.png", "a_b.png", "c d/e.jpg", "x.png", "x.jpg"]
    ids = sources.unique_ids(paths)
    assert len(set(ids)) == len(ids)
    assert ids[2] == "c_d_e" and all(set(i) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") for i in ids)
    assert ids[0].startswith("a_b-") and ids[1].startswith("a_b-")
    assert sources.unique_ids(paths[::-1]) == ids[::-1]  # independent of order


def test_manifest_ids_do_not_depend_on_where_the_data_sits(manifest_csv, tmp_path):
    relative, _, _ = sources.read_manifest(manifest_csv, tmp_path / "raw")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(manifest_csv.parent, moved)
    # the copy's manifest names its images by absolute path
    lines = (moved / "manifest.csv").read_text().splitlines()
    absolute = [lines[0]] + [f"{moved / line}" if line[0] != "," else line for line in lines[1:]]
    (moved / "manifest.csv").write_text("\n".join(absolute) + "\n")
    index, _, _ = sources.read_manifest(moved / "manifest.csv", tmp_path / "raw2")
    assert index["image_id"].tolist() == relative["image_id"].tolist()
    assert index["file"].str.startswith(str(moved)).sum() == 4


def test_manifest_ids_of_images_outside_its_folder_start_at_their_common_root(tmp_path):
    data = tmp_path / "host" / "xray"
    write_image(data / "siteA" / "p1.png", seed=1)
    write_image(data / "siteB" / "p 2.png", seed=2)
    manifest = tmp_path / "project" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,label\n{data / 'siteA' / 'p1.png'},a\n{data / 'siteB' / 'p 2.png'},b\n")
    index, _, _ = sources.read_manifest(manifest, tmp_path / "raw")
    assert index["image_id"].tolist() == ["siteA_p1", "siteB_p_2"]


def test_prepare_source_names_the_params_key_to_set(tmp_path):
    params = load_params(REPO / "params.yaml")
    with pytest.raises(sources.SourceError, match=r"'data\.source' = 'nowhere'"):
        sources.prepare_source(with_data(params, source="nowhere"), tmp_path)
    with pytest.raises(sources.SourceError, match=r"data\.btxrd_dir\.path"):
        sources.prepare_source(with_data(params, source="btxrd_dir"), tmp_path)
    missing = dataclasses.replace(params.data.manifest, path=str(tmp_path / "nope.csv"))
    with pytest.raises(sources.SourceError, match=r"data\.manifest\.path.*nope\.csv"):
        sources.prepare_source(with_data(params, source="manifest", manifest=missing), tmp_path)


def test_prepare_source_manifest(manifest_csv, tmp_path):
    params = load_params(REPO / "params.yaml")
    manifest = dataclasses.replace(params.data.manifest, path=str(manifest_csv))
    params = with_data(params, source="manifest", manifest=manifest,
                       tracked_path=str(manifest_csv.parent))
    index, notes, info = sources.prepare_source(params, tmp_path / "raw")
    assert info.source == "manifest" and info.classes == ["healthy", "tumour"]
    assert len(index) == 5


def test_own_data_outside_the_tracked_folder_is_refused(manifest_csv, tmp_path):
    params = load_params(REPO / "params.yaml")
    manifest = dataclasses.replace(params.data.manifest, path=str(manifest_csv))
    # the manifest itself is tracked, one of its images is not
    tracked = with_data(params, source="manifest", manifest=manifest,
                        tracked_path=str(manifest_csv.parent / "imgs"))
    with pytest.raises(sources.SourceError, match=r"2 file\(s\) of data\.manifest\.path lie outside "
                       rf"data\.tracked_path .*here {manifest_csv.parent}\)"):
        sources.prepare_source(tracked, tmp_path / "raw")
    # a link to the data counts as the data
    (tmp_path / "link").symlink_to(manifest_csv.parent)
    linked = with_data(params, source="manifest", manifest=manifest, tracked_path=str(tmp_path / "link"))
    assert len(sources.prepare_source(linked, tmp_path / "raw")[0]) == 5
    folder = dataclasses.replace(params.data.btxrd_dir, path=str(manifest_csv.parent))
    with pytest.raises(sources.SourceError, match=r"data\.btxrd_dir\.path lie outside"):
        sources.prepare_source(with_data(params, source="btxrd_dir", btxrd_dir=folder), tmp_path / "raw")


def test_prepare_source_btxrd_variants_share_one_ingest(tiny_twin, tmp_path, monkeypatch):
    params = load_params(REPO / "params.yaml")
    calls = []

    def fake_fetch(btxrd_params, raw_dir, cache_dir):
        calls.append((btxrd_params, Path(raw_dir), Path(cache_dir)))
        return tiny_twin

    monkeypatch.setattr(download, "fetch_and_extract", fake_fetch)
    cache = dataclasses.replace(params.data.btxrd, cache_dir=str(tmp_path / "cache"))
    fetched = sources.prepare_source(with_data(params, source="btxrd", btxrd=cache), tmp_path / "raw")
    assert calls == [(cache, tmp_path / "raw", tmp_path / "cache")]
    folder = dataclasses.replace(params.data.btxrd_dir, path=str(tiny_twin))
    local = sources.prepare_source(with_data(params, source="btxrd_dir", btxrd_dir=folder,
                                             tracked_path=str(tiny_twin)), tmp_path / "raw2")
    for index, notes, info in (fetched, local):
        assert info.classes == btxrd.CLASSES and info.root == str(tiny_twin)
        assert list(index.columns) == INDEX_COLUMNS
    pd.testing.assert_frame_equal(fetched[0], local[0])
    assert (fetched[2].source, local[2].source) == ("btxrd", "btxrd_dir")


def test_prepare_source_synthetic_is_reproducible(tmp_path):
    params = load_params(REPO / "params.yaml")
    small = dataclasses.replace(params.data.synthetic, n_images=24, min_side=96, max_side=128)
    params = with_data(params, source="synthetic", synthetic=small)
    first = sources.prepare_source(params, tmp_path / "a")
    second = sources.prepare_source(params, tmp_path / "b")
    assert first[2].classes == btxrd.CLASSES and first[2].source == "synthetic"
    strip = lambda df, root: df.replace(str(root), "", regex=True)  # noqa: E731
    pd.testing.assert_frame_equal(strip(first[0], tmp_path / "a"), strip(second[0], tmp_path / "b"))
    assert len(first[0]) >= 24


# --------------------------------------------------------------------------- DVC sees user data

def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture
def manifest_project(tmp_path) -> tuple[Path, Path]:
    """A git + DVC project whose params point at a small manifest outside it."""
    study = tmp_path / "study"
    rows = ["path,label,center"]
    for i in range(8):
        write_image(study / "imgs" / f"{i}.png", w=64, h=48, seed=i)
        rows.append(f"imgs/{i}.png,{'ab'[i % 2]},{'AB'[i // 4]}")
    (study / "labels.csv").write_text("\n".join(rows) + "\n")
    root = tmp_path / "project"
    for name in ("stages", "src", "data/external"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] |= {"source": "manifest", "tracked_path": str(study),
                       "manifest": {"path": str(study / "labels.csv")}}
    params["preprocess"]["cache_size"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.org"],
                ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "manifest project"]):
        run(cmd, root)
    return root, study


def stages_named(status: str) -> set[str]:
    return {line[:-1] for line in status.splitlines() if line.endswith(":") and not line[0].isspace()}


def test_dvc_sees_an_edited_image_and_an_edited_label(manifest_project):
    root, study = manifest_project
    run(["dvc", "repro", "preprocess"], root)
    assert "up to date" in run(["dvc", "status", "--with-deps", "preprocess"], root).lower()
    before = np.load(root / "data" / "cache" / "images.npy")

    write_image(study / "imgs" / "3.png", w=64, h=48, seed=99)  # same size: the index is unchanged
    status = run(["dvc", "status", "--with-deps", "preprocess"], root)
    assert stages_named(status) == {"prepare", "audit", "preprocess"}
    log = run(["dvc", "repro", "preprocess"], root)
    assert all(f"Running stage '{s}'" in log for s in ("prepare", "audit", "preprocess"))
    after = np.load(root / "data" / "cache" / "images.npy")
    changed = np.flatnonzero((before != after).any(axis=(1, 2)))
    assert changed.tolist() == [pd.read_csv(root / "data" / "cache" / "meta.csv")
                                .set_index("image_id").at["imgs_3", "row"]]

    manifest = study / "labels.csv"
    manifest.write_text(manifest.read_text().replace("imgs/3.png,b,", "imgs/3.png,a,"))
    assert "prepare" in stages_named(run(["dvc", "status", "--with-deps", "preprocess"], root))
    assert "Running stage 'prepare'" in run(["dvc", "repro", "preprocess"], root)
    index = read_index(root / "data" / "index.csv").set_index("image_id")
    assert index.at["imgs_3", "label"] == "a"
    assert "up to date" in run(["dvc", "status", "--with-deps", "preprocess"], root).lower()
