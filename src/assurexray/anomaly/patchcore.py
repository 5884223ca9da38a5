"""PatchCore (Roth et al., CVPR 2022): a memory bank of normal patch features; a patch's
anomaly score is its distance to the nearest bank patches.

- ``greedy_coreset``: k-center greedy selection (each pick the point farthest from those picked),
  so the bank covers the normal patches with few points; a greedy run's first n picks are the
  run to n, so one run serves every candidate coreset size.
- ``coreset``: the greedy run on a seeded random pool of patches in a random projection (the
  full greedy costs every patch per pick: the pool keeps it to seconds on a CPU); the bank holds
  the picked patches' full features.
- ``nearest_distances``: exact Euclidean k-nearest-neighbour distances, in query chunks.
"""
from __future__ import annotations

import torch

from assurexray.inference.streams import forward_streams

QUERY_CHUNK = 4096


def greedy_coreset(points: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """Indices of ``n`` points picked by k-center greedy from ``start`` (row order)."""
    n = min(n, len(points))
    x = points.float()
    squares = (x * x).sum(1)
    picked = torch.empty(n, dtype=torch.long)
    nearest = torch.full((len(x),), float("inf"))
    index = start
    # One torch thread (as a forward stream): each pick's small matrix-vector product runs
    # several times faster than split over the cores, where thread hand-offs dominate.
    with forward_streams(torch.device("cpu")):
        for j in range(n):
            picked[j] = index
            centre = x[index]
            # squared distance to the new pick through one matrix-vector product
            nearest = torch.minimum(nearest, squares - 2 * (x @ centre) + centre @ centre)
            index = int(nearest.argmax())
    return picked


def coreset(patches: torch.Tensor, n: int, pool: int, projection_dim: int,
            seed: int) -> torch.Tensor:
    """Indices into ``patches`` (M, C) of an ``n``-point greedy coreset, selected on a seeded
    random pool of at most ``pool`` patches in a ``projection_dim`` random projection."""
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.randperm(len(patches), generator=generator)[:pool]
    dim = patches.shape[1]
    projection = (torch.randn(dim, projection_dim, generator=generator) / projection_dim ** 0.5
                  if projection_dim < dim else torch.eye(dim))
    chosen = greedy_coreset(patches[candidates].float() @ projection, n)
    return candidates[chosen]


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(M, k) ascending Euclidean distances from each query to its k nearest bank rows."""
    bank = bank.float()
    k = min(k, len(bank))
    bank_squares = (bank * bank).sum(1)
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        q = queries[start:start + QUERY_CHUNK].float()
        squared = (q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_squares
        out.append(squared.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt())
    return torch.cat(out) if out else torch.empty(0, k)


def patch_scores_by_k(features: torch.Tensor, bank: torch.Tensor, ks: list[int]
                      ) -> dict[int, torch.Tensor]:
    """{k: (N, h, w) mean distance of each patch of (N, C, h, w) features to its k nearest},
    from one search for the largest k."""
    n, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, c)
    distances = nearest_distances(flat, bank, max(ks))
    return {k: distances[:, :k].mean(1).reshape(n, h, w) for k in ks}


def patch_scores(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(N, h, w) mean distance of each patch of (N, C, h, w) features to its k nearest."""
    return patch_scores_by_k(features, bank, [k])[k]
