"""An offline synthetic "BTXRD twin": the release's exact layout, drawn radiographs.

The real release cannot ship with the project (CC BY-NC-ND, 840 MB), yet every stage must run end
to end offline on data with the same format, class x center mix, quirks and defects. The twin's
metadata comes from published figures only (the README class x center table and view counts,
proportions rounded from the paper's summary statistics); no row of the real table is copied.

Images are drawn from projected-thickness models of bones (hollow tubes and ellipsoids whose
chord length gives the bright cortex and darker medulla of a radiograph). The lesion is the
only class signal, apart from a deliberate per-center acquisition style (exposure, noise,
blur, size, borders, burned-in markers) that makes a center-holdout split generalize worse.
Every image is drawn from its own random generator (SeedSequence keyed by image number, and by
patient for what views of one patient share), so the output does not depend on drawing order.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2

from assurexray.console import progress
from assurexray.data import btxrd
from assurexray.data.btxrd import labelme_text
from assurexray.data.synthetic.acquisition import CENTER_STYLES
from assurexray.data.synthetic.figures import MIN_IMAGES, PLANTED_NAME, RELEASE_DIR
from assurexray.data.synthetic.metadata import Row, metadata_row, plan_rows
from assurexray.data.synthetic.quirks import copy_annotation, plant_defects, plant_quirks
from assurexray.data.synthetic.render import render_image
from assurexray.data.synthetic.rng import rng_for
from assurexray.data.synthetic.xlsx import xlsx_bytes

log = logging.getLogger(__name__)


def generate_twin(root: str | Path, n_images: int = 1200, seed: int = 42, defects: bool = True,
                  min_side: int = 320, max_side: int = 720) -> Path:
    """Write a BTXRD twin under ``root/BTXRD`` (replacing one already there) and describe its
    planted defects and quirks in ``root/planted_defects.json``; returns ``root/BTXRD``."""
    if n_images < MIN_IMAGES:
        raise ValueError(f"n_images={n_images}: the twin needs at least {MIN_IMAGES} images")
    if not 64 <= min_side <= max_side:
        raise ValueError(f"min_side={min_side}, max_side={max_side}: need 64 <= min_side <= max_side")
    root = Path(root)
    out = root / RELEASE_DIR
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "Annotations").mkdir()
    rows = plan_rows(n_images, seed)
    annotated = _write_images(out, rows, seed, min_side, max_side)
    meta = [metadata_row(r) for r in rows]
    planted = {"defects": plant_defects(out, rows, meta, annotated, rng_for(seed, 6)) if defects else {},
               "quirks": plant_quirks(out, rows, annotated, rng_for(seed, 5))}
    (out / "dataset.xlsx").write_bytes(xlsx_bytes(btxrd.METADATA_COLUMNS, meta))
    planted.update(seed=seed, n_images=n_images)
    (root / PLANTED_NAME).write_text(json.dumps(planted, indent=2, sort_keys=True) + "\n")
    log.info("synthetic twin: %d images (%d annotated) in %s", n_images, len(annotated), out)
    return out


def planted_defects(twin_dir: str | Path) -> dict:
    """The planted defects and quirks of a twin (``twin_dir`` as returned by generate_twin)."""
    return json.loads((Path(twin_dir).parent / PLANTED_NAME).read_text())


def _write_images(out: Path, rows: list[Row], seed: int, min_side: int, max_side: int) -> list[int]:
    """Draw and write every image and annotation; byte copies come last. Returns annotated row numbers."""
    annotated = []
    for row in progress(rows, desc="synthetic twin", unit="img"):
        if row.duplicate_of:
            continue
        image, lesions = render_image(row, seed, min_side, max_side)
        quality = CENTER_STYLES[row.patient.center].quality
        ok, jpeg = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {row.image_id} as JPEG")
        (out / "images" / f"{row.image_id}{row.suffix}").write_bytes(jpeg.tobytes())
        if lesions:
            reverse = rng_for(seed, 7, row.number).uniform() < 0.03
            text = labelme_text(f"{row.image_id}.jpeg", image.shape[1], image.shape[0], lesions, reverse)
            (out / "Annotations" / f"{row.image_id}.json").write_bytes(text.encode("utf-8"))
            annotated.append(row.number)
    for row in rows:
        if row.duplicate_of:
            source = rows[row.duplicate_of - 1]
            shutil.copyfile(out / "images" / f"{source.image_id}{source.suffix}",
                            out / "images" / f"{row.image_id}{row.suffix}")
            if source.number in annotated:
                copy_annotation(out, source.image_id, row.image_id)
                annotated.append(row.number)
    return sorted(annotated)
