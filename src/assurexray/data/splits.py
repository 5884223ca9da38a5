"""Patient-grouped train/val/test splits: stratified by class, or holding out whole centers.

BTXRD has no patient id. Several views of one patient are consecutive rows sharing center, age,
sex, site(s) and label, so such runs form surrogate patient groups; the audit's duplicate
clusters (exact and near) are merged into them, so neither a patient nor a duplicate can sit in
two partitions. Only image ids are written, never copies of images.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from assurexray.data.schema import check_aligned, quality_by_id, usable_index
from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)

PARTITIONS = ("train", "val", "test")
# Columns whose equality on consecutive rows marks views of one patient.
RUN_COLUMNS = ["center", "age", "sex", "sites", "label"]


class SplitError(AssureXRayError, ValueError):
    """The split cannot be made as configured; the message says why."""


def assign_groups(index: pd.DataFrame, quality: pd.DataFrame) -> pd.Series:
    """Group id of every usable image (Series indexed by image_id, sorted, named 'group').

    Base groups: the source's ``group`` column when any row has one (rows without one stand
    alone), else runs of consecutive ids with equal RUN_COLUMNS (a row of unknown age or sex
    stands alone: nothing identifies its patient). Base groups sharing a duplicate cluster are
    merged; links pass through excluded images too. A group is named after its first usable id.
    """
    check_aligned(index, quality)
    rows = index.sort_values("image_id").reset_index(drop=True)
    dup = rows["image_id"].map(quality_by_id(quality)["dup_cluster"]).fillna("")
    base = _source_groups(rows) if (rows["group"] != "").any() else _run_groups(rows)
    component = _link(len(rows), [base, dup])
    usable = rows["image_id"].isin(quality.loc[quality["usable"].astype(bool), "image_id"])
    ids = rows.loc[usable, "image_id"]
    names = ids.groupby(component[usable.to_numpy()]).transform("min")
    return pd.Series(names.to_numpy(), index=pd.Index(ids, name="image_id"), name="group")


def _source_groups(rows: pd.DataFrame) -> np.ndarray:
    return np.where(rows["group"] != "", "group:" + rows["group"], "image:" + rows["image_id"])


def _run_groups(rows: pd.DataFrame) -> pd.Series:
    key = rows[RUN_COLUMNS].astype(str).agg("\x1f".join, axis=1)
    known = (rows["age"] != "") & (rows["sex"] != "")
    starts = key.ne(key.shift()) | ~known | ~known.shift(fill_value=False)
    return "run:" + starts.cumsum().astype(str)


def _link(n: int, relations: list) -> np.ndarray:
    """Connected components of n items linked by sharing a key in any relation ('' = no key)."""
    sources, targets, offset = [], [], n
    for keys in relations:
        keys = np.asarray(keys, dtype=object)
        codes, uniques = pd.factorize(keys)
        linked = keys != ""
        sources.append(np.flatnonzero(linked))
        targets.append(offset + codes[linked])
        offset += len(uniques)
    src, dst = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(offset, offset))
    return connected_components(graph, directed=False)[1][:n]


def grouped_partition(labels: np.ndarray, groups: np.ndarray, fractions: list[float],
                      seed: int, classes: list[str]) -> np.ndarray:
    """Partition number of every sample (0 = first fraction): whole groups, class mix stratified.

    Partitions are peeled off from the last: each is one fold (the first that holds every
    class) of a seeded StratifiedGroupKFold over the samples not yet taken, with as many folds
    as its share of them suggests (70/15/15: test = 1 of 7 folds, val = 1 of 6 folds of the
    rest, train = the remainder).
    On small data this stratifies much better than dealing out many small folds.
    """
    out = np.zeros(len(labels), dtype=int)
    remaining = 1.0
    for part in range(len(fractions) - 1, 0, -1):
        free = np.flatnonzero(out == 0)
        k = max(2, round(remaining / fractions[part]))
        out[free[_first_fold(labels[free], groups[free], k, seed, classes)]] = part
        remaining -= fractions[part]
    return out


def _first_fold(labels: np.ndarray, groups: np.ndarray, k: int, seed: int,
                classes: list[str]) -> np.ndarray:
    n_groups = len(np.unique(groups))
    largest_class = np.unique(labels, return_counts=True)[1].max(initial=0)
    if min(n_groups, largest_class) < k:
        raise SplitError(f"{len(labels)} images in {n_groups} groups are too few to split off "
                         f"1/{k} of them by group and class")
    _warn_rare_classes(labels, groups, k, classes)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn's "least populated class" warning, without names or counts: said above.
        warnings.filterwarnings("ignore", message="The least populated class")
        candidates = [test for _, test in folds.split(np.zeros(len(labels)), labels, groups)]
    # The first fold holding every class; a rare class would otherwise miss a partition whenever
    # the first fold happens to lack it (check_every_class then fails with the counts).
    n_classes = len(np.unique(labels))
    return next((f for f in candidates if len(np.unique(labels[f])) == n_classes), candidates[0])


def class_counts(labels: np.ndarray, groups: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """{class: {images, groups}} of samples labelled by class name (a group counts for every
    class it holds)."""
    frame = pd.DataFrame({"label": labels, "group": groups})
    images = frame["label"].value_counts()
    n_groups = frame.drop_duplicates().groupby("label")["group"].size()
    return {c: {"images": int(images.get(c, 0)), "groups": int(n_groups.get(c, 0))}
            for c in classes}


def _warn_rare_classes(labels: np.ndarray, groups: np.ndarray, k: int,
                       classes: list[str]) -> None:
    counts = class_counts(np.asarray(classes)[labels], groups, classes)
    rare = {c: n for c, n in counts.items() if n["groups"] < k}
    if rare:
        log.warning("class(es) %s have fewer patient groups than the %d folds a partition is "
                    "cut from, so a partition can lack them (images/groups per class: %s)",
                    ", ".join(rare), k, _count_text(counts))


def _count_text(counts: dict[str, dict]) -> str:
    return ", ".join(f"{c} {n['images']}/{n['groups']}" for c, n in counts.items())


def check_every_class(frame: pd.DataFrame, classes: list[str]) -> None:
    """Fail when a partition lacks a class: its macro AUC (model selection on val, the
    headline on test) and that class's sensitivity would be undefined."""
    for name in PARTITIONS:
        part = frame[frame["partition"] == name]
        counts = class_counts(part["label"].to_numpy(), part["group"].to_numpy(), classes)
        absent = [c for c, n in counts.items() if n["images"] == 0]
        if absent:
            total = class_counts(frame["label"].to_numpy(), frame["group"].to_numpy(), classes)
            raise SplitError(
                f"the {name} partition has no {', '.join(absent)} image: its macro AUC would be "
                f"undefined (images/groups per class: in {name} {_count_text(counts)}; in all "
                f"usable images {_count_text(total)}); add data of that class, change the "
                "split fractions or the seed")


def make_split(index: pd.DataFrame, quality: pd.DataFrame, classes: list[str], split: str,
               fractions: list[float], train_centers: list[int | str], center_val_fraction: float,
               seed: int) -> pd.DataFrame:
    """Usable images with their group and partition ('' = withheld, see center split).

    Columns: image_id, group, label, center, partition; sorted by image_id.
    """
    frame = usable_index(index, quality)[["image_id", "label", "center"]]
    frame.insert(1, "group", assign_groups(index, quality).reindex(frame["image_id"]).to_numpy())
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise SplitError(f"labels {unknown} are not among the classes {classes} of dataset.json")
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    if split == "stratified":
        _check_fractions(fractions, "split_options.fractions", 3)
        part = grouped_partition(y, frame["group"].to_numpy(), fractions, seed, classes)
        frame["partition"] = np.asarray(PARTITIONS)[part]
    elif split == "center":
        frame["partition"] = _center_partition(frame, y, train_centers, center_val_fraction,
                                               seed, classes)
    else:
        raise SplitError(f"unknown split '{split}' (stratified | center)")
    check_every_class(frame, classes)
    return frame


def _check_fractions(fractions: list[float], key: str, n: int) -> None:
    if len(fractions) != n or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise SplitError(f"{key} must be {n} positive fractions summing to 1, got {fractions}")


def _center_partition(frame: pd.DataFrame, y: np.ndarray, train_centers: list[int | str],
                      val_fraction: float, seed: int, classes: list[str]) -> np.ndarray:
    """train/val from train_centers, test = every other center.

    Centers match the index's center column as text, so 1 and "1" name the same center.

    A group spanning a train and a test center (a duplicate across centers) stays out of
    training: its test-center images go to test, its train-center images are withheld ('').
    """
    _check_fractions([1 - val_fraction, val_fraction], "split_options.center_val_fraction", 2)
    wanted = {str(c) for c in train_centers}
    present = sorted(frame["center"].unique())
    unknown = sorted(wanted - set(present))
    if unknown:
        raise SplitError(f"split=center: split_options.train_centers {unknown} match no center "
                         f"of a usable image; centers present: {present}")
    in_train = frame["center"].isin(wanted).to_numpy()
    if in_train.all():
        raise SplitError(f"split=center: train_centers {sorted(wanted)} leave the test partition "
                         f"empty; centers present: {present}")
    crossing = frame.groupby("group")["center"].transform(lambda c: c.isin(wanted).nunique() > 1)
    withheld = in_train & crossing.to_numpy()
    if withheld.any():
        log.warning("split=center: %d train-center images duplicate test-center images; "
                    "withheld from train and val", withheld.sum())
    pool = in_train & ~withheld
    part = np.where(in_train, "", "test").astype(object)
    inner = grouped_partition(y[pool], frame["group"].to_numpy()[pool],
                              [1 - val_fraction, val_fraction], seed, classes)
    part[pool] = np.asarray(["train", "val"])[inner]
    return part


def split_metrics(frame: pd.DataFrame, quality: pd.DataFrame, classes: list[str]) -> dict:
    """Counts by partition x class and x center, groups per partition, computed leakage checks."""
    placed = frame[frame["partition"] != ""]
    metrics = {"images": {"usable": len(frame), "withheld": int((frame["partition"] == "").sum()),
                          "excluded": int((~quality["usable"].astype(bool)).sum())},
               "groups": {"total": int(frame["group"].nunique())}}
    for name in PARTITIONS:
        part = placed[placed["partition"] == name]
        by_class = part["label"].value_counts()
        metrics[name] = {
            "images": len(part),
            "groups": int(part["group"].nunique()),
            "by_class": {c: int(by_class.get(c, 0)) for c in classes},
            "class_fraction": {c: round(by_class.get(c, 0) / max(len(part), 1), 4)
                               for c in classes},
            "by_center": {str(c): int(n)
                          for c, n in part["center"].value_counts().sort_index().items()},
        }
    dup = placed["image_id"].map(quality_by_id(quality)["dup_cluster"]).fillna("")
    in_cluster = dup != ""
    metrics["leakage"] = {
        "groups_crossing_partitions": _crossing(placed["group"], placed["partition"]),
        "dup_clusters_crossing_partitions": _crossing(dup[in_cluster],
                                                      placed["partition"][in_cluster]),
    }
    return metrics


def _crossing(keys: pd.Series, partitions: pd.Series) -> int:
    return int((partitions.groupby(keys.to_numpy()).nunique() > 1).sum())


def write_split(frame: pd.DataFrame, out_dir: str | Path) -> None:
    """{train,val,test}.csv (image_id, group, label) and groups.csv (image_id, group)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PARTITIONS:
        part = frame[frame["partition"] == name]
        part[["image_id", "group", "label"]].to_csv(out_dir / f"{name}.csv", index=False)
    frame[["image_id", "group"]].to_csv(out_dir / "groups.csv", index=False)
