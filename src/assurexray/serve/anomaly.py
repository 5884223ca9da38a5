"""The optional anomaly detector served beside the classifier (``serve --anomaly-checkpoint``).

It scores the letterboxed image the classifier saw and gives the entry ``predict`` writes
(``anomaly.detector.anomaly_entries``, shared so the two cannot drift apart). The service names
the checkpoint by file name and SHA-256, never by its path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assurexray.anomaly.detector import anomaly_entries, load_anomaly_model, summary
from assurexray.inference.reference import file_sha256


@dataclass(frozen=True)
class ServedDetector:
    model: Any            # an autoencoder (torch module) or a FeatureDetector
    meta: Any             # AutoencoderMeta or a feature detector's meta dict
    identity: dict        # arch, primary score, threshold, file name, SHA-256 (for /health)
    device: torch.device | str

    @classmethod
    def load(cls, path: Path, device: torch.device | str) -> ServedDetector:
        """Weights-only load (a pickled object is refused, as for ``predict``)."""
        model, meta = load_anomaly_model(path, device)
        arch, primary, threshold = summary(meta)
        identity = {"arch": arch, "primary": primary, "threshold": threshold,
                    "file": path.name, "sha256": file_sha256(path)}
        return cls(model, meta, identity, device)

    def score(self, boxed: np.ndarray) -> tuple[dict, np.ndarray]:
        """(the image's anomaly entry, its map scaled to [0, 1]) of one letterboxed image."""
        entries, maps = anomaly_entries(self.model, self.meta, [boxed], 1, self.device)
        return entries[0], maps[0]
