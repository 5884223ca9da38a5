"""PaDiM (Defard et al., ICPR 2021): one Gaussian per patch position over the normal images'
features; a patch's anomaly score is its Mahalanobis distance to its position's Gaussian.

The features are a seeded random subset of ``dims`` channels (the paper's reduction), the
covariance gets ``eps`` times the identity (a few hundred images estimate a d x d covariance
poorly), and the stored state is the mean and the precision (inverse covariance) per position.
The model assumes images are aligned, position for position.
"""
from __future__ import annotations

import torch

from assurexray.inference.streams import forward_streams

# Both steps are thousands of tiny per-position matrix products: on one torch thread (as a
# forward stream) they ran in about a second here, on two threads of a loaded machine in 80 s.
ONE_THREAD = torch.device("cpu")


def channel_subset(channels: int, dims: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``dims`` of ``channels`` (all when fewer)."""
    if dims >= channels:
        return torch.arange(channels)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=generator)[:dims].sort().values


def fit_gaussians(features: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (h, w, d), precision (h, w, d, d)) of (N, d, h, w) normal features, N >= 2."""
    x = features.float().permute(2, 3, 0, 1)              # (h, w, N, d)
    with forward_streams(ONE_THREAD):
        mean = x.mean(2)
        centred = x - mean.unsqueeze(2)
        cov = centred.transpose(2, 3) @ centred / (x.shape[2] - 1)
        return mean, torch.linalg.inv(cov + eps * torch.eye(x.shape[3]))


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor
                ) -> torch.Tensor:
    """(N, h, w) Mahalanobis distance of each patch of (N, d, h, w) features."""
    h, w, d = mean.shape
    centred = (features.float().permute(2, 3, 0, 1) - mean.unsqueeze(2)).reshape(h * w, -1, d)
    with forward_streams(ONE_THREAD):   # one batched matrix product per position
        squared = (torch.bmm(centred, precision.reshape(h * w, d, d)) * centred).sum(2)
    return squared.clamp_min(0).sqrt().reshape(h, w, -1).permute(2, 0, 1)
