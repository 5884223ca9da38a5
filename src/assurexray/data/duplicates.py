"""Duplicate detection for the audit: perceptual hashes, near pairs by Hamming distance, and
clusters of images joined by any duplicate pair."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import scipy.fft
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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


def cluster_ids(n: int, pairs: pd.DataFrame) -> list[str]:
    """'dup001', ... per connected group of >= 2 rows, numbered by first member; '' if unique.

    The groups are the connected components of the pair graph (scipy), so chains of near
    duplicates (a~b, b~c) form one group.
    """
    edges = (pairs["a"].to_numpy(int), pairs["b"].to_numpy(int))
    _, component = connected_components(coo_matrix((np.ones(len(pairs)), edges), shape=(n, n)),
                                        directed=False)
    sizes = np.bincount(component, minlength=1)
    names: dict[int, str] = {}
    for c in component:  # row order: a group is numbered by its first member
        if sizes[c] > 1 and c not in names:
            names[c] = f"dup{len(names) + 1:03d}"
    return [names.get(c, "") for c in component]


def duplicate_pairs(scans: list, max_distance: int) -> pd.DataFrame:
    """Pairs of decodable images (row positions a < b) with the same bytes or close pHashes."""
    rows = [i for i, s in enumerate(scans) if s.phash is not None]
    pairs = [(rows[i], rows[j], d, scans[rows[i]].sha256 == scans[rows[j]].sha256)
             for i, j, d in near_pairs([scans[r].phash for r in rows], max_distance)]
    return pd.DataFrame(pairs, columns=["a", "b", "distance", "exact"])
