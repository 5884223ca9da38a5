"""The release's known quirks and the planted defects that exercise the audit."""
from __future__ import annotations

import shutil
from pathlib import Path

from assurexray.data import btxrd
from assurexray.data.synthetic.figures import LOCK_FILE_NAME
from assurexray.data.synthetic.metadata import Row


def copy_annotation(out: Path, source_id: str, target_id: str) -> None:
    text = (out / "Annotations" / f"{source_id}.json").read_bytes()
    text = text.replace(f'"{source_id}.jpeg"'.encode(), f'"{target_id}.jpeg"'.encode())
    (out / "Annotations" / f"{target_id}.json").write_bytes(text)


def plant_quirks(out: Path, rows: list[Row], annotated: list[int], rng) -> dict:
    """The release's known quirks: nested Annotations copy, Excel lock file (duplicates and
    .jpg names are planned in the rows)."""
    nested = out / "Annotations" / "Annotations"
    nested.mkdir()
    picked = sorted(rng.choice(annotated, size=min(3, len(annotated)), replace=False))
    copied = [f"IMG{n:06d}.json" for n in picked]
    for name in copied:
        shutil.copyfile(out / "Annotations" / name, nested / name)
    # An Excel owner file: a length-prefixed user name padded to 165 bytes, as Excel writes it.
    (out / LOCK_FILE_NAME).write_bytes((b"\x0aAssureXRay" + b" " * 54).ljust(165, b"\x00"))
    return {
        "exact_duplicates": [[f"IMG{r.duplicate_of:06d}", r.image_id] for r in rows if r.duplicate_of],
        "jpg_extension": [r.image_id for r in rows if r.suffix == ".jpg"],
        "nested_annotations": [f"Annotations/Annotations/{name}" for name in copied],
        "lock_file": LOCK_FILE_NAME,
    }


def plant_defects(out: Path, rows: list[Row], meta: list[list], annotated: list[int], rng) -> dict:
    """One each of: truncated JPEG, zero-byte image, malformed annotation JSON, contradictory
    label columns, annotation without image. Never on a duplicate pair or a .jpg row."""
    dup = {r.duplicate_of for r in rows} | {r.number for r in rows if r.duplicate_of}
    free = [r for r in rows if r.number not in dup and r.suffix == ".jpeg"]
    normals = [r for r in free if r.patient.label == "Normal"]
    tumours = [r for r in free if r.number in annotated]
    truncated, zero = (normals[i] for i in rng.choice(len(normals), 2, replace=False))
    malformed, contradictory = (tumours[i] for i in rng.choice(len(tumours), 2, replace=False))
    path = out / "images" / f"{truncated.image_id}.jpeg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    (out / "images" / f"{zero.image_id}.jpeg").write_bytes(b"")
    path = out / "Annotations" / f"{malformed.image_id}.json"
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    meta[contradictory.number - 1][btxrd.METADATA_COLUMNS.index("tumor")] = 0
    orphan = f"IMG{len(rows) + 1:06d}"
    copy_annotation(out, contradictory.image_id, orphan)
    return {
        "truncated_jpeg": {"image_id": truncated.image_id, "path": f"images/{truncated.image_id}.jpeg"},
        "zero_byte_image": {"image_id": zero.image_id, "path": f"images/{zero.image_id}.jpeg"},
        "malformed_annotation": {"image_id": malformed.image_id,
                                 "path": f"Annotations/{malformed.image_id}.json"},
        "contradictory_labels": {"image_id": contradictory.image_id,
                                 "columns": ["tumor", contradictory.patient.label.lower()]},
        "annotation_without_image": {"image_id": orphan, "path": f"Annotations/{orphan}.json"},
    }
