"""Classification losses; inverse-frequency weighting counters the class imbalance of BTXRD
(about half the images are Normal, a sixth Malignant)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): CE scaled by (1 - p_true)^gamma, so easy
    examples count less; gamma = 0 is plain cross-entropy."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return (-((1.0 - log_p.exp()) ** self.gamma) * log_p).mean()


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """w_c = N / (C * n_c): each class contributes equally; the weights average to 1 over
    the training images."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} (output indices) have no training images: "
                         "inverse-frequency weights are undefined")
    return (counts.sum() / (len(counts) * counts)).float()


def build_loss(name: str, class_counts: Sequence[int], gamma: float = 2.0) -> nn.Module:
    """``weighted_ce`` (default), ``ce`` or ``focal`` (params.train.loss)."""
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=inverse_frequency_weights(class_counts))
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "focal":
        return FocalLoss(gamma)
    raise ValueError(f"unknown loss {name!r}: expected weighted_ce, ce or focal")
