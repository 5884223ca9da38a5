"""`assurexray predict`: same numbers as evaluation, error records, DICOM, folders, Grad-CAM."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from scipy.special import softmax

from assurexray.cli import main
from assurexray.data.cache import ImageCache, build_cache
from assurexray.data.datasets import CachedDataset
from assurexray.data.imageio import read_image_reduced
from assurexray.data.schema import INDEX_COLUMNS, QUALITY_COLUMNS
from assurexray.data.sources import read_manifest
from assurexray.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.operating_points import evaluate_operating_points, fit_operating_points
from assurexray.inference.runner import predict_logits
from assurexray.predict import collect_files
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from assurexray.training.models import build_model

CLASSES = ["Normal", "Benign", "Malignant"]
CACHE_SIZE, IMAGE_SIZE = 64, 48


def make_checkpoint(path: Path, **extra) -> Path:
    torch.manual_seed(0)
    model = build_model("mobilenetv3_small_100", len(CLASSES), dropout=0.0)
    meta = CheckpointMeta(backbone="mobilenetv3_small_100", classes=CLASSES, image_size=IMAGE_SIZE,
                          cache_size=CACHE_SIZE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                          dropout=0.0, params={}, split="stratified", epoch=1,
                          best_val_macro_auc=0.5, **extra)
    save_checkpoint(path, model, meta)
    return path


def radiograph(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = rng.integers(0, 60, (h, w), dtype=np.uint8)
    img[h // 4:3 * h // 4, w // 3:2 * w // 3] = rng.integers(150, 255)
    return cv2.GaussianBlur(img, (5, 5), 0)


def write_mono1_dicom(path: Path, pixels: np.ndarray) -> None:
    """A MONOCHROME1 (white = low value) 12-bit DICOM of ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = ((255 - pixels.astype(np.uint16)) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    files = {}
    for name, (h, w) in {"wide.png": (70, 130), "tall.jpg": (150, 90), "small.png": (40, 30)}.items():
        files[name] = root / name
        cv2.imwrite(str(files[name]), radiograph(rng, h, w))
    return files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def predict(capsys, *argv) -> tuple[int, list[dict]]:
    code = main(["predict", *map(str, argv)])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, [json.loads(line) for line in lines]


def test_predict_equals_evaluation_on_the_cached_image(images, checkpoint, tmp_path, capsys):
    ids = sorted(images)
    index = pd.DataFrame([{**dict.fromkeys(INDEX_COLUMNS, ""), "width": -1, "height": -1,
                           "image_id": i, "file": str(images[i])} for i in ids],
                         columns=INDEX_COLUMNS)
    quality = pd.DataFrame({**dict.fromkeys(QUALITY_COLUMNS, ""), "image_id": ids,
                            "usable": True, "annotation_usable": False}, columns=QUALITY_COLUMNS)
    build_cache(index, quality, CACHE_SIZE, tmp_path / "cache")
    model, meta = load_checkpoint(checkpoint)
    dataset = CachedDataset(ImageCache(tmp_path / "cache"), ids, None,
                            eval_transform(meta.image_size, meta.mean, meta.std))
    expected = softmax(predict_logits(model, dataset, 2, "cpu").astype(np.float64), axis=1)
    # tall.jpg (150 x 90) goes through the reduced JPEG decode at this cache size
    assert read_image_reduced(images["tall.jpg"], CACHE_SIZE)[0].shape == (75, 45)

    code, records = predict(capsys, *[images[i] for i in ids], "--checkpoint", checkpoint,
                            "--batch-size", 2)
    assert code == 0
    assert [r["file"] for r in records] == [str(images[i]) for i in ids]
    for record, probs in zip(records, expected):
        np.testing.assert_allclose([record["probs"][c] for c in CLASSES], probs, atol=1e-5)
        assert record["pred"] == CLASSES[int(np.argmax(probs))]
        assert record["checkpoint"]["backbone"] == "mobilenetv3_small_100"
        assert record["checkpoint"]["split"] == "stratified" and record["checkpoint"]["git_rev"]
        assert "calibrated_probs" not in record and "decisions" not in record


def test_bad_files_get_error_records_and_dicom_is_read(images, checkpoint, tmp_path, capsys):
    pixels = cv2.imread(str(images["tall.jpg"]), cv2.IMREAD_GRAYSCALE)
    pixels = cv2.normalize(pixels, None, 0, 255, cv2.NORM_MINMAX)   # full range: exact round trip
    cv2.imwrite(str(tmp_path / "same.png"), pixels)
    write_mono1_dicom(tmp_path / "scan.dcm", pixels)
    data = images["tall.jpg"].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image\n")
    files = [tmp_path / n for n in ("truncated.jpg", "scan.dcm", "notes.txt", "same.png")]

    code, records = predict(capsys, *files, "--checkpoint", checkpoint, "--out", tmp_path / "out")
    assert code == 1
    assert [r["file"] for r in records] == [str(f) for f in files]
    bad = {Path(r["file"]).name: r["error"] for r in records if "error" in r}
    assert set(bad) == {"truncated.jpg", "notes.txt"} and all(bad.values())
    dicom, png = records[1], records[3]
    assert "error" not in dicom and sum(dicom["probs"].values()) == pytest.approx(1.0)
    # MONOCHROME1 is inverted on reading: the DICOM classifies like its PNG twin
    np.testing.assert_allclose(list(dicom["probs"].values()), list(png["probs"].values()),
                               atol=1e-5)
    written = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == records


def test_folders_are_walked_in_sorted_order(images, checkpoint, tmp_path, capsys, caplog):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    targets = [tmp_path / "a" / "2.PNG", tmp_path / "b" / "1.png", tmp_path / "b" / "deep" / "0.png"]
    for t in targets:
        t.write_bytes(images["small.png"].read_bytes())
    (tmp_path / "b" / "README.md").write_text("notes")
    (tmp_path / "empty").mkdir()
    code, records = predict(capsys, tmp_path / "a", tmp_path / "b", tmp_path / "empty",
                            "--checkpoint", checkpoint)
    assert code == 1                                   # the empty folder is an error
    assert records[0] == {"file": str(tmp_path / "empty"), "error": records[0]["error"]}
    assert [r["file"] for r in records[1:]] == [str(t) for t in targets]
    assert "README.md" in caplog.text                  # skipped, but said so


def test_predict_takes_every_suffix_that_ingest_takes(images, tmp_path):
    """A folder-per-class tree of TIFF, BMP, DICOM and PNG: ingest and predict take the same files."""
    pixels = cv2.imread(str(images["tall.jpg"]), cv2.IMREAD_GRAYSCALE)
    root = tmp_path / "tree" / "Normal"
    root.mkdir(parents=True)
    for name in ("a.tif", "b.tiff", "c.bmp", "d.png"):
        cv2.imwrite(str(root / name), pixels)
    (root / "b.tiff").rename(root / "b.TIFF")
    write_mono1_dicom(root / "e.dicom", pixels)
    (root / "notes.txt").write_text("not an image\n")
    index, notes, _ = read_manifest(tmp_path / "tree", tmp_path / "raw")
    files, empty = collect_files([tmp_path / "tree"])
    assert not empty and sorted(map(str, files)) == sorted(index["file"]) and len(files) == 5
    assert [Path(p).name for p in notes["path"]] == ["notes.txt"]


def test_calibrated_probabilities_and_gradcam_overlay(images, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "calibrated.pt", temperature=2.0)
    code, (record,) = predict(capsys, images["wide.png"], "--checkpoint", ckpt, "--gradcam",
                              "--out", tmp_path / "out")
    assert code == 0
    probs = np.array([record["probs"][c] for c in CLASSES])
    calibrated = np.array([record["calibrated_probs"][c] for c in CLASSES])
    np.testing.assert_allclose(calibrated, softmax(np.log(probs) / 2.0), atol=1e-9)
    overlay = cv2.imread(record["gradcam"])
    assert overlay.shape == (CACHE_SIZE, CACHE_SIZE, 3)
    assert Path(record["gradcam"]).parent == tmp_path / "out" / "gradcam"


def checkpoint_with_operating_points(rng, tmp_path) -> tuple[np.ndarray, np.ndarray, dict, Path]:
    """(labels and calibrated probabilities of 60 drawn validation cases, the operating points
    fitted on them, a calibrated.pt carrying those at temperature 2)."""
    y = rng.integers(0, 3, 60)
    val_probs = softmax(rng.normal(size=(60, 3)) + 2 * np.eye(3)[y], axis=1)
    points = fit_operating_points(y, val_probs, CLASSES, 0.9, 0.9, "youden", "calibrated")
    return y, val_probs, points, make_checkpoint(tmp_path / "calibrated.pt", temperature=2.0,
                                                 operating_points=points)


def test_calibrated_checkpoint_decides_at_its_shipped_thresholds(images, tmp_path, capsys):
    # issue 9 item 11: thresholds fitted on calibrated validation probabilities travel in
    # calibrated.pt, and predict reports each decision with its threshold and scale
    _, _, points, ckpt = checkpoint_with_operating_points(np.random.default_rng(0), tmp_path)
    code, records = predict(capsys, *images.values(), "--checkpoint", ckpt)
    assert code == 0
    for record in records:
        calibrated = record["calibrated_probs"]
        scores = {"malignant_vs_rest": calibrated["Malignant"],
                  "tumour_vs_normal": 1 - calibrated["Normal"]}
        assert set(record["decisions"]) == set(scores)
        for task, decision in record["decisions"].items():
            youden = points[task]["youden"]
            assert decision["threshold"] == youden["threshold"] and decision["scale"] == "calibrated"
            assert decision["operating_point"] == "youden"
            assert decision["score"] == pytest.approx(scores[task])
            assert decision["positive"] == (scores[task] >= youden["threshold"])
            assert decision["val_sensitivity"] == youden["val"]["sensitivity"]
            assert decision["val_specificity"] == youden["val"]["specificity"]


def test_decisions_quote_the_test_rates_of_the_analyze_stage(images, tmp_path, capsys):
    rng = np.random.default_rng(0)
    y, val_probs, points, ckpt = checkpoint_with_operating_points(rng, tmp_path)
    y_test = rng.integers(0, 3, 50)
    test_probs = softmax(rng.normal(size=(50, 3)) + 2 * np.eye(3)[y_test], axis=1)
    test = Predictions(np.arange(50).astype(str), y_test, test_probs.argmax(1), test_probs,
                       np.arange(50) // 2)
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps({"ci_level": 0.95, "operating_points": evaluate_operating_points(
        points, test, CLASSES, 0.95)}))
    code, records = predict(capsys, *images.values(), "--checkpoint", ckpt,
                            "--test-rates", analysis)
    assert code == 0
    measured = json.loads(analysis.read_text())["operating_points"]
    for record in records:
        for task, decision in record["decisions"].items():
            test_rates = measured[task]["youden"]["test"]
            assert decision["test_rates"]["sensitivity"] == test_rates["sensitivity"]
            assert decision["test_rates"]["specificity"] == test_rates["specificity"]
            assert decision["test_rates"]["source"] == str(analysis)
            assert decision["val_sensitivity"] == points[task]["youden"]["val"]["sensitivity"]
    # the analysis of another checkpoint (other thresholds) is refused before any image
    other = fit_operating_points(y, val_probs[::-1], CLASSES, 0.9, 0.9, "youden", "calibrated")
    ckpt = make_checkpoint(tmp_path / "other.pt", temperature=2.0, operating_points=other)
    assert main(["predict", str(images["wide.png"]), "--checkpoint", str(ckpt),
                 "--test-rates", str(analysis)]) == 2


def test_gradcam_needs_an_output_folder(images, checkpoint, capsys):
    assert main(["predict", str(images["wide.png"]), "--checkpoint", str(checkpoint),
                 "--gradcam"]) == 2
