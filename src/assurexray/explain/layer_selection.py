"""The Grad-CAM target layer, chosen on annotated validation images, never on the test set.

Which layer a CAM reads is an analysis choice like a threshold: it is made on validation data
and written into the metrics, and the test localization is then reported for that layer alone.
Each candidate (``models.cam_candidate_layers``: the family's a-priori layer, then timm's
deepest feature stages) gets the true-class CAM of a seeded sample of the annotated validation
images, scored like the test set (``localization.score_cam``). The highest pointing game wins;
energy pointing breaks a tie, then the candidate order (the a-priori layer first). Without an
annotated validation image the a-priori layer is kept and the metrics say so.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from assurexray.data.datasets import CachedDataset
from assurexray.explain import cam, localization

BY_VALIDATION = "validation pointing game"
A_PRIORI = "a priori: no annotated validation image"


def select_layer(model: torch.nn.Module, cache, image_ids: np.ndarray, y_true: np.ndarray,
                 transform, candidates: Sequence[str], *, method: str, batch_size: int,
                 image_size: int, threshold: float, max_images: int, seed: int) -> dict:
    """{"selected_layer", "selected_by", "n_validation", "candidates": {layer: summary}}.

    ``image_ids``/``y_true``: the annotated validation images (all of them; at most
    ``max_images`` of them are used, a seeded sample; 0 = all). ``summary`` is
    ``localization.summarize`` of the layer's true-class CAMs (None when nothing was scored).
    """
    candidates = list(candidates)
    if not len(image_ids):
        return {"selected_layer": candidates[0], "selected_by": A_PRIORI, "n_validation": 0,
                "candidates": dict.fromkeys(candidates)}
    sub = cam.seeded_subset(len(image_ids), max_images, seed)
    ids, labels = np.asarray(image_ids)[sub], np.asarray(y_true)[sub]
    lesions, content = localization.model_frame_annotations(cache, ids, image_size)
    dataset = CachedDataset(cache, ids, labels, transform)
    summaries = {}
    for layer in candidates:
        maps = cam.cams_for_dataset(model, dataset, labels, method, batch_size, layer)
        summaries[layer] = localization.summarize(
            [localization.score_cam(m, les, box, threshold)
             for m, les, box in zip(maps, lesions, content)])
    best = max(candidates, key=lambda layer: (summaries[layer]["pointing_game"],
                                              summaries[layer]["energy_pointing"],
                                              -candidates.index(layer)))
    return {"selected_layer": best, "selected_by": BY_VALIDATION, "n_validation": len(ids),
            "candidates": summaries}
