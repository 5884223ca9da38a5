"""Batch summaries for the monitors, and how well they work: OOD AUROC, drift error rates.

``summarize`` runs the inference core over files or encoded images and keeps what the monitors
need (logits, embeddings, image statistics). ``ood_evaluation`` scores in-distribution test
images against each generated out-of-distribution set; ``drift_error_rates`` draws repeated
windows to measure the drift test's false alarms and its detection rate.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score, roc_curve

from assurexray.console import progress
from assurexray.data.imageio import ImageReadError
from assurexray.inference.classifier import Classifier, Prepared
from assurexray.inference.drift import drift_report
from assurexray.inference.features import content_columns
from assurexray.inference.ood import OodScorer, RejectedInput, energy_score, fit_scorer, msp_score
from assurexray.inference.reference import Reference
from assurexray.params import OodParams, ReferenceParams

log = logging.getLogger(__name__)

RECALL = 0.95


@dataclass(frozen=True)
class Summary:
    logits: np.ndarray       # (N, K)
    embeddings: np.ndarray   # (N, D)
    stats: np.ndarray        # (N, len(FEATURES))
    kept: np.ndarray         # positions of the inputs that reached the model
    rejected: list[str]      # "position: reason" of the others

    def content(self) -> np.ndarray:
        return self.stats[:, content_columns()]


def summarize(classifier: Classifier, items: Sequence, decode: Callable[[Any], Prepared],
              batch_size: int, desc: str = "summarize") -> Summary:
    """Decode ``items`` one by one, forward them in batches; unreadable or rejected items are
    listed, not raised."""
    chunks, kept, rejected = [], [], []
    with progress(total=len(items), desc=desc, unit="img") as bar:
        for start in range(0, len(items), batch_size):
            prepared = []
            for i in range(start, min(start + batch_size, len(items))):
                try:
                    prepared.append(decode(items[i]))
                    kept.append(i)
                except (ImageReadError, RejectedInput) as exc:
                    rejected.append(f"{i}: {exc}")
            if prepared:
                logits, emb = classifier.forward(np.stack([p.pixels for p in prepared]))
                chunks.append((logits, emb, np.stack([p.stats for p in prepared])))
            bar.update(min(batch_size, len(items) - start))
    if not chunks:
        raise ValueError(f"{desc}: none of the {len(items)} inputs could be classified")
    logits, emb, stats = (np.concatenate(parts) for parts in zip(*chunks))
    return Summary(logits, emb, stats, np.array(kept), rejected)


def subset(summary: Summary, mask: np.ndarray) -> Summary:
    """The inputs of ``summary`` selected by a boolean mask over its kept rows."""
    return Summary(summary.logits[mask], summary.embeddings[mask], summary.stats[mask],
                   summary.kept[mask], [])


def build_reference(checkpoint_sha256: str, train: Summary, train_labels: np.ndarray,
                    val: Summary, params: ReferenceParams, ood: OodParams, seed: int) -> Reference:
    """Training image statistics; a PCA fitted on the training embeddings and a sample of
    validation embeddings for the drift test (the network was fitted on the training images,
    so their embeddings sit closer to its classes than a new image's do; the PCA is not fitted
    on the sample, which would bias the sample against new windows); the OOD scorer (fitted on
    train, threshold on validation)."""
    dims = min(params.embedding_dims, *train.embeddings.shape)
    pca = PCA(n_components=dims, random_state=seed).fit(train.embeddings)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(val.embeddings), size=min(params.sample_size, len(val.embeddings)),
                        replace=False)
    scorer = fit_scorer(train.embeddings, train_labels[train.kept], train.content(),
                        val.embeddings, val.content(), ood.false_alarm_rate)
    return Reference(checkpoint_sha256, train.stats, pca.mean_, pca.components_,
                     pca.transform(val.embeddings[sample]), scorer, ood)


def _separation(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict:
    """AUROC (OOD positive) and the in-distribution false-alarm rate at 95% OOD recall."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)),
            "fpr_at_95_recall": float(fpr[np.searchsorted(tpr, RECALL, side="left")])}


def ood_evaluation(scorer: OodScorer, in_dist: Summary, sets: dict[str, Summary],
                   n_generated: dict[str, int]) -> dict:
    """Per generated set: our score and the two baselines, plus the share flagged at the
    validation threshold (inputs rejected before the model count as flagged)."""
    parts_id = scorer.parts(in_dist.embeddings, in_dist.content())
    ours_id = parts_id.max(axis=1)
    out: dict[str, Any] = {"in_distribution": {"n": int(len(ours_id)),
                               "false_alarm_rate": float(np.mean(ours_id > scorer.threshold))},
           "sets": {}}
    for name, summary in sets.items():
        parts = scorer.parts(summary.embeddings, summary.content())
        ours = parts.max(axis=1)
        n = n_generated[name]
        out["sets"][name] = {
            "n": n, "rejected_before_model": len(summary.rejected),
            "flagged_rate": float((np.sum(ours > scorer.threshold) + len(summary.rejected)) / n),
            "combined": _separation(ours_id, ours),
            "embedding_only": _separation(parts_id[:, 0], parts[:, 0]),
            "content_only": _separation(parts_id[:, 1], parts[:, 1]),
            "max_softmax": _separation(msp_score(in_dist.logits), msp_score(summary.logits)),
            "energy": _separation(energy_score(in_dist.logits), energy_score(summary.logits))}
    return out


def drift_error_rates(ref: Reference, held_out: Summary | None, shifted: dict[str, Summary],
                      window: int, windows: int, alpha: float, permutations: int,
                      seed: int) -> dict:
    """False-alarm rate on windows of held-out in-distribution images (None: there are none)
    and detection rate on windows of each shifted set (windows drawn without replacement
    inside, with between). How long a report took is logged, not returned: a timing in a
    tracked output would change it on every identical rerun."""
    rng = np.random.default_rng(seed)
    seconds = []

    def rate(summary: Summary) -> dict:
        size = min(window, len(summary.stats))
        verdicts = []
        for k in range(windows):
            pick = rng.choice(len(summary.stats), size=size, replace=False)
            report = drift_report(ref, summary.stats[pick], summary.embeddings[pick],
                                  alpha, permutations, seed=seed + k)
            verdicts.append(report["drift"])
            seconds.append(report["seconds"])
        return {"window": size, "windows": windows, "drift_rate": float(np.mean(verdicts))}

    rates = {"alpha": alpha, "permutations": permutations,
             "held_out": rate(held_out) if held_out is not None else {
                 "note": "no held-out images of the training centers (their validation images "
                         "are the reference)"},
             "shifted": {name: rate(summary) for name, summary in shifted.items()}}
    log.info("drift reports: at most %.3f s each over %d windows", max(seconds), len(seconds))
    return rates
