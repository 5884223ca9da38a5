"""The BTXRD release format: the real metadata and LabelMe files read back to the published counts."""
import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from assurexray.data import btxrd
from assurexray.data.schema import INDEX_COLUMNS

# README table (published): images per center and class.
PUBLISHED = {1: {"Normal": 1593, "Benign": 1110, "Malignant": 235},
             2: {"Normal": 259, "Benign": 214, "Malignant": 76},
             3: {"Normal": 27, "Benign": 201, "Malignant": 31}}
PUBLISHED_VIEWS = {"frontal": 2181, "lateral": 1269, "oblique": 296}
# annotation_stats.md: files by number of lesions in the 84-file sample.
LESIONS_PER_FILE = {1: 75, 2: 6, 3: 2, 4: 1}


def tiny_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpeg", np.full((12, 10), 128, np.uint8))
    return buf.tobytes()


@pytest.fixture(scope="module")
def real_release(shared_btxrd, tmp_path_factory) -> Path:
    """The real metadata as dataset.xlsx, the real annotations, a tiny JPEG per image id."""
    root = tmp_path_factory.mktemp("release") / "BTXRD"
    (root / "images").mkdir(parents=True)
    meta = pd.read_csv(shared_btxrd / "dataset.csv")
    meta.to_excel(root / "dataset.xlsx", index=False, engine="openpyxl")
    data = tiny_jpeg()
    for name in meta["image_id"]:
        (root / "images" / name).write_bytes(data)
    shutil.copytree(shared_btxrd / "annotations", root / "Annotations")
    return root


@pytest.fixture(scope="module")
def real_ingest(real_release):
    return btxrd.ingest_btxrd_dir(real_release)


def test_column_constants_follow_the_release_header(shared_btxrd):
    header = (shared_btxrd / "dataset.csv").read_text().splitlines()[0].split(",")
    assert btxrd.METADATA_COLUMNS == header
    assert len(btxrd.SITE_COLUMNS) == 15
    assert btxrd.SUBTYPE_COLUMNS == btxrd.BENIGN_SUBTYPES + btxrd.MALIGNANT_SUBTYPES


def test_real_release_gives_the_published_counts(real_ingest):
    index, notes = real_ingest
    assert list(index.columns) == INDEX_COLUMNS
    assert index["label"].value_counts().to_dict() == {"Normal": 1879, "Benign": 1525, "Malignant": 342}
    table = pd.crosstab(index["center"], index["label"])
    assert {int(c): table.loc[c].to_dict() for c in table.index} == PUBLISHED
    assert index["view"].value_counts().to_dict() == PUBLISHED_VIEWS
    assert (index["ingest_issue"] == "").all(), index.loc[index["ingest_issue"] != "", "ingest_issue"]
    assert notes.empty
    assert index["image_id"].is_unique and index["image_id"].str.fullmatch(r"IMG\d{6}").all()
    assert (index[["width", "height"]] == [10, 12]).all().all()
    assert (index.loc[index["label"] == "Normal", "sites"] == "").all()
    assert (index.loc[index["label"] != "Normal", "subtype"] != "").all()


def test_real_release_jpg_files_match_on_stem(real_ingest):
    index, _ = real_ingest
    jpg = index[index["file"].str.endswith(".jpg")]
    assert len(jpg) == 27 and (jpg["label"] == "Normal").all()


def test_real_annotations_attach_to_their_rows(real_ingest, shared_btxrd):
    index, _ = real_ingest
    annotated = index[index["annotation"] != ""]
    files = (shared_btxrd / "annotations").glob("*.json")
    assert sorted(annotated["image_id"]) == sorted(p.stem for p in files)
    assert (annotated["label"] != "Normal").all()


def test_read_metadata_xlsx_equals_csv(real_release, shared_btxrd):
    xlsx = btxrd.read_metadata(real_release / "dataset.xlsx")
    csv = btxrd.read_metadata(shared_btxrd / "dataset.csv")
    pd.testing.assert_frame_equal(xlsx, csv)


def test_read_metadata_names_file_and_missing_columns(tmp_path, shared_btxrd):
    path = tmp_path / "dataset.csv"
    meta = pd.read_csv(shared_btxrd / "dataset.csv", nrows=3)
    meta.drop(columns=["benign", "hip bone"]).to_csv(path, index=False)
    with pytest.raises(btxrd.MetadataError, match=r"dataset\.csv.*\['hip bone', 'benign'\]"):
        btxrd.read_metadata(path)


def test_every_real_annotation_parses_with_the_published_lesion_counts(shared_btxrd):
    files = sorted((shared_btxrd / "annotations").glob("*.json"))
    per_file = Counter(len(btxrd.parse_labelme(p)) for p in files)
    assert dict(per_file) == LESIONS_PER_FILE
    for path in files:
        parsed = btxrd.read_labelme(path)
        assert parsed.image_path == f"{path.stem}.jpeg"
        for lesion in parsed.lesions:
            x0, y0, x1, y1 = lesion.box
            poly = np.array(lesion.polygon)
            assert x0 < x1 and y0 < y1
            assert (poly >= [x0 - 1, y0 - 1]).all() and (poly <= [x1 + 1, y1 + 1]).all(), path.name


def test_rppr_file_pairs_by_overlap_not_position(shared_btxrd):
    path = shared_btxrd / "annotations" / "IMG001767.json"
    kinds = [s["shape_type"][0] for s in json.loads(path.read_text())["shapes"]]
    assert "".join(kinds) == "rppr"
    lesions = btxrd.parse_labelme(path)
    assert len(lesions) == 2
    for lesion in lesions:
        poly = np.array(lesion.polygon)
        x0, y0, x1, y1 = lesion.box
        assert (poly >= [x0 - 1, y0 - 1]).all() and (poly <= [x1 + 1, y1 + 1]).all()


def labelme(shapes, **top) -> dict:
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": "IMG000001.jpeg",
           "imageData": None, "imageHeight": 100, "imageWidth": 80}
    return {**doc, **top}


def rect(points, label="osteosarcoma"):
    return {"label": label, "points": points, "shape_type": "rectangle"}


def poly(points, label="osteosarcoma"):
    return {"label": label, "points": points, "shape_type": "polygon"}


LESION_A = [rect([[10, 10], [30, 40]]), poly([[12, 12], [28, 15], [20, 38]])]
LESION_B = [rect([[50, 60], [70, 90]]), poly([[52, 62], [68, 70], [60, 88]])]


def write(tmp_path, doc, name="IMG000001.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_pairs_by_overlap_in_any_order_and_normalizes_corners(tmp_path):
    flipped = rect([[70, 90], [50, 60]])          # bottom-right first
    shapes = [LESION_A[0], LESION_B[1], LESION_A[1], flipped]
    lesions = btxrd.parse_labelme(write(tmp_path, labelme(shapes)))
    assert [lesion.box for lesion in lesions] == [(10, 10, 30, 40), (50, 60, 70, 90)]
    assert lesions[1].polygon == ((52, 62), (68, 70), (60, 88))


@pytest.mark.parametrize("doc, reason", [
    ("{not json", "not valid JSON"),
    ([1, 2], "top level is list"),
    (labelme([]), "'shapes' is missing or empty"),
    ({"version": "5.4.1"}, "'shapes' is missing or empty"),
    (labelme([rect([[1, 1], [5, 5], [9, 9]]), poly([[1, 1], [5, 1], [5, 5]])]), "rectangle has 3 points"),
    (labelme([rect([[1, 1], [5, 5]]), poly([[1, 1], [5, 1]])]), "polygon has 2 points"),
    (labelme([{"label": "x", "points": [[1, 1]], "shape_type": "circle"}]),
     "unsupported shape_type 'circle'"),
    (labelme(LESION_A + [LESION_B[1]]), "1 rectangle(s) but 2 polygon(s)"),
    (labelme([LESION_A[0], LESION_B[1]]), "overlaps no polygon with the same label"),
    (labelme([LESION_A[0], poly([[12, 12], [28, 15], [20, 38]], label="other mt")]), "same label"),
    (labelme([rect([[1, "a"], [5, 5]]), LESION_A[1]]), "non-numeric points"),
    (labelme(LESION_A, imageWidth=None), "'imageWidth' is None"),
])
def test_malformed_annotations_are_rejected_with_the_reason(tmp_path, doc, reason):
    path = write(tmp_path, doc)
    with pytest.raises(btxrd.AnnotationError) as err:
        btxrd.parse_labelme(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def meta_row(image_id, label="Normal", center=1, **flags):
    row = {c: 0 for c in btxrd.METADATA_COLUMNS}
    row.update(image_id=image_id, center=center, age=30, gender="F", frontal=1, **{"lower limb": 1})
    if label != "Normal":
        row.update(tumor=1, femur=1, **{label.lower(): 1})
        row["osteosarcoma" if label == "Malignant" else "osteochondroma"] = 1
    row.update(flags)
    return row


@pytest.mark.parametrize("flags, expected", [
    ({}, []),
    ({"malignant": 1, "osteosarcoma": 1},
     ["benign=1 and malignant=1", "subtype 'osteochondroma' is benign but benign=1, malignant=1"]),
    ({"osteosarcoma": 1}, ["subtype 'osteosarcoma' is malignant but benign=1, malignant=0"]),
    ({"tumor": 0}, ["tumor=0 but benign=1", "subtype 'osteochondroma'=1 but tumor=0"]),
    ({"benign": 0},
     ["tumor=1 but benign=0 and malignant=0", "subtype 'osteochondroma' is benign but benign=0"]),
    ({"osteochondroma": 0}, ["tumor=1 but no subtype column set"]),
    ({"femur": "x"}, ["column 'femur' is 'x', expected 0 or 1"]),
])
def test_label_issues_name_the_contradicting_columns(flags, expected):
    issues = btxrd.label_issues(meta_row("IMG000001.jpeg", "Benign", **flags))
    for text in expected:
        assert any(text in issue for issue in issues), (text, issues)
    assert bool(issues) == bool(expected)


def test_class_rule_matches_the_readme():
    assert btxrd.class_of_row({"malignant": 1, "benign": 1}) == "Malignant"
    assert btxrd.class_of_row({"malignant": 0, "benign": 1.0}) == "Benign"
    assert btxrd.class_of_row({"malignant": "0", "benign": 0}) == "Normal"


@pytest.fixture
def quirky_release(tmp_path) -> Path:
    """A five-row release with every layout quirk the ingest must record."""
    root = tmp_path / "BTXRD"
    (root / "images").mkdir(parents=True)
    (root / "Annotations" / "Annotations").mkdir(parents=True)
    rows = [meta_row("IMG000001.jpeg", "Benign"), meta_row("IMG000002.jpeg", "Malignant", center=2),
            meta_row("IMG000003.jpeg", "Benign", tumor=0), meta_row("IMG000004.jpeg"),
            meta_row("IMG000005.jpeg")]
    pd.DataFrame(rows, columns=btxrd.METADATA_COLUMNS).to_excel(root / "dataset.xlsx", index=False)
    (root / "~$dataset(total).xlsx").write_bytes(b"\x0aowner")
    data = tiny_jpeg()
    for name in ["IMG000001.jpeg", "IMG000002.jpeg", "IMG000003.jpeg", "IMG000005.jpg", "IMG000009.jpeg"]:
        (root / "images" / name).write_bytes(data)
    (root / "images" / "Thumbs.db").write_bytes(b"x")
    doc = json.dumps(labelme(LESION_A))
    for stem in ["IMG000001", "IMG000002", "IMG000007"]:
        write(root / "Annotations", doc, f"{stem}.json")
    write(root / "Annotations" / "Annotations", doc, "IMG000001.json")
    return root


def test_ingest_records_every_quirk_and_drops_nothing(quirky_release):
    index, notes = btxrd.ingest_btxrd_dir(quirky_release)
    by_id = index.set_index("image_id")
    assert list(by_id.index) == [f"IMG00000{i}" for i in (1, 2, 3, 4, 5, 9)]
    assert by_id.loc["IMG000001", "annotation"].endswith("Annotations/IMG000001.json")
    assert by_id.loc["IMG000002", ["label", "center", "sites", "subtype", "region", "view"]].tolist() == [
        "Malignant", "2", "femur", "osteosarcoma", "lower limb", "frontal"]
    assert "tumor=0 but benign=1" in by_id.loc["IMG000003", "ingest_issue"]
    assert by_id.loc["IMG000004", ["file", "ingest_issue", "width"]].tolist() == [
        "", "image file missing", -1]
    assert by_id.loc["IMG000005", "file"].endswith("IMG000005.jpg")      # .jpeg id, .jpg file
    assert by_id.loc["IMG000005", "ingest_issue"] == ""
    assert by_id.loc["IMG000009", ["label", "ingest_issue"]].tolist() == ["", "no metadata row"]
    assert by_id.loc["IMG000001", ["width", "height"]].tolist() == [10, 12]
    reasons = {Path(p).relative_to(quirky_release).as_posix(): r
               for p, r in zip(notes["path"], notes["reason"])}
    assert reasons == {
        "~$dataset(total).xlsx": "Excel lock file, ignored",
        "Annotations/Annotations/IMG000001.json": "stray nested Annotations/Annotations/ copy, ignored",
        "Annotations/IMG000007.json": "annotation without image",
        "images/Thumbs.db": "not part of the BTXRD layout, ignored",
    }


def test_ingest_keeps_the_file_named_like_the_id_when_two_share_a_stem(quirky_release):
    (quirky_release / "images" / "IMG000001.jpg").write_bytes(tiny_jpeg())
    index, notes = btxrd.ingest_btxrd_dir(quirky_release)
    assert index.set_index("image_id").loc["IMG000001", "file"].endswith("IMG000001.jpeg")
    assert "second file for image IMG000001" in notes.set_index("path").loc[
        str(quirky_release / "images" / "IMG000001.jpg"), "reason"]


def test_unreadable_image_gets_minus_one_size(quirky_release):
    (quirky_release / "images" / "IMG000002.jpeg").write_bytes(b"")
    index, _ = btxrd.ingest_btxrd_dir(quirky_release)
    assert index.set_index("image_id").loc["IMG000002", ["width", "height"]].tolist() == [-1, -1]


def test_ingest_without_metadata_names_the_folder(tmp_path):
    (tmp_path / "~$dataset.xlsx").write_bytes(b"x")
    with pytest.raises(btxrd.MetadataError, match=r"no dataset\.xlsx"):
        btxrd.ingest_btxrd_dir(tmp_path)


@pytest.mark.parametrize("name, content, reason", [
    ("dataset.xlsx", b"not a zip", "cannot read the metadata table"),
    ("dataset.txt", b"", "expected an .xlsx or .csv"),
])
def test_unreadable_metadata_names_the_file(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(btxrd.MetadataError, match=reason) as err:
        btxrd.read_metadata(tmp_path / name)
    assert name in str(err.value)
