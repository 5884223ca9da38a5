"""Classification losses; inverse-frequency weighting counters the class imbalance of BTXRD
(about half the images are Normal, a sixth Malignant)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

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


# The loss registry (params.train.loss): name -> builder(class counts, focal gamma).
LossBuilder = Callable[[Sequence[int], float], nn.Module]
LOSSES: dict[str, LossBuilder] = {}


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    """Decorator adding a loss builder under ``name``."""
    def add(builder: LossBuilder) -> LossBuilder:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = builder
        return builder
    return add


@register_loss("weighted_ce")
def _weighted_ce(class_counts: Sequence[int], gamma: float) -> nn.Module:
    return nn.CrossEntropyLoss(weight=inverse_frequency_weights(class_counts))


@register_loss("ce")
def _ce(class_counts: Sequence[int], gamma: float) -> nn.Module:
    return nn.CrossEntropyLoss()


@register_loss("focal")
def _focal(class_counts: Sequence[int], gamma: float) -> nn.Module:
    return FocalLoss(gamma)


def build_loss(name: str, class_counts: Sequence[int], gamma: float = 2.0) -> nn.Module:
    """The registered loss ``name`` (``weighted_ce`` is the default of params.train.loss)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
    return LOSSES[name](class_counts, gamma)
