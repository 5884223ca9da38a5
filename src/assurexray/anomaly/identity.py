"""The identity check: does an autoencoder copy a lesion it has never seen, or remove it?

Normal images get one drawn lesion each (a smooth-edged ellipse, brighter on dark tissue and
darker on bright tissue, inside the radiograph). Per image, with d = lesioned - clean and
r = reconstruction(lesioned) - reconstruction(clean) over the lesion pixels:

- ``lesion_copy`` = <r, d> / <d, d>: 1 when the lesion comes out in the reconstruction as it
  went in (the skip-connection shortcut), 0 when it is removed (what anomaly detection needs);
- ``error_ratio``: mean squared error inside the lesion over that of the rest of the content;
- ``pointing_game``: the anomaly map's peak inside the lesion box, with its ``chance`` rate;
- ``lesion_raises_score``: per score, the share of images whose score rose with the lesion
  (paired: the same image with and without it), and the unpaired AUC clean vs lesioned.
"""
from __future__ import annotations

import numpy as np
import torch

from assurexray.anomaly.scoring import score_inputs
from assurexray.evaluation.metrics import ovr_auc
from assurexray.explain.localization import box_mask, pointing_game

CONTENT_LEVEL = 0.05  # pixels above this are radiograph, below it letterbox padding or air


def draw_lesions(clean: torch.Tensor, rng: np.random.Generator, radius=(0.07, 0.13),
                 contrast: float = 0.4) -> tuple[torch.Tensor, np.ndarray, list[list[float]]]:
    """(lesioned images, lesion masks (N, S, S) bool, boxes [x0, y0, x1, y1] in pixel edges)."""
    n, _, h, w = clean.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    out, masks, boxes = clean.clone(), np.zeros((n, h, w), bool), []
    for i in range(n):
        image = clean[i, 0].numpy()
        ry, rx = rng.uniform(radius[0], radius[1], size=2) * (h, w)
        inside = np.argwhere(image[int(ry):h - int(ry), int(rx):w - int(rx)] > CONTENT_LEVEL)
        cy, cx = (inside[rng.integers(len(inside))] + (int(ry), int(rx)) + 0.5 if len(inside)
                  else (h / 2, w / 2))
        dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        profile = np.clip((1 - dist) * 4, 0, 1)          # flat top, soft last quarter
        sign = 1.0 if image[dist <= 1].mean() < 0.5 else -1.0
        out[i, 0] = torch.from_numpy(np.clip(image + sign * contrast * profile, 0, 1)
                                     .astype(np.float32))
        masks[i] = dist <= 1
        boxes.append([cx - rx, cy - ry, cx + rx, cy + ry])
    return out, masks, boxes


def identity_check(model: torch.nn.Module, clean: torch.Tensor, score: dict, batch_size: int,
                   seed: int, device: torch.device | str = "cpu") -> dict:
    """Identity-check figures of ``model`` on ``clean`` (N, 1, S, S) normal images."""
    lesioned, masks, boxes = draw_lesions(clean, np.random.default_rng(seed))
    before = score_inputs(model, clean, score, batch_size, device)
    after = score_inputs(model, lesioned, score, batch_size, device)
    assert after.reconstructions is not None and before.reconstructions is not None  # an AE
    d = (lesioned - clean)[:, 0].numpy()
    r = after.reconstructions - before.reconstructions
    err = (lesioned[:, 0].numpy() - after.reconstructions) ** 2
    content = clean[:, 0].numpy() > CONTENT_LEVEL
    copy, ratio, hits, chance = [], [], [], []
    for i in range(len(clean)):
        m, bg = masks[i], content[i] & ~masks[i]
        copy.append(float((r[i][m] * d[i][m]).sum() / max((d[i][m] ** 2).sum(), 1e-12)))
        ratio.append(float(err[i][m].mean() / max(err[i][bg].mean(), 1e-12)) if bg.any() else np.nan)
        hits.append(pointing_game(after.maps[i], [boxes[i]]))
        in_box = box_mask([boxes[i]], m.shape) & content[i]
        chance.append(float(in_box.sum() / max(content[i].sum(), 1)))
    labels = np.r_[np.zeros(len(clean)), np.ones(len(clean))]
    return {"n": len(clean), "lesion_copy": float(np.mean(copy)),
            "error_ratio": float(np.nanmean(ratio)),
            "pointing_game": float(np.mean(hits)), "chance": float(np.mean(chance)),
            "lesion_raises_score": {name: float(np.mean(after.scores[name] > before.scores[name]))
                                    for name in before.scores},
            "auc_clean_vs_lesioned": {name: float(ovr_auc(labels, np.r_[before.scores[name],
                                                                          after.scores[name]]))
                                      for name in before.scores}}
