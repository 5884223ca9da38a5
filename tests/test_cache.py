"""Letterbox geometry, point mapping and the decode-once image cache."""
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from assurexray.data import btxrd
from assurexray.data.audit import run_audit
from assurexray.data.cache import (
    CacheError,
    ImageCache,
    build_cache,
    content_box,
    letterbox,
    letterboxed_file,
    map_points,
)
from assurexray.data.imageio import read_image
from assurexray.data.schema import INDEX_COLUMNS, DatasetInfo, write_index
from assurexray.params import AuditParams

REPO = Path(__file__).resolve().parents[1]


def bright_box(img: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) of the pixels above mid-grey, as edges (corner convention)."""
    ys, xs = np.nonzero(img > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize("h,w,size", [(500, 300, 128), (300, 500, 128), (200, 200, 64),
                                      (3, 1, 32), (1, 7, 32), (1, 1, 16), (40, 30, 128)])
def test_letterbox_shape_and_placement(h, w, size):
    img = np.full((h, w), 200, dtype=np.uint8)
    out, scale, pad_x, pad_y = letterbox(img, size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert scale == pytest.approx(size / max(h, w))
    content = bright_box(out)
    assert max(content[2] - content[0], content[3] - content[1]) == size  # longer side fills
    assert content.tolist() == list(content_box(w, h, scale, pad_x, pad_y))
    assert abs((size - content[2]) - pad_x) <= 1 and abs((size - content[3]) - pad_y) <= 1


@pytest.mark.parametrize("h,w,size,box", [
    (500, 300, 128, (60, 100, 180, 400)),   # portrait, shrinking (INTER_AREA)
    (300, 700, 256, (33, 47, 401, 290)),    # landscape
    (60, 40, 200, (5, 10, 31, 52)),         # growing (INTER_LINEAR)
])
def test_mapped_box_lands_on_the_drawn_box(h, w, size, box):
    img = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255  # pixels x0..x1-1: the box's edges are x0 and x1
    out, scale, pad_x, pad_y = letterbox(img, size)
    mapped = map_points([[x0, y0], [x1, y1]], scale, pad_x, pad_y).ravel()
    np.testing.assert_allclose(mapped, bright_box(out), atol=1.0)


@pytest.mark.parametrize("h,w,size,box", [
    (1000, 700, 256, (120, 300, 420, 760)),   # decoded at 1/2, the box drawn in full pixels
    (640, 1024, 128, (33, 47, 801, 590)),     # decoded at 1/8
])
def test_reduced_jpeg_decode_keeps_the_full_image_geometry(tmp_path, h, w, size, box):
    img = np.full((h, w), 30, dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 230
    cv2.imwrite(str(tmp_path / "a.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out, scale, pad_x, pad_y, width, height = letterboxed_file(tmp_path / "a.jpg", size)
    full, *geometry = letterbox(read_image(tmp_path / "a.jpg"), size)
    assert (width, height) == (w, h) and [scale, pad_x, pad_y] == geometry
    assert np.abs(out.astype(float) - full).mean() < 2.0  # the same picture
    mapped = map_points([[x0, y0], [x1, y1]], scale, pad_x, pad_y).ravel()
    np.testing.assert_allclose(mapped, bright_box(out), atol=1.0)
    assert (out[:, :pad_x] == 0).all() and (out[:pad_y] == 0).all()  # padding stays black


def test_map_points_arithmetic():
    pts = map_points([[0, 0], [10, 20]], 0.5, 3, 7)
    np.testing.assert_allclose(pts, [[3, 7], [8, 17]])


def test_letterbox_rejects_non_grayscale():
    with pytest.raises(ValueError, match="uint8"):
        letterbox(np.zeros((10, 10, 3), dtype=np.uint8), 32)


# ------------------------------------------------------------------ cache

RECT = (30.0, 40.0, 90.0, 160.0)  # x0, y0, x1, y1 of the lesion in the first image


def labelme(path: Path, w: int, h: int, rect=RECT) -> str:
    x0, y0, x1, y1 = rect
    shapes = [
        {"label": "osteochondroma", "shape_type": "rectangle", "points": [[x0, y0], [x1, y1]]},
        {"label": "osteochondroma", "shape_type": "polygon",
         "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]},
    ]
    path.write_text(json.dumps({"version": "5.4.1", "shapes": shapes, "imagePath": "x.png",
                                "imageWidth": w, "imageHeight": h}))
    return str(path)


@pytest.fixture
def small_dataset(tmp_path):
    """Four readable images, one excluded. img0 is annotated; img1's annotation does not parse;
    img3's parses but the audit rejected it for localization."""
    rng = np.random.default_rng(0)
    rows, sizes = [], [(240, 120), (100, 180), (64, 64), (90, 300)]
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 100, size=(h, w), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        annotation = ""
        if i == 0:
            x0, y0, x1, y1 = map(int, RECT)
            img[y0:y1, x0:x1] = 255
            annotation = labelme(tmp_path / "img0.json", w, h)
        if i == 1:
            annotation = str(tmp_path / "img1.json")
            Path(annotation).write_text("{not json")
        if i == 3:
            annotation = labelme(tmp_path / "img3.json", w, h)
        cv2.imwrite(str(path), img)
        rows.append({"image_id": f"img{i}", "file": str(path), "annotation": annotation})
    (tmp_path / "bad.jpeg").write_bytes(b"")
    rows.append({"image_id": "bad", "file": str(tmp_path / "bad.jpeg"), "annotation": ""})
    index = pd.DataFrame([{**dict.fromkeys(INDEX_COLUMNS, ""), "width": -1, "height": -1, **r}
                          for r in rows], columns=INDEX_COLUMNS)
    usable = index["image_id"] != "bad"
    quality = pd.DataFrame({"image_id": index["image_id"], "usable": usable, "reason": "",
                            "warnings": "", "sha256": "", "phash": "", "dup_cluster": "",
                            "annotation_usable": index["image_id"].isin(["img0", "img1"])})
    return index, quality


def test_cache_round_trip(small_dataset, tmp_path):
    index, quality = small_dataset
    out = tmp_path / "cache"
    build_cache(index, quality, 64, out)
    cache = ImageCache(out)
    assert isinstance(cache.images, np.memmap) and cache.images.shape == (4, 64, 64)
    assert len(cache) == 4 and cache.size == 64
    assert list(cache.meta.columns) == ["image_id", "row", "scale", "pad_x", "pad_y", "width", "height"]
    for image_id, file in zip(index["image_id"][:4], index["file"]):
        img = read_image(file)
        expected, scale, pad_x, pad_y = letterbox(img, 64)
        np.testing.assert_array_equal(cache.image(image_id), expected)
        meta = cache.meta.iloc[cache.row_of(image_id)]
        assert (meta["width"], meta["height"]) == (img.shape[1], img.shape[0])
        assert (meta["scale"], meta["pad_x"], meta["pad_y"]) == pytest.approx((scale, pad_x, pad_y))
    with pytest.raises(KeyError, match="bad"):
        cache.row_of("bad")  # excluded by the audit: never decoded


def test_cached_lesions_are_in_cache_pixels(small_dataset, tmp_path):
    index, quality = small_dataset
    build_cache(index, quality, 64, tmp_path / "cache")
    cache = ImageCache(tmp_path / "cache")
    (lesion,) = cache.lesions("img0")
    assert lesion["label"] == "osteochondroma"
    np.testing.assert_allclose(lesion["box"], bright_box(cache.image("img0")), atol=1.0)
    np.testing.assert_allclose(np.min(lesion["polygon"], axis=0), lesion["box"][:2])
    assert cache.lesions("img1") == []  # annotation does not parse: no lesions
    assert cache.lesions("img2") == []  # not annotated
    assert cache.lesions("img3") == []  # the audit rejected its annotation
    assert set(json.loads((tmp_path / "cache" / "lesions.json").read_text())) == {"img0"}


def test_parallel_decoding_gives_the_same_cache(small_dataset, tmp_path):
    index, quality = small_dataset
    build_cache(index, quality, 48, tmp_path / "one", workers=1)
    build_cache(index, quality, 48, tmp_path / "two", workers=2)
    for name in ("images.npy", "meta.csv", "lesions.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_undecodable_usable_image_stops_with_its_path(small_dataset, tmp_path):
    index, quality = small_dataset
    out = tmp_path / "cache"
    build_cache(index, quality, 32, out)
    before = (out / "images.npy").read_bytes()
    quality = quality.assign(usable=True)  # as if the audit had let the zero-byte file through
    with pytest.raises(CacheError, match=r"bad\.jpeg.*zero-byte"):
        build_cache(index, quality, 32, out)
    assert (out / "images.npy").read_bytes() == before  # the old cache is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_rebuild_replaces_the_cache_atomically(small_dataset, tmp_path):
    index, quality = small_dataset
    out = tmp_path / "cache"
    build_cache(index, quality, 32, out)
    build_cache(index, quality, 48, out)
    assert ImageCache(out).size == 48
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_incomplete_cache_is_reported(tmp_path):
    with pytest.raises(CacheError, match="rerun the preprocess stage"):
        ImageCache(tmp_path)


def test_preprocess_stage_on_the_tiny_twin(tiny_twin, tmp_path):
    index, notes = btxrd.ingest_btxrd_dir(tiny_twin)
    info = DatasetInfo("synthetic", list(btxrd.CLASSES), str(tiny_twin))
    quality = run_audit(index, notes, info, AuditParams()).quality
    write_index(index, tmp_path / "index.csv")
    quality.to_csv(tmp_path / "quality.csv", index=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["preprocess"]["cache_size"] = 96
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages" / "preprocess.py"), "--params", "params.yaml",
           "--index", "index.csv", "--quality", "quality.csv", "--out", "data/cache"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    print(f"preprocess stage, tiny twin ({len(index)} images): {time.perf_counter() - start:.2f} s")
    cache = ImageCache(tmp_path / "data" / "cache")
    usable = quality[quality["usable"]]
    assert cache.images.shape == (len(usable), 96, 96)
    assert cache.meta["image_id"].tolist() == sorted(usable["image_id"])
    annotated = set(usable.loc[usable["annotation_usable"], "image_id"])
    lesions = json.loads((tmp_path / "data" / "cache" / "lesions.json").read_text())
    assert annotated and set(lesions) == annotated
    for image_id in annotated:  # every cached lesion lies inside the letterboxed image
        row = cache.meta.iloc[cache.row_of(image_id)]
        x0, y0, x1, y1 = content_box(*row[["width", "height", "scale", "pad_x", "pad_y"]])
        for lesion in cache.lesions(image_id):
            box = lesion["box"]
            assert x0 - 1 <= box[0] < box[2] <= x1 + 1 and y0 - 1 <= box[1] < box[3] <= y1 + 1
