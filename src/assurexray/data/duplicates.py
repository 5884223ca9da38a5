"""Duplicate detection for the audit: perceptual hashes, near pairs by Hamming distance, and
clusters of images joined by any duplicate pair."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pandas as pd
import scipy.fft

HASH_BLOCK = 1024  # rows per block of the pairwise Hamming distance matrix


def phash(img: np.ndarray) -> int:
    """64-bit perceptual hash: DCT of a 32x32 area-downscale, the 8x8 lowest frequencies
    thresholded at their median (bit 63 = coefficient (0, 0), row-major)."""
    small = cv2.resize(img.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = scipy.fft.dctn(small, type=2, norm="ortho")[:8, :8]
    bits = np.packbits(low.ravel() > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


def near_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j whose hashes differ in at most ``max_distance`` bits."""
    h = np.array(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(h), HASH_BLOCK):
        dist = np.bitwise_count(h[start:start + HASH_BLOCK, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start
        pairs += [(int(r + start), int(c), int(dist[r, c])) for r, c in zip(rows[keep], cols[keep])]
    return sorted(pairs)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def cluster_ids(n: int, pairs: pd.DataFrame) -> list[str]:
    """'dup001', ... per connected group of >= 2 rows, numbered by first member; '' if unique."""
    uf = UnionFind(n)
    for a, b in zip(pairs["a"], pairs["b"]):
        uf.union(int(a), int(b))
    roots = [uf.find(i) for i in range(n)]
    sizes = Counter(roots)
    names: dict[int, str] = {}
    for root in roots:
        if sizes[root] > 1 and root not in names:
            names[root] = f"dup{len(names) + 1:03d}"
    return [names.get(r, "") for r in roots]


def duplicate_pairs(scans: list, max_distance: int) -> pd.DataFrame:
    """Pairs of decodable images (row positions a < b) with the same bytes or close pHashes."""
    rows = [i for i, s in enumerate(scans) if s.phash is not None]
    pairs = [(rows[i], rows[j], d, scans[rows[i]].sha256 == scans[rows[j]].sha256)
             for i, j, d in near_pairs([scans[r].phash for r in rows], max_distance)]
    return pd.DataFrame(pairs, columns=["a", "b", "distance", "exact"])
