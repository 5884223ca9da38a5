"""Out-of-distribution checks: degenerate geometry rejected before the model, then a score.

The score combines two distances, each fitted on the training set only:

- class-conditional Mahalanobis on the penultimate-layer embeddings (Lee et al. 2018): the
  distance to the nearest class mean under one shared, Ledoit-Wolf shrunk covariance;
- k-nearest-neighbour distance (Sun et al. 2022) on the standardised content statistics of the
  image (intensity percentiles, contrast, edges, background share, colour), which catches inputs that
  are not radiographs at all whatever the network makes of them. Radiographs' statistics are
  multi-modal (a limb filling the frame vs a thin bone on black), so a neighbour distance fits
  them better than one Gaussian.

Each distance is divided by its own validation threshold (the quantile that flags
``false_alarm_rate`` of the validation images), the score is the larger of the two, and the
final threshold is again the validation quantile that flags ``false_alarm_rate`` of them.
Maximum softmax probability and energy are the baselines ``metrics/ood.json`` compares with.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from scipy.special import logsumexp, softmax

from assurexray.errors import AssureXRayError
from assurexray.inference.features import CONTENT_MIN_SCALE
from assurexray.params import OodParams

KNN_K = 5


class RejectedInput(AssureXRayError, ValueError):
    """An input the model must not see (degenerate geometry or a blank image)."""


def check_geometry(gray: np.ndarray, full: tuple[int, int], params: OodParams) -> None:
    """Raise RejectedInput naming why ``gray`` (the whole image is ``full`` = (width, height)
    px; ``gray`` may be a reduced decode of it) is not a usable image."""
    w, h = full
    if min(h, w) < params.min_side:
        raise RejectedInput(f"image is {w}x{h} px; the shorter side must be at least "
                            f"{params.min_side} px")
    if max(h, w) / min(h, w) > params.max_aspect:
        raise RejectedInput(f"aspect ratio {max(h, w) / min(h, w):.1f} exceeds "
                            f"{params.max_aspect:g} ({w}x{h} px)")
    gh, gw = gray.shape
    sample = np.ascontiguousarray(gray[:: max(1, gh // 512), :: max(1, gw // 512)])
    std = float(cv2.meanStdDev(sample)[1][0, 0])  # numpy's std, without a float64 copy
    if std < params.min_std:
        raise RejectedInput(f"blank image (grey-level standard deviation {std:.2f} < "
                            f"{params.min_std:g})")


@dataclass(frozen=True)
class Mahalanobis:
    """Squared Mahalanobis distance to the nearest of ``means`` under one ``precision``."""
    means: np.ndarray      # (C, D)
    precision: np.ndarray  # (D, D)

    @classmethod
    def fit(cls, x: np.ndarray, groups: np.ndarray | None = None) -> Mahalanobis:
        """Class means (one mean when ``groups`` is None) and the shrunk pooled covariance."""
        groups = np.zeros(len(x), dtype=int) if groups is None else np.asarray(groups)
        labels = np.unique(groups)
        means = np.stack([x[groups == g].mean(axis=0) for g in labels])
        centred = x - means[np.searchsorted(labels, groups)]
        from sklearn.covariance import LedoitWolf  # fitting only (reference stage): slow import
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    @cached_property
    def _whitening(self) -> tuple[np.ndarray, np.ndarray]:
        """(L, means @ L) with precision = L L^T (Cholesky): the distance is then
        |x L - mean L|^2, one (N, D) x (D, D) product instead of one per class."""
        factor = np.linalg.cholesky(self.precision)
        return factor, self.means @ factor

    def distance(self, x: np.ndarray) -> np.ndarray:
        factor, white_means = self._whitening
        white = np.asarray(x, dtype=np.float64) @ factor
        return ((white[:, None, :] - white_means[None, :, :]) ** 2).sum(axis=2).min(axis=1)


def knn_distance(points: np.ndarray, x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest row of ``points``."""
    d2 = (np.sum(x * x, axis=1)[:, None] + np.sum(points * points, axis=1)[None, :]
          - 2 * x @ points.T)
    k = min(k, len(points))
    return np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))


@dataclass(frozen=True)
class OodScorer:
    embedding: Mahalanobis
    content_points: np.ndarray  # standardised training content statistics (N, C)
    content_scale: np.ndarray   # their standardisation: (centre, scale) rows, from train
    norms: np.ndarray           # validation thresholds of the two distances
    threshold: float

    def parts(self, embeddings: np.ndarray, content: np.ndarray) -> np.ndarray:
        """(N, 2) distances, each divided by its validation threshold."""
        centre, scale = self.content_scale
        return np.stack([self.embedding.distance(embeddings),
                         knn_distance(self.content_points, (content - centre) / scale)],
                        axis=1) / self.norms

    def score(self, embeddings: np.ndarray, content: np.ndarray) -> np.ndarray:
        return self.parts(embeddings, content).max(axis=1)


def fit_scorer(train_emb: np.ndarray, train_labels: np.ndarray, train_content: np.ndarray,
               val_emb: np.ndarray, val_content: np.ndarray, false_alarm_rate: float) -> OodScorer:
    """Distances fitted on train; normalisers and threshold chosen on validation."""
    centre = train_content.mean(axis=0)
    scale = np.maximum(train_content.std(axis=0), CONTENT_MIN_SCALE)
    points = (train_content - centre) / scale
    draft = OodScorer(Mahalanobis.fit(train_emb, train_labels), points, np.stack([centre, scale]),
                      np.ones(2), np.inf)
    # Each part is divided by its own validation threshold, so both flag the same share of
    # validation images alone and neither part's tail dominates the maximum.
    norms = np.quantile(draft.parts(val_emb, val_content), 1.0 - false_alarm_rate, axis=0)
    norms[norms <= 0] = 1.0
    scorer = OodScorer(draft.embedding, points, draft.content_scale, norms, np.inf)
    threshold = float(np.quantile(scorer.score(val_emb, val_content), 1.0 - false_alarm_rate))
    return OodScorer(draft.embedding, points, draft.content_scale, norms, threshold)


def msp_score(logits: np.ndarray) -> np.ndarray:
    """Baseline: 1 - maximum softmax probability (higher = more out of distribution)."""
    return 1.0 - softmax(logits.astype(np.float64), axis=1).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Baseline (Liu et al. 2020): -logsumexp of the logits (higher = more out of distribution)."""
    return -logsumexp(logits.astype(np.float64), axis=1)
