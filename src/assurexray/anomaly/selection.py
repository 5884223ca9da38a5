"""Fitting a feature detector on the train normals and choosing its settings on validation.

Every candidate (image size x layer set x detector settings x aggregation) is fitted on the
train normals' features only and scored on the validation images (normals and tumours); the
highest validation AUC tumour-vs-normal wins, ties going to the earlier candidate (the grid
lists cheaper settings first). Test is not read here. A PatchCore candidate whose memory bank
would exceed ``max_bank_mb`` is recorded as skipped, not fitted.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from assurexray.anomaly import padim, patchcore
from assurexray.anomaly.detector import aggregate, patch_maps, state_bytes
from assurexray.anomaly.features import flatten_patches, patch_features
from assurexray.errors import AssureXRayError
from assurexray.evaluation.metrics import ovr_auc
from assurexray.params import AnomalyParams

Levels = dict[int, torch.Tensor]


class SelectionError(AssureXRayError, ValueError):
    """No candidate could be fitted (e.g. every memory bank over the size cap)."""


def patchcore_states(params: AnomalyParams, train: Levels, layers: list[int], seed: int
                     ) -> Iterator[tuple[dict, dict | None]]:
    """(settings, state or None when over the size cap) for each coreset ratio; one greedy run
    serves every ratio (its first n picks are the run to n)."""
    pc = params.patchcore
    flat = flatten_patches(patch_features(train, layers))
    sizes = {r: max(1, math.ceil(r * len(flat))) for r in pc.coreset_ratios}
    order = patchcore.coreset(flat, max(sizes.values()), pc.coreset_pool, pc.projection_dim, seed)
    for ratio, n in sizes.items():
        bank = flat[order[:n]].contiguous()
        over = bank.numel() * bank.element_size() > pc.max_bank_mb * 2 ** 20
        yield {"coreset_ratio": ratio, "bank_patches": n}, None if over else {"bank": bank}


def patchcore_val_maps(params: AnomalyParams, layers: list[int], state: dict, val: Levels
                       ) -> Iterator[tuple[dict, torch.Tensor]]:
    """({"k": k}, validation patch maps) for every k, from one neighbour search."""
    by_k = patchcore.patch_scores_by_k(patch_features(val, layers), state["bank"],
                                       params.patchcore.neighbours)
    for k, maps in by_k.items():
        yield {"k": k}, maps


def padim_states(params: AnomalyParams, train: Levels, layers: list[int], seed: int
                 ) -> Iterator[tuple[dict, dict | None]]:
    features = patch_features(train, layers)
    channels = padim.channel_subset(features.shape[1], params.padim.dims, seed)
    mean, precision = padim.fit_gaussians(features[:, channels], params.padim.covariance_eps)
    yield {"dims": len(channels)}, {"channels": channels, "mean": mean, "precision": precision}


def padim_val_maps(params: AnomalyParams, layers: list[int], state: dict, val: Levels
                   ) -> Iterator[tuple[dict, torch.Tensor]]:
    yield {}, patch_maps({"detector": "padim", "layers": layers}, state, val)


STATES = {"patchcore": patchcore_states, "padim": padim_states}
VAL_MAPS = {"patchcore": patchcore_val_maps, "padim": padim_val_maps}


def select(detector: str, params: AnomalyParams, levels: dict[int, dict[str, Levels]],
           val_positive: np.ndarray, seed: int) -> tuple[dict, dict, list[dict]]:
    """(chosen config, its state, every candidate with its validation AUC).

    ``levels[size]`` holds the 'train' (train normals) and 'val' backbone level maps.
    """
    ft = params.features
    best: tuple[float, dict, dict] | None = None
    candidates = []
    for size in ft.image_sizes:
        for layers in ft.layer_sets:
            for settings, state in STATES[detector](params, levels[size]["train"], layers, seed):
                config = {"detector": detector, "image_size": size, "layers": sorted(layers),
                          "topk_percent": ft.topk_percent, **settings}
                if state is None:
                    candidates.append({**config, "skipped": "memory bank over max_bank_mb"})
                    continue
                for extra, maps in VAL_MAPS[detector](params, config["layers"], state,
                                                      levels[size]["val"]):
                    for how in ft.aggregations:
                        auc = float(ovr_auc(val_positive, aggregate(maps, how, ft.topk_percent)))
                        chosen = {**config, **extra, "aggregation": how}
                        candidates.append({**chosen, "val_auc": auc,
                                           "state_mb": state_bytes(state) / 2 ** 20})
                        if best is None or auc > best[0]:
                            best = (auc, chosen, state)
    if best is None:
        raise SelectionError(f"anomaly.{detector}: no candidate could be fitted: "
                             f"{candidates[0].get('skipped') if candidates else 'empty grid'}")
    return best[1], best[2], candidates
