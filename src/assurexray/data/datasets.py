"""Datasets over the decoded image cache and reproducible DataLoaders.

Every random draw of an epoch derives from (seed, epoch) alone: the shuffling from the
loader's generator, each image's augmentation from (epoch seed, its position). A resumed run
sees exactly the batches an uninterrupted run would, and the number of loader workers changes
nothing (which worker loads an image does not matter).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from assurexray.data.transforms import reseed

UNLABELLED = -1


class CachedDataset(Dataset):
    """(image tensor, class index) pairs read from the cache's (N, S, S) uint8 memmap.

    ``cache`` is anything with ``.images`` (the array) and ``.row_of(image_id)``
    (``cache.ImageCache``). Without labels the class index is ``UNLABELLED`` (-1).
    """

    def __init__(self, cache, image_ids: Sequence[str] | np.ndarray, labels: np.ndarray | None,
                 transform):
        if labels is not None and len(labels) != len(image_ids):
            raise ValueError(f"{len(image_ids)} image ids but {len(labels)} labels")
        self.images = cache.images
        self.rows = _rows(cache, image_ids)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.epoch_seed: int | None = None  # set by reseed: then every item draws its own stream

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = np.ascontiguousarray(self.images[self.rows[index]])
        label = UNLABELLED if self.labels is None else int(self.labels[index])
        if self.epoch_seed is not None:
            reseed(self.transform, int(np.random.SeedSequence([self.epoch_seed, index])
                                       .generate_state(1)[0]))
        return self.transform(image=image)["image"], label

    def reseed(self, seed: int) -> None:
        """Seed this epoch's augmentation; item i then draws from (seed, i) alone."""
        self.epoch_seed = seed


def _rows(cache, image_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    rows, missing = [], []
    for image_id in image_ids:
        try:
            rows.append(cache.row_of(image_id))
        except KeyError:
            missing.append(image_id)
    if missing:
        raise KeyError(f"{len(missing)} image id(s) are not in the image cache, e.g. "
                       f"{missing[:5]}; rerun the preprocess stage")
    return np.asarray(rows, dtype=np.int64)


def read_split(path: str | Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Image ids and class indices (position in ``classes``) of a split CSV."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: split lacks columns {sorted(missing)}")
    if df.empty:
        raise ValueError(f"{path}: split is empty")
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not among the classes {list(classes)}")
    duplicated = df["image_id"][df["image_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: duplicated image ids {duplicated[:5]}")
    index = {name: i for i, name in enumerate(classes)}
    return df["image_id"].tolist(), df["label"].map(index).to_numpy(np.int64)


def make_loader(dataset: ReseedableDataset, batch_size: int, shuffle: bool, num_workers: int,
                seed: int, drop_last: bool = False, sampler=None) -> DataLoader:
    """A DataLoader whose shuffling and worker seeds come from its own generator
    (``sampler``, e.g. a distributed one, replaces ``shuffle``)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(cast(Dataset, dataset), batch_size=batch_size, shuffle=shuffle,
                      sampler=sampler, num_workers=num_workers,
                      generator=generator, worker_init_fn=_seed_worker, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)  # workers restart, with this epoch's seed


def seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make this epoch's shuffling and augmentation a function of (seed, epoch) only."""
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    loader.generator.manual_seed(epoch_seed)
    _reseedable(loader.dataset).reseed(epoch_seed)  # workers get a copy when the epoch starts


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator: base seed + worker id. The dataset's
    # own draws are per item (CachedDataset.reseed); this covers any other global-RNG user.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@runtime_checkable
class ReseedableDataset(Protocol):
    """A map-style dataset whose random draws come from ``reseed`` (CachedDataset, the
    anomaly wing's NormalImages): what make_loader's per-epoch seeding needs."""

    def reseed(self, seed: int) -> None: ...

    def __getitem__(self, index: int) -> Any: ...

    def __len__(self) -> int: ...


def _reseedable(dataset: Dataset) -> ReseedableDataset:
    if not isinstance(dataset, ReseedableDataset):
        raise TypeError(f"expected a loader from make_loader over a reseedable dataset, "
                        f"got a {type(dataset).__name__}")
    return dataset
