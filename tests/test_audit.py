"""The data audit: every check fires with its reason, counts reconcile, duplicates cluster."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import yaml
from PIL import Image

from assurexray.data import audit, audit_report, duplicates
from assurexray.data.schema import INDEX_COLUMNS, QUALITY_COLUMNS, DatasetInfo, read_index
from assurexray.params import AuditParams
from assurexray.reporting.render import SYNTHETIC_BANNER, header, render

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
PARAMS = AuditParams(near_duplicate_hamming=4, workers=1)


def texture(seed: int, h: int = 240, w: int = 200) -> np.ndarray:
    """A smooth random radiograph-like image (low frequencies carry the pHash)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def jpeg_bytes(img: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def labelme(path: Path, shapes: list[tuple[str, str, list]], w: int = 200, h: int = 240) -> str:
    doc = {"version": "5.4.1", "flags": {}, "imagePath": path.stem + ".jpeg", "imageData": None,
           "imageHeight": h, "imageWidth": w,
           "shapes": [{"label": label, "points": pts, "group_id": None, "description": "",
                       "shape_type": kind, "flags": {}, "mask": None} for kind, label, pts in shapes]}
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


def lesion(label: str, x0=20, y0=30, x1=90, y1=120) -> list[tuple[str, str, list]]:
    return [("rectangle", label, [[x0, y0], [x1, y1]]),
            ("polygon", label, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])]


def row(image_id: str, file: str, label: str, annotation: str = "", subtype: str = "",
        issue: str = "", center: str = "1") -> dict:
    return {**dict.fromkeys(INDEX_COLUMNS, ""), "image_id": image_id, "file": file, "label": label,
            "center": center, "view": "frontal", "sites": "femur", "subtype": subtype,
            "annotation": annotation, "width": 200, "height": 240, "ingest_issue": issue}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """One index row per check, plus clean controls; returns (index, notes, expected)."""
    d = tmp_path_factory.mktemp("handmade")

    def image(name: str, seed: int, data: bytes | None = None) -> str:
        path = d / f"{name}.jpeg"
        path.write_bytes(jpeg_bytes(texture(seed)) if data is None else data)
        return str(path)

    def ann(name: str, shapes, **size) -> str:
        return labelme(d / f"{name}.json", shapes, **size)

    osteo = "osteochondroma"
    good = jpeg_bytes(texture(1))
    near = texture(50)
    rows = [
        row("ok_benign", image("ok_benign", 1), "Benign", ann("ok_benign", lesion(osteo)), osteo),
        row("ok_normal", image("ok_normal", 2), "Normal"),
        row("missing", str(d / "nowhere.jpeg"), "Normal"),
        row("no_file", "", "Normal", issue="image file missing"),
        row("zero", image("zero", 0, b""), "Normal"),
        row("truncated", image("truncated", 0, good[: len(good) // 2]), "Normal"),
        row("not_image", image("not_image", 0, b"this is text, not a JPEG"), "Normal"),
        row("no_meta", image("no_meta", 3), "", issue="no metadata row"),
        row("contradict", image("contradict", 4), "Malignant", issue="benign=1 and malignant=1"),
        row("empty_label", image("empty_label", 5), ""),
        row("unknown_label", image("unknown_label", 6), "Weird"),
        row("bad_json", image("bad_json", 7), "Benign", str(d / "bad.json"), osteo),
        row("poly2", image("poly2", 8), "Benign", ann("poly2", lesion(osteo)[:1] + [
            ("polygon", osteo, [[1, 1], [5, 5]])]), osteo),
        row("rect3", image("rect3", 9), "Benign", ann("rect3", [
            ("rectangle", osteo, [[1, 1], [5, 5], [9, 9]])] + lesion(osteo)[1:]), osteo),
        row("outside", image("outside", 10), "Benign", ann("outside", lesion(osteo, x1=260)), osteo),
        row("wrong_label", image("wrong_label", 11), "Benign",
            ann("wrong_label", lesion("osteosarcoma")), osteo),
        row("wrong_size", image("wrong_size", 12), "Benign", ann("wrong_size", lesion(osteo), w=400), osteo),
        row("no_ann_file", image("no_ann_file", 13), "Benign", str(d / "gone.json"), osteo),
        row("unannotated", image("unannotated", 14), "Malignant"),
        row("normal_ann", image("normal_ann", 15), "Normal", ann("normal_ann", lesion(osteo))),
        row("ingest_ann", image("ingest_ann", 16), "Normal", issue="annotation box ignored: not numbers"),
        row("dup_a", image("dup_a", 20), "Normal"),
        row("dup_b", image("dup_b", 20), "Normal", center="2"),
        row("clash_a", image("clash_a", 21), "Normal"),
        row("clash_b", image("clash_b", 21), "Benign", ann("clash_b", lesion(osteo)), osteo),
        row("near_a", image("near_a", 0, jpeg_bytes(near, 95)), "Normal"),
        row("near_b", image("near_b", 0, jpeg_bytes(np.array(
            Image.fromarray(near).resize((150, 180), Image.BILINEAR)), 70)), "Malignant"),
        row("twice", image("twice_1", 22), "Normal"),
        row("twice", image("twice_2", 23), "Normal"),
    ]
    (d / "bad.json").write_text('{"shapes": [')
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    notes = pd.DataFrame([(str(d / "orphan.json"), "annotation without image")], columns=["path", "reason"])
    excluded = {
        "missing": audit.MISSING, "no_file": audit.MISSING, "zero": audit.ZERO_BYTE,
        "truncated": audit.TRUNCATED, "not_image": audit.UNREADABLE, "no_meta": audit.NO_METADATA,
        "contradict": audit.BAD_METADATA, "empty_label": audit.EMPTY_LABEL,
        "unknown_label": audit.UNKNOWN_LABEL, "clash_a": audit.DUPLICATE_LABEL_CONFLICT,
        "clash_b": audit.DUPLICATE_LABEL_CONFLICT, "twice": audit.REPEATED_ID,
    }
    warned = {
        "bad_json": audit.MALFORMED_ANNOTATION, "poly2": audit.BAD_SHAPE, "rect3": audit.BAD_SHAPE,
        "outside": audit.OUT_OF_BOUNDS, "wrong_label": audit.LABEL_MISMATCH,
        "wrong_size": audit.SIZE_MISMATCH, "no_ann_file": audit.ANNOTATION_MISSING_FILE,
        "unannotated": audit.UNANNOTATED, "normal_ann": audit.UNEXPECTED_ANNOTATION,
        "ingest_ann": audit.ANNOTATION_INGEST, "near_a": audit.NEAR_DUPLICATE_LABEL_CONFLICT,
        "near_b": audit.NEAR_DUPLICATE_LABEL_CONFLICT,
    }
    return index, notes, excluded, warned


@pytest.fixture(scope="module")
def result(handmade):
    index, notes, _, _ = handmade
    return audit.run_audit(index, notes, DatasetInfo("btxrd_dir", CLASSES, "x"), PARAMS)


def by_id(result) -> dict[str, dict]:
    return {r["image_id"]: r for r in result.table.to_dict("records")}


def test_every_exclusion_fires_with_its_reason(handmade, result):
    _, _, excluded, _ = handmade
    table = result.table
    for image_id, kind in excluded.items():
        rows = table[table["image_id"] == image_id]
        assert not rows["usable"].any(), image_id
        for reason in rows["reason"]:
            assert kind in {audit.kind_of(r) for r in reason.split("; ")}, (image_id, reason)
    assert set(table.loc[~table["usable"], "image_id"]) == set(excluded)
    assert (table.loc[table["usable"], "reason"] == "").all()


def test_every_warning_fires_and_keeps_the_image(handmade, result):
    _, _, _, warned = handmade
    rows = by_id(result)
    for image_id, kind in warned.items():
        r = rows[image_id]
        assert r["usable"], image_id
        assert kind in {audit.kind_of(w) for w in r["warnings"].split("; ")}, (image_id, r["warnings"])
        if kind in audit.ANNOTATION_WARNING_KINDS and r["annotation"]:
            assert not r["annotation_usable"], image_id
    assert rows["ok_benign"]["annotation_usable"] and rows["ok_benign"]["warnings"] == ""
    assert rows["ok_normal"]["warnings"] == "" and not rows["ok_normal"]["annotation_usable"]


def test_reason_strings_name_the_problem(result):
    rows = by_id(result)
    assert "nowhere.jpeg" in rows["missing"]["reason"]
    assert "truncated.jpeg" in rows["truncated"]["reason"]
    assert "benign=1 and malignant=1" in rows["contradict"]["reason"]
    assert "Weird" in rows["unknown_label"]["reason"]
    assert "clash_b" in rows["clash_a"]["reason"] and "Benign" in rows["clash_a"]["reason"]
    assert "3 points" in rows["rect3"]["warnings"] and "2 points" in rows["poly2"]["warnings"]
    assert "400x240" in rows["wrong_size"]["warnings"] and "200x240" in rows["wrong_size"]["warnings"]
    assert "osteosarcoma" in rows["wrong_label"]["warnings"]


def test_rows_in_equal_rows_out_and_counts_reconcile(handmade, result):
    index, notes, excluded, warned = handmade
    q, m = result.quality, result.metrics
    assert list(q.columns[: len(QUALITY_COLUMNS)]) == QUALITY_COLUMNS
    assert list(q["image_id"]) == list(index["image_id"])
    assert m["images_in"] == len(index) == m["usable"] + m["excluded"]
    assert m["excluded"] == sum(m["excluded_by_reason"].values()) == (~q["usable"]).sum()
    assert list(m["excluded_by_reason"]) == list(audit.EXCLUSION_KINDS)
    assert list(m["warnings_by_kind"]) == list(audit.WARNING_KINDS)
    assert all(m["warnings_by_kind"][k] >= 1 for k in set(warned.values()))
    assert m["notes"] == {"total": 1, "by_reason": {"annotation without image": 1}}
    usable = q["usable"].sum()
    assert sum(sum(c.values()) for c in m["class_by_center"].values()) == usable


def test_duplicates_cluster_and_stay_usable(result):
    rows = by_id(result)
    m = result.metrics
    assert rows["dup_a"]["dup_cluster"] and rows["dup_a"]["dup_cluster"] == rows["dup_b"]["dup_cluster"]
    assert rows["dup_a"]["sha256"] == rows["dup_b"]["sha256"] and rows["dup_a"]["usable"]
    assert rows["near_a"]["dup_cluster"] == rows["near_b"]["dup_cluster"] != rows["dup_a"]["dup_cluster"]
    assert rows["near_a"]["sha256"] != rows["near_b"]["sha256"]
    assert rows["ok_benign"]["dup_cluster"] == ""
    assert m["exact_duplicate_pairs"] == 2  # dup_a/dup_b and clash_a/clash_b
    assert m["near_duplicate_pairs"] >= 1
    assert m["duplicate_clusters"] == 3
    # unreadable files never join a cluster (all zero-byte files would share one sha256)
    assert rows["zero"]["dup_cluster"] == "" and rows["zero"]["phash"] == ""


def test_results_do_not_depend_on_worker_count(handmade, result):
    index, notes, _, _ = handmade
    two = audit.run_audit(index, notes, DatasetInfo("btxrd_dir", CLASSES, "x"),
                          AuditParams(near_duplicate_hamming=4, workers=2))
    pd.testing.assert_frame_equal(two.quality, result.quality)
    assert two.metrics == result.metrics


# --------------------------------------------------------------------------- pHash

def reference_phash(img: np.ndarray) -> int:
    """The same pHash with an explicit orthonormal DCT-II matrix instead of scipy.fft."""
    import cv2
    small = cv2.resize(img.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    n = np.arange(32)
    basis = np.sqrt(2 / 32) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    basis[0] /= np.sqrt(2)
    low = (basis @ small @ basis.T)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def test_phash_matches_explicit_dct_and_scipy_dct_is_orthonormal():
    x = np.random.default_rng(0).normal(size=(32, 32))
    assert np.allclose(scipy.fft.idctn(scipy.fft.dctn(x, norm="ortho"), norm="ortho"), x)
    for seed in range(5):
        img = texture(seed)
        assert duplicates.phash(img) == reference_phash(img)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_phash_properties():
    a = texture(1)
    assert hamming(duplicates.phash(a), duplicates.phash(a.copy())) == 0
    decoded = np.array(Image.open(io.BytesIO(jpeg_bytes(
        np.array(Image.fromarray(a).resize((150, 180), Image.BILINEAR)), 60))))
    assert hamming(duplicates.phash(a), duplicates.phash(decoded)) <= 4
    distances = [hamming(duplicates.phash(texture(i)), duplicates.phash(texture(i + 100))) for i in range(10)]
    assert min(distances) > 12 and np.mean(distances) > 24
    assert 0 <= duplicates.phash(a) < 2 ** 64


def test_near_pairs_matches_brute_force(monkeypatch):
    monkeypatch.setattr(duplicates, "HASH_BLOCK", 7)  # several blocks, a partial last one
    rng = np.random.default_rng(3)
    hashes = [int(h) for h in rng.integers(0, 2 ** 63, 40, dtype=np.int64)]
    hashes += [h ^ (1 << int(rng.integers(64))) for h in hashes[:10]] + [hashes[0]]
    brute = sorted((i, j, (hashes[i] ^ hashes[j]).bit_count()) for i in range(len(hashes))
                   for j in range(i + 1, len(hashes)) if (hashes[i] ^ hashes[j]).bit_count() <= 3)
    assert duplicates.near_pairs(hashes, 3) == brute
    assert len(brute) >= 11


def test_cluster_ids_join_chains_and_name_by_first_member():
    pairs = pd.DataFrame([(3, 5, 0, True), (1, 3, 2, False), (0, 6, 1, False)],
                         columns=["a", "b", "distance", "exact"])
    assert duplicates.cluster_ids(7, pairs) == ["dup001", "dup002", "", "dup002", "", "dup002", "dup001"]
    cycle = pd.concat([pairs, pd.DataFrame([(1, 5, 1, False)], columns=pairs.columns)])
    assert duplicates.cluster_ids(7, cycle) == duplicates.cluster_ids(7, pairs)  # a cycle adds nothing
    none = pairs.iloc[:0]
    assert duplicates.cluster_ids(3, none) == ["", "", ""] and duplicates.cluster_ids(0, none) == []


def test_jpeg_truncation_check():
    data = jpeg_bytes(texture(0))
    assert not audit.jpeg_truncated(data)
    assert not audit.jpeg_truncated(data + b"trailing bytes after EOI")
    assert audit.jpeg_truncated(data[:-200])
    assert not audit.jpeg_truncated(b"\x89PNG\r\n\x1a\n")


# --------------------------------------------------------------------------- outputs

def test_plots_and_report(result, tmp_path):
    figures = audit_report.write_plots(result, tmp_path / "plots")
    for name in ("class_by_center", "image_sizes", "views", "sites", "annotation_coverage"):
        assert isinstance(json.loads((tmp_path / "plots" / f"{name}.json").read_text()), list)
    assert all(p.stat().st_size > 1000 for p in figures.values())
    cells = json.loads((tmp_path / "plots" / "class_by_center.json").read_text())
    assert len(cells) == result.metrics["usable"]
    text = render("data_audit.md.j2", header=header("Data audit", "the audit stage", "the index",
                                                    result.info.source),
                  **audit_report.report_context(result, figures, tmp_path / "docs" / "data_audit.md"))
    head = "\n".join(text.splitlines()[:8])
    assert "Generated" in head and "not for clinical use" in head
    assert "synthetic" not in text.lower()
    m = result.metrics
    assert f"**{m['images_in']}** = usable **{m['usable']}** + excluded **{m['excluded']}**" in text
    for section in ("Reconciliation", "Class x center", "Image sizes", "Views and sites",
                    "Annotation coverage", "Duplicates", "Exclusions", "Warnings"):
        assert f"## {section}" in text
    for r in result.table[~result.table["usable"]].itertuples():
        assert f"| {r.image_id} |" in text
    assert "(../plots/class_by_center.png)" in text
    assert "orphan.json" in text  # every ingest note is listed


# --------------------------------------------------------------------------- stages on the twin

def run_stage(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_prepare_and_audit_stages_on_synthetic_twin(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_images=40, min_side=128, max_side=200)
    params["audit"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(str(REPO / "stages/prepare.py"), "--params", "params.yaml", "--raw", "data/raw",
              "--index", "data/index.csv", "--notes", "data/ingest_notes.csv",
              "--info", "data/dataset.json", cwd=tmp_path)
    run_stage(str(REPO / "stages/audit.py"), "--params", "params.yaml", "--index", "data/index.csv",
              "--notes", "data/ingest_notes.csv", "--info", "data/dataset.json",
              "--quality", "data/quality.csv", "--report", "reports/data_audit.md",
              "--metrics", "metrics/audit.json", "--plots", "plots/audit", cwd=tmp_path)
    index = read_index(tmp_path / "data/index.csv")
    quality = pd.read_csv(tmp_path / "data/quality.csv", dtype=str, keep_default_na=False)
    metrics = json.loads((tmp_path / "metrics/audit.json").read_text())
    assert list(quality["image_id"]) == list(index["image_id"])
    assert metrics["images_in"] == len(index) == metrics["usable"] + metrics["excluded"]
    assert metrics["excluded"] >= 3  # truncated, zero-byte, contradicting labels are planted
    report = (tmp_path / "reports/data_audit.md").read_text()
    assert SYNTHETIC_BANNER in "\n".join(report.splitlines()[:4])


def test_audit_flags_every_planted_defect_of_the_twin(tiny_twin):
    from assurexray.data import btxrd
    from assurexray.data.synthetic import writer

    index, notes = btxrd.ingest_btxrd_dir(tiny_twin)
    result = audit.run_audit(index, notes, DatasetInfo("synthetic", btxrd.CLASSES, str(tiny_twin)), PARAMS)
    planted = writer.planted_defects(tiny_twin)
    rows = by_id(result)
    d = planted["defects"]
    expected_exclusions = {d["truncated_jpeg"]["image_id"]: audit.TRUNCATED,
                           d["zero_byte_image"]["image_id"]: audit.ZERO_BYTE,
                           d["contradictory_labels"]["image_id"]: audit.BAD_METADATA}
    for image_id, kind in expected_exclusions.items():
        assert not rows[image_id]["usable"] and rows[image_id]["reason"].startswith(kind), rows[image_id]
    malformed = rows[d["malformed_annotation"]["image_id"]]
    assert malformed["usable"] and not malformed["annotation_usable"]
    assert audit.MALFORMED_ANNOTATION in malformed["warnings"]
    orphan = d["annotation_without_image"]["path"]
    assert notes["path"].str.endswith(orphan).sum() == 1
    assert set(result.table.loc[~result.table["usable"], "image_id"]) == set(expected_exclusions)
    for a, b in planted["quirks"]["exact_duplicates"]:
        assert rows[a]["dup_cluster"] and rows[a]["dup_cluster"] == rows[b]["dup_cluster"]
        assert rows[a]["sha256"] == rows[b]["sha256"] and rows[a]["usable"] and rows[b]["usable"]
    m = result.metrics
    assert m["exact_duplicate_pairs"] == len(planted["quirks"]["exact_duplicates"])
    assert m["images_in"] == len(index) == m["usable"] + m["excluded"] == len(result.quality)
    assert m["notes"]["total"] == len(notes) and sum(m["notes"]["by_reason"].values()) == len(notes)


def test_real_btxrd_annotations_pass_the_annotation_checks(shared_btxrd):
    """The 84 real LabelMe files agree with the real metadata subtypes and stay in bounds."""
    from assurexray.data import btxrd

    meta = btxrd.read_metadata(shared_btxrd / "dataset.csv")
    meta["stem"] = meta["image_id"].map(lambda i: Path(i).stem)
    subtypes = {r["stem"]: {c for c in btxrd.SUBTYPE_COLUMNS if btxrd.is_set(r[c])}
                for r in meta.to_dict("records")}
    files = sorted((shared_btxrd / "annotations").glob("*.json"))
    assert len(files) >= 80
    for path in files:
        doc = json.loads(path.read_text())
        findings = audit.annotation_findings(str(path), doc["imageWidth"], doc["imageHeight"],
                                             subtypes[path.stem])
        assert findings == [], (path.name, findings)
        wrong = audit.annotation_findings(str(path), doc["imageWidth"] // 2, doc["imageHeight"], {"other"})
        assert {audit.kind_of(f) for f in wrong} >= {audit.SIZE_MISMATCH, audit.LABEL_MISMATCH}
