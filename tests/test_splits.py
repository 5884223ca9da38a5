"""Grouped splits: surrogate patients, duplicate clusters, stratification, center holdout."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from assurexray.data import btxrd
from assurexray.data.audit import run_audit
from assurexray.data.cache import build_cache
from assurexray.data.schema import INDEX_COLUMNS, DatasetInfo, read_quality, write_index
from assurexray.data.splits import SplitError, assign_groups, make_split, split_metrics, write_split
from assurexray.params import AuditParams

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
FRACTIONS = [0.70, 0.15, 0.15]


def index_of(rows: list[dict]) -> pd.DataFrame:
    """An index from partial rows (missing text columns '', sizes -1)."""
    full = [{**dict.fromkeys(INDEX_COLUMNS, ""), "width": -1, "height": -1, **r} for r in rows]
    return pd.DataFrame(full, columns=INDEX_COLUMNS)


def quality_of(index: pd.DataFrame, excluded=(), dups: dict | None = None) -> pd.DataFrame:
    ids = index["image_id"]
    return pd.DataFrame({
        "image_id": ids, "usable": ~ids.isin(excluded), "reason": "", "warnings": "",
        "sha256": "", "phash": "", "dup_cluster": [(dups or {}).get(i, "") for i in ids],
        "annotation_usable": False,
    })


def patient_index(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patients of 1-4 consecutive views; ~3% excluded; a few duplicate pairs across patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        center = str(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
        label = str(rng.choice(CLASSES, p=[0.5, 0.4, 0.1]))
        patient = {"center": center, "label": label, "age": str(rng.integers(1, 89)),
                   "sex": str(rng.choice(["F", "M"])), "sites": "" if label == "Normal" else "femur",
                   "view": "frontal"}
        rows += [{**patient, "image_id": f"IMG{len(rows) + v:06d}"} for v in range(rng.integers(1, 5))]
    index = index_of(rows)
    ids = index["image_id"].to_numpy()
    excluded = rng.choice(ids, size=len(ids) // 30, replace=False)
    pairs = rng.choice(ids, size=(6, 2), replace=False)
    dups = {img: f"dup{k}" for k, pair in enumerate(pairs) for img in pair}
    return index, quality_of(index, excluded, dups)


@pytest.fixture(scope="module")
def synthetic_case():
    return patient_index(400, seed=3)


def real_index(shared: Path) -> pd.DataFrame:
    """An index built from the real BTXRD metadata (no images needed for grouping)."""
    meta = btxrd.read_metadata(shared / "dataset.csv")
    sites = meta[btxrd.SITE_COLUMNS].apply(
        lambda r: ";".join(c for c in btxrd.SITE_COLUMNS if btxrd.is_set(r[c])), axis=1)
    return index_of([{
        "image_id": Path(str(row["image_id"])).stem, "center": str(row["center"]),
        "age": str(row["age"]), "sex": str(row["gender"]), "sites": site,
        "label": btxrd.class_of_row(row),
    } for (_, row), site in zip(meta.iterrows(), sites)])


@pytest.fixture(scope="module")
def real_case(shared_btxrd):
    index = real_index(shared_btxrd)
    # The known repeated block (IMG001948-1956 ~ IMG002166-2173) as near-duplicate pairs.
    dups = {f"IMG{a:06d}": f"block{k}" for k, a in enumerate(range(1948, 1956))}
    dups |= {f"IMG{b:06d}": f"block{k}" for k, b in enumerate(range(2166, 2174))}
    return index, quality_of(index, dups=dups)


@pytest.fixture(scope="module")
def twin_case(tiny_twin):
    """The tiny twin's index and the audit's verdict on it (planted defects excluded)."""
    index, notes = btxrd.ingest_btxrd_dir(tiny_twin)
    info = DatasetInfo("synthetic", list(btxrd.CLASSES), str(tiny_twin))
    return index, run_audit(index, notes, info, AuditParams()).quality


def split_of(index, quality, split="stratified", seed=42, train_centers=(1,), val=0.15):
    return make_split(index, quality, CLASSES, split, FRACTIONS, list(train_centers), val, seed)


def crossing(frame: pd.DataFrame, keys: pd.Series) -> int:
    """Keys (groups or duplicate clusters) whose images sit in more than one partition."""
    placed = frame[frame["partition"] != ""].assign(key=keys.to_numpy()[frame["partition"] != ""])
    placed = placed[placed["key"] != ""]
    return int((placed.groupby("key")["partition"].nunique() > 1).sum())


def dup_keys(frame, quality):
    return frame["image_id"].map(quality.set_index("image_id")["dup_cluster"])


# ------------------------------------------------------------------ groups

def test_consecutive_views_of_one_patient_form_one_group():
    patient = {"center": "1", "age": "12", "sex": "M", "sites": "tibia", "label": "Malignant"}
    index = index_of([
        {"image_id": "IMG000001", **patient, "view": "frontal"},
        {"image_id": "IMG000002", **patient, "view": "lateral"},
        {"image_id": "IMG000003", **patient, "age": "13"},
        {"image_id": "IMG000004", **patient},          # same as 1-2 but not consecutive
        {"image_id": "IMG000006", **patient, "age": ""},  # unknown age: stands alone
        {"image_id": "IMG000005", **patient, "age": ""},
    ])
    groups = assign_groups(index, quality_of(index))
    assert groups.index.tolist() == [f"IMG00000{i}" for i in range(1, 7)]
    assert groups.tolist() == ["IMG000001", "IMG000001", "IMG000003", "IMG000004",
                               "IMG000005", "IMG000006"]


def test_duplicate_clusters_merge_groups_even_through_excluded_images():
    index = index_of([{"image_id": f"IMG{i:06d}", "center": "1", "age": str(20 + i), "sex": "F",
                       "label": "Normal"} for i in range(1, 7)])
    quality = quality_of(index, excluded=["IMG000003"],
                         dups={"IMG000001": "d1", "IMG000003": "d1", "IMG000005": "d1"})
    groups = assign_groups(index, quality)
    assert "IMG000003" not in groups.index  # excluded images get no group
    assert groups[["IMG000001", "IMG000005"]].tolist() == ["IMG000001", "IMG000001"]
    assert groups[["IMG000002", "IMG000004", "IMG000006"]].nunique() == 3


def test_source_group_column_replaces_runs():
    same = {"center": "1", "age": "30", "sex": "F", "label": "Benign"}
    index = index_of([{"image_id": "a", **same, "group": "p1"}, {"image_id": "b", **same, "group": "p2"},
                      {"image_id": "c", **same, "group": "p1"}, {"image_id": "d", **same}])
    groups = assign_groups(index, quality_of(index))
    assert groups.tolist() == ["a", "b", "a", "d"]


def test_index_and_quality_must_list_the_same_images():
    index = index_of([{"image_id": "a"}, {"image_id": "b"}])
    with pytest.raises(ValueError, match="only in the index"):
        assign_groups(index, quality_of(index.iloc[:1]))


def test_a_repeated_id_excluded_by_the_audit_lets_split_and_preprocess_run(tiny_twin, tmp_path):
    index, notes = btxrd.ingest_btxrd_dir(tiny_twin)
    usable_twin = run_audit(index, notes, DatasetInfo("synthetic", CLASSES, str(tiny_twin)),
                            AuditParams()).quality.query("usable")
    repeated = usable_twin["image_id"].iloc[0]
    # a metadata table naming one image twice: two index rows share the id
    index = pd.concat([index, index[index["image_id"] == repeated]], ignore_index=True)
    quality = run_audit(index, notes, DatasetInfo("synthetic", CLASSES, str(tiny_twin)),
                        AuditParams()).quality
    assert not quality.loc[quality["image_id"] == repeated, "usable"].any()
    frame = split_of(index, quality)
    assert repeated not in set(frame["image_id"]) and len(frame) == len(usable_twin) - 1
    assert split_metrics(frame, quality, CLASSES)["images"]["excluded"] == (~quality["usable"]).sum()
    meta = build_cache(index, quality, 32, tmp_path / "cache")
    assert sorted(meta["image_id"]) == sorted(frame["image_id"])


def test_a_repeated_usable_id_is_refused():
    index = index_of([{"image_id": "a"}, {"image_id": "a"}, {"image_id": "b"}])
    with pytest.raises(ValueError, match=r"repeats usable image ids \['a'\]"):
        assign_groups(index, quality_of(index))


def test_read_quality_parses_usable(tmp_path):
    path = tmp_path / "quality.csv"
    path.write_text("image_id,usable,reason,warnings,sha256,phash,dup_cluster,annotation_usable\n"
                    "a,True,,,,,,True\nb,False,zero bytes,,,,,False\n")
    quality = read_quality(path)
    assert quality["usable"].tolist() == [True, False]
    assert quality["annotation_usable"].tolist() == [True, False]
    path.write_text(path.read_text().replace("False", "maybe"))
    with pytest.raises(ValueError, match="maybe"):
        read_quality(path)


# ------------------------------------------------------------------ stratified split

def check_stratified(frame: pd.DataFrame, quality: pd.DataFrame, tolerance: float):
    assert (frame["partition"] != "").all()
    assert crossing(frame, frame["group"]) == 0
    assert crossing(frame, dup_keys(frame, quality)) == 0
    overall = frame["label"].value_counts(normalize=True)
    for name, target in zip(("train", "val", "test"), FRACTIONS):
        part = frame[frame["partition"] == name]
        assert abs(len(part) / len(frame) - target) < tolerance, name
        share = part["label"].value_counts(normalize=True).reindex(CLASSES, fill_value=0)
        assert (share - overall.reindex(CLASSES)).abs().max() < tolerance, (name, share)


def test_stratified_split_invariants(synthetic_case):
    index, quality = synthetic_case
    frame = split_of(index, quality)
    excluded = set(quality.loc[~quality["usable"], "image_id"])
    assert excluded and not excluded & set(frame["image_id"])
    check_stratified(frame, quality, tolerance=0.05)
    metrics = split_metrics(frame, quality, CLASSES)
    assert metrics["leakage"] == {"groups_crossing_partitions": 0, "dup_clusters_crossing_partitions": 0}
    assert sum(metrics[p]["images"] for p in ("train", "val", "test")) == len(frame)
    assert metrics["images"]["excluded"] == len(excluded)


def test_partition_sizes_follow_other_fractions(synthetic_case):
    index, quality = synthetic_case
    frame = make_split(index, quality, CLASSES, "stratified", [0.6, 0.25, 0.15], [1], 0.15, 0)
    shares = frame["partition"].value_counts(normalize=True)
    np.testing.assert_allclose(shares[["train", "val", "test"]], [0.6, 0.25, 0.15], atol=0.04)


def test_too_few_groups_is_reported():
    index = index_of([{"image_id": f"i{k}", "label": "Normal"} for k in range(5)])
    with pytest.raises(SplitError, match="too few"):
        split_of(index, quality_of(index))


def test_tiny_twin_split_keeps_groups_and_duplicates_together(twin_case):
    index, quality = twin_case
    assert (quality["dup_cluster"] != "").any() and not quality["usable"].all()
    for split in ("stratified", "center"):
        frame = split_of(index, quality, split)
        assert set(frame["image_id"]) == set(quality.loc[quality["usable"], "image_id"])
        assert crossing(frame, frame["group"]) == 0
        assert crossing(frame, dup_keys(frame, quality)) == 0
        assert (frame["partition"] != "").sum() > 0.9 * len(frame)
        assert set(frame["partition"]) >= {"train", "val", "test"}
        # 6 Malignant images in 4 groups: still in every partition (issue 9 item 9)
        for name in ("train", "val", "test"):
            assert set(frame.loc[frame["partition"] == name, "label"]) == set(CLASSES), (split, name)


def rare_class_index(n_malignant: int) -> pd.DataFrame:
    """60 Normal and 40 Benign one-view patients, and ``n_malignant`` Malignant ones."""
    labels = ["Normal"] * 60 + ["Benign"] * 40 + ["Malignant"] * n_malignant
    return index_of([{"image_id": f"IMG{k:06d}", "label": label, "center": "1", "age": str(k),
                      "sex": "F", "view": "frontal"} for k, label in enumerate(labels)])


def test_rare_class_is_warned_with_counts_and_kept_in_every_partition(caplog):
    index = rare_class_index(4)
    with caplog.at_level("WARNING", logger="assurexray.data.splits"):
        frame = split_of(index, quality_of(index))
    assert "Malignant have fewer patient groups than the 7 folds" in caplog.text
    assert "Normal 60/60, Benign 40/40, Malignant 4/4" in caplog.text
    for name in ("train", "val", "test"):
        assert (frame.loc[frame["partition"] == name, "label"] == "Malignant").any(), name


def test_partition_without_a_class_fails_with_the_counts():
    index = rare_class_index(2)   # two groups cannot reach three partitions
    with pytest.raises(SplitError, match=r"partition has no Malignant image.*Malignant 0/0.*"
                                         r"in all usable images .*Malignant 2/2"):
        split_of(index, quality_of(index))


def test_leakage_metrics_detect_a_crossing(synthetic_case):
    index, quality = synthetic_case
    frame = split_of(index, quality)
    dups = dup_keys(frame, quality)
    pair = frame[dups.isin(dups[dups != ""].value_counts().loc[lambda n: n == 2].index)]
    moved = pair.index[0]
    frame.loc[moved, "partition"] = "test" if frame.loc[moved, "partition"] != "test" else "val"
    leakage = split_metrics(frame, quality, CLASSES)["leakage"]
    assert leakage == {"groups_crossing_partitions": 1, "dup_clusters_crossing_partitions": 1}


def test_same_seed_same_files_other_seed_other_split(synthetic_case, tmp_path):
    index, quality = synthetic_case
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_split(split_of(index, quality, seed=seed), tmp_path / name)
    for file in ("train.csv", "val.csv", "test.csv", "groups.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / "test.csv").read_bytes() != (tmp_path / "c" / "test.csv").read_bytes()
    train = pd.read_csv(tmp_path / "a" / "train.csv", dtype=str)
    assert list(train.columns) == ["image_id", "group", "label"]
    groups = pd.read_csv(tmp_path / "a" / "groups.csv", dtype=str)
    assert len(groups) == quality["usable"].sum()


def test_unknown_label_is_reported(synthetic_case):
    index, quality = synthetic_case
    with pytest.raises(SplitError, match="not among the classes"):
        make_split(index, quality, ["Normal", "Benign"], "stratified", FRACTIONS, [1], 0.15, 0)


# ------------------------------------------------------------------ center split

def check_center(frame: pd.DataFrame, quality: pd.DataFrame, train_centers: set[str]):
    placed = frame[frame["partition"] != ""]
    assert set(placed.loc[placed["partition"] == "test", "center"]).isdisjoint(train_centers)
    assert set(placed.loc[placed["partition"] != "test", "center"]) <= train_centers
    assert crossing(frame, frame["group"]) == 0
    assert crossing(frame, dup_keys(frame, quality)) == 0
    pool = placed[placed["partition"] != "test"]
    assert abs((pool["partition"] == "val").mean() - 0.15) < 0.05


def test_center_split_holds_out_other_centers(synthetic_case):
    index, quality = synthetic_case
    check_center(split_of(index, quality, "center"), quality, {"1"})
    check_center(split_of(index, quality, "center", train_centers=(1, 3)), quality, {"1", "3"})


def test_center_split_withholds_train_images_duplicated_in_test():
    index = index_of([{"image_id": f"IMG{i:06d}", "center": "1" if i < 40 else "2",
                       "age": str(i), "sex": "F", "label": CLASSES[i % 3]} for i in range(60)])
    quality = quality_of(index, dups={"IMG000005": "x", "IMG000050": "x"})
    frame = split_of(index, quality, "center")
    assert frame.set_index("image_id").loc[["IMG000005", "IMG000050"], "partition"].tolist() == ["", "test"]
    assert split_metrics(frame, quality, CLASSES)["images"]["withheld"] == 1
    check_center(frame, quality, {"1"})


def test_center_split_rejects_an_empty_test_partition(synthetic_case):
    index, quality = synthetic_case
    with pytest.raises(SplitError, match="leave the test partition empty"):
        split_of(index, quality, "center", train_centers=(1, 2, 3))


def test_center_split_accepts_named_centers(synthetic_case):
    index, quality = synthetic_case
    names = {"1": "siteA", "2": "Hospital B", "3": "3"}
    named = index.assign(center=index["center"].map(names))
    check_center(split_of(named, quality, "center", train_centers=["siteA"]), quality, {"siteA"})
    check_center(split_of(named, quality, "center", train_centers=["siteA", 3]), quality,
                 {"siteA", "3"})


@pytest.mark.parametrize("centers", [(7,), ("siteA", 1)])
def test_center_split_names_the_centers_that_exist(synthetic_case, centers):
    index, quality = synthetic_case
    wrong = [str(c) for c in centers if str(c) not in {"1", "2", "3"}]
    with pytest.raises(SplitError, match=rf"\{wrong}.* match no center.*present: \['1', '2', '3'\]"):
        split_of(index, quality, "center", train_centers=centers)


# ------------------------------------------------------------------ real metadata

def test_real_metadata_groups_and_splits(real_case):
    index, quality = real_case
    groups = assign_groups(index, quality)
    n_groups = groups.nunique()
    print(f"real BTXRD metadata: {n_groups} surrogate patient groups")
    assert 1400 <= n_groups <= 2000
    block = [f"IMG{i:06d}" for i in (*range(1948, 1956), *range(2166, 2174))]
    assert groups[block].nunique() == 1
    frame = split_of(index, quality)
    check_stratified(frame, quality, tolerance=0.02)
    check_center(split_of(index, quality, "center"), quality, {"1"})


# ------------------------------------------------------------------ stage script

def test_split_stage_writes_splits_and_metrics(synthetic_case, tmp_path):
    index, quality = synthetic_case
    write_index(index, tmp_path / "index.csv")
    quality.to_csv(tmp_path / "quality.csv", index=False)
    DatasetInfo("synthetic", CLASSES, "raw").save(tmp_path / "dataset.json")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"] = "center"
    params["split_options"]["train_centers"] = ["1"]  # a center named as text
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages" / "split.py"), "--params", "params.yaml",
           "--index", "index.csv", "--quality", "quality.csv", "--info", "dataset.json",
           "--out", "splits", "--metrics", "metrics/split.json"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    metrics = yaml.safe_load((tmp_path / "metrics" / "split.json").read_text())
    assert set(metrics["test"]["by_center"]) == {"2", "3"}
    test = pd.read_csv(tmp_path / "splits" / "test.csv", dtype=str)
    assert len(test) == metrics["test"]["images"]
