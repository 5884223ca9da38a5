"""The training reference: what drift and out-of-distribution checks compare inputs with.

Written by the ``reference`` stage as one ``.npz`` of plain arrays (loaded with
``allow_pickle=False``, so a file from elsewhere cannot run code) plus a JSON header:
the training-set image statistics, a PCA projection (fitted on the training embeddings) and a
sample of validation embeddings for the embedding-drift test, the fitted out-of-distribution
scorer with its threshold, the geometry limits, and the SHA-256 of the checkpoint it belongs to.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assurexray.errors import AssureXRayError
from assurexray.inference.features import FEATURES
from assurexray.inference.ood import Mahalanobis, OodScorer
from assurexray.params import OodParams


class ReferenceError(AssureXRayError, ValueError):
    """A reference file is missing, unreadable or belongs to another checkpoint."""


@dataclass(frozen=True)
class Reference:
    checkpoint_sha256: str
    train_stats: np.ndarray      # (N, len(FEATURES))
    pca_mean: np.ndarray         # (D,)
    pca_components: np.ndarray   # (d, D)
    emb_sample: np.ndarray       # (M, d) projected validation embeddings
    scorer: OodScorer
    ood: OodParams

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings - self.pca_mean) @ self.pca_components.T


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_reference(path: str | Path, ref: Reference) -> None:
    s = ref.scorer
    header = {"checkpoint_sha256": ref.checkpoint_sha256, "features": list(FEATURES),
              "ood": dataclasses.asdict(ref.ood), "threshold": s.threshold,
              "research_use_only": True}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:   # np.savez would append .npz to a name without it
        np.savez(fh, header=np.array(json.dumps(header)), train_stats=ref.train_stats,
                 pca_mean=ref.pca_mean, pca_components=ref.pca_components,
                 emb_sample=ref.emb_sample, emb_means=s.embedding.means,
                 emb_precision=s.embedding.precision, content_points=s.content_points,
                 content_scale=s.content_scale,
                 norms=s.norms)


def load_reference(path: str | Path, checkpoint_sha256: str | None = None) -> Reference:
    """Read a reference; with ``checkpoint_sha256``, refuse one made for another checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"{path}: reference not found; run the reference stage "
                             "(dvc repro reference)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("header")))
        scorer = OodScorer(Mahalanobis(arrays["emb_means"], arrays["emb_precision"]),
                           arrays["content_points"],
                           arrays["content_scale"], arrays["norms"], float(header["threshold"]))
        ref = Reference(header["checkpoint_sha256"], arrays["train_stats"], arrays["pca_mean"],
                        arrays["pca_components"], arrays["emb_sample"], scorer,
                        OodParams(**header["ood"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReferenceError(f"{path}: not a readable reference file ({exc})") from exc
    if header["features"] != list(FEATURES):
        raise ReferenceError(f"{path}: written for other image statistics; rerun the reference stage")
    if checkpoint_sha256 and ref.checkpoint_sha256 != checkpoint_sha256:
        raise ReferenceError(f"{path}: made for another checkpoint (SHA-256 "
                             f"{ref.checkpoint_sha256[:12]}...); rerun the reference stage")
    return ref
