"""The twin's metadata table: patients as runs of views, cells by class and center, duplicates."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from assurexray.data import btxrd
from assurexray.data.synthetic.figures import (
    AGE_DECILES,
    CELL_COUNTS,
    DUPLICATE_PAIRS,
    JPG_IMAGES,
    MALE_SHARE,
    REGION_OF_SCENE,
    RELEASE_IMAGES,
    SITES,
    SUBTYPE_SHARES,
    TUMOUR_COUNTS,
    VIEW_COUNTS,
    VIEWS_PER_PATIENT,
)
from assurexray.data.synthetic.rng import choice_by_share, normalized, rng_for


@dataclass(frozen=True)
class Patient:
    index: int
    center: int
    label: str
    subtype: str          # '' for normals
    sites: tuple[str, ...]
    scene: str
    bone: str             # bone carrying the lesion (normals: where a lesion would frame)
    age: int
    sex: str
    frame_subtype: str    # subtype whose lesion position frames the image (normals: drawn)



@dataclass(frozen=True)
class Row:
    number: int           # IMG%06d
    patient: Patient
    view: str
    suffix: str = ".jpeg"
    duplicate_of: int = 0  # number of the row whose bytes this one copies (0: none)

    @property
    def image_id(self) -> str:
        return f"IMG{self.number:06d}"


def allocate(n: int, weights) -> list[int]:
    """Largest-remainder allocation of ``n`` items over ``weights`` (each share floor or ceil)."""
    w = np.asarray(weights, dtype=float)
    quota = n * w / w.sum()
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def plan_rows(n_images: int, seed: int) -> list[Row]:
    """The twin's rows in release order: cells by class and center, patients as runs of views."""
    rng = rng_for(seed, 0)
    rows: list[Row] = []
    patients = 0
    for (center, label), count in zip(CELL_COUNTS, allocate(n_images, list(CELL_COUNTS.values()))):
        while count > 0:
            views = min(count, 1 + int(rng.choice(len(VIEWS_PER_PATIENT), p=VIEWS_PER_PATIENT)))
            patient = _draw_patient(rng, patients, center, label)
            rows += [Row(len(rows) + k + 1, patient, "") for k in range(views)]
            patients += 1
            count -= views
    rows = _assign_views(rows, rng)
    n_jpg = max(1, round(n_images * JPG_IMAGES / RELEASE_IMAGES))
    rows[-n_jpg:] = [replace(r, suffix=".jpg") for r in rows[-n_jpg:]]
    return _plant_duplicates(rows, rng, max(1, round(n_images * DUPLICATE_PAIRS / RELEASE_IMAGES)))


def _draw_patient(rng, index: int, center: int, label: str) -> Patient:
    subtype = choice_by_share(rng, SUBTYPE_SHARES[label]) if label != "Normal" else ""
    frame_subtype = subtype or choice_by_share(rng, SUBTYPE_SHARES[choice_by_share(rng, TUMOUR_COUNTS)])
    sites, _, scenes = SITES[rng.choice(len(SITES), p=normalized([s[1] for s in SITES]))]
    scene, bone, _ = scenes[rng.choice(len(scenes), p=normalized([s[2] for s in scenes]))]
    age = int(round(np.interp(rng.uniform(0, 10), np.arange(11), AGE_DECILES[label])))
    sex = "M" if rng.uniform() < MALE_SHARE[label] else "F"
    return Patient(index, center, label, subtype, sites if subtype else (), scene, bone, age, sex,
                   frame_subtype)


def _assign_views(rows: list[Row], rng) -> list[Row]:
    """Views in the published proportions, sorted frontal-lateral-oblique within a patient."""
    views = np.repeat(list(VIEW_COUNTS), allocate(len(rows), list(VIEW_COUNTS.values())))
    views = views[rng.permutation(len(views))]
    rank = {v: i for i, v in enumerate(VIEW_COUNTS)}
    out, start = [], 0
    while start < len(rows):
        stop = start
        while stop < len(rows) and rows[stop].patient.index == rows[start].patient.index:
            stop += 1
        for row, view in zip(rows[start:stop], sorted(views[start:stop], key=rank.get)):
            out.append(replace(row, view=str(view)))
        start = stop
    return out


def _plant_duplicates(rows: list[Row], rng, n_pairs: int) -> list[Row]:
    """Turn single-view rows into byte copies of another patient's image in the same cell."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r.patient.index] = counts.get(r.patient.index, 0) + 1
    eligible = [r for r in rows if counts[r.patient.index] == 1 and r.suffix == ".jpeg"]
    used: set[int] = set()
    for target in [eligible[i] for i in rng.permutation(len(eligible))]:
        if n_pairs == 0:
            break
        cell = (target.patient.center, target.patient.label)
        sources = [r for r in rows if (r.patient.center, r.patient.label) == cell
                   and r.number not in used | {target.number} and r.suffix == ".jpeg"]
        if target.number in used or not sources:
            continue
        source = sources[rng.integers(len(sources))]
        rows[target.number - 1] = replace(target, patient=source.patient, view=source.view,
                                          duplicate_of=source.number)
        used |= {source.number, target.number}
        n_pairs -= 1
    return rows


def metadata_row(row: Row) -> list:
    """One dataset.xlsx row (the 37 release columns)."""
    p = row.patient
    flags = dict.fromkeys(btxrd.FLAG_COLUMNS, 0)
    if p.label != "Normal":
        for column in ("tumor", p.label.lower(), p.subtype, *p.sites):
            flags[column] = 1
    flags[REGION_OF_SCENE[p.scene]] = 1
    flags[row.view] = 1
    return [f"{row.image_id}.jpeg", p.center, p.age, p.sex] + [flags[c] for c in btxrd.FLAG_COLUMNS]
