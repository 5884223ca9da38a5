"""Small generated labelled sets (a manifest CSV of PNG files) and tiny projects reading them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tiny_project import make_project

SIDE = 96   # px of every generated image
BOX = (24, 30, 60, 66)   # x0, y0, x1, y1 of the bright square drawn on each non-normal image


def write_labelled_set(root: Path, classes: list[str], per_class: int = 18,
                       boxes: bool = False, seed: int = 0) -> Path:
    """``per_class`` images per class under ``root/imgs`` and ``root/labels.csv``
    (path,label,center,group[,x0,y0,x1,y1]); two views per patient group, three centers.
    A class other than 'Normal' carries a bright square (its box, with ``boxes``) whose
    brightness grows with the class index, so a tiny model can learn something."""
    rng = np.random.default_rng(seed)
    header = "path,label,center,group" + (",x0,y0,x1,y1" if boxes else "")
    rows = [header]
    for k, label in enumerate(classes):
        for i in range(per_class):
            pixels = rng.normal(90, 20, (SIDE, SIDE))
            if label != "Normal":
                x0, y0, x1, y1 = BOX
                pixels[y0:y1, x0:x1] += 60 + 40 * k
            rel = f"imgs/{label}_{i:02d}.png"
            (root / "imgs").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / rel)
            row = f"{rel},{label},{'ABC'[i % 3]},{label}_p{i // 2}"
            has_box = boxes and label != "Normal"
            rows.append(row + (("," + ",".join(map(str, BOX))) if has_box else (",,,," if boxes else "")))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def labelled_project(tmp: Path, classes: list[str], boxes: bool = False) -> Path:
    """A tiny project (tests/tiny_project.py) whose source is a generated manifest set."""
    study = tmp / "study"
    manifest = write_labelled_set(study, classes, boxes=boxes)
    return make_project(tmp / "project", {
        "data": {"source": "manifest", "tracked_path": str(study),
                 "manifest": {"path": str(manifest)}}})   # the default recipe, unchanged
