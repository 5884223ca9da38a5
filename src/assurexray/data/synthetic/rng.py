"""Seeded generators and weighted choices shared by the twin's modules."""
from __future__ import annotations

import numpy as np


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """An independent generator per purpose and item (plan, image, patient, ...)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def normalized(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    return w / w.sum()


def choice_by_share(rng, shares: dict) -> str:
    keys = list(shares)
    return keys[rng.choice(len(keys), p=normalized(list(shares.values())))]
