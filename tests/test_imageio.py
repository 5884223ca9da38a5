"""The image reader: every Pillow mode, EXIF orientation, broken files, DICOM."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import ExifTags, Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from assurexray.data.imageio import (
    ImageReadError,
    Upload,
    image_size,
    is_dicom,
    read_decoded,
    read_image,
    read_image_reduced,
)

H, W = 24, 40
RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W), dtype=np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, computed here independently of Pillow."""
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114])


def minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(float)
    return (values - values.min()) * 255 / (values.max() - values.min())


def close(got: np.ndarray, expected: np.ndarray, tol: float) -> bool:
    return got.dtype == np.uint8 and got.shape == expected.shape and \
        np.abs(got.astype(float) - expected).max() <= tol


# ---- Pillow modes ------------------------------------------------------------------------

def test_l_png_is_exact(tmp_path):
    Image.fromarray(GRAY, "L").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), GRAY)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_rgb_is_luma(tmp_path, fmt):
    path = tmp_path / f"a.{fmt}"
    Image.fromarray(RGB, "RGB").save(path, quality=100)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the JPEG's own decoded colours
    assert close(read_image(path), luma(stored), tol=1)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_black(tmp_path, mode):
    colour = np.dstack([RGB, ALPHA]) if mode == "RGBA" else np.dstack([GRAY, ALPHA])
    Image.fromarray(colour, mode).save(tmp_path / "a.png")
    base = luma(RGB) if mode == "RGBA" else GRAY.astype(float)
    out = read_image(tmp_path / "a.png")
    assert close(out, base * ALPHA / 255, tol=1.5)
    assert (out[ALPHA == 0] == 0).all()


def test_palette_with_transparency(tmp_path):
    palette = np.array([[0, 0, 0], [255, 255, 255], [200, 100, 50], [10, 20, 30]], np.uint8)
    index = RNG.integers(0, 4, (H, W), dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "a.png", transparency=1)  # index 1 (white) is transparent
    out = read_image(tmp_path / "a.png")
    expected = luma(palette[index])
    expected[index == 1] = 0
    assert close(out, expected, tol=1)


def test_palette_without_transparency(tmp_path):
    im = Image.fromarray(RGB, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(tmp_path / "a.png")
    colours = np.asarray(im.convert("RGB"))
    assert close(read_image(tmp_path / "a.png"), luma(colours), tol=1)


def test_cmyk_jpeg(tmp_path):
    # Pure black ink: the grey level is 255 - K whatever the colour conversion details.
    cmyk = np.zeros((H, W, 4), np.uint8)
    cmyk[..., 3] = np.linspace(0, 255, W, dtype=np.uint8)[None, :]
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "a.jpeg", quality=100)
    assert close(read_image(tmp_path / "a.jpeg"), 255.0 - cmyk[..., 3], tol=4)


def test_bilevel(tmp_path):
    Image.fromarray(GRAY > 127).convert("1").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), np.where(GRAY > 127, 255, 0))


def test_16bit_png_is_stretched_min_max(tmp_path):
    values = RNG.integers(1000, 3001, (H, W)).astype(np.uint16)
    values[0, 0], values[0, 1] = 1000, 3000
    Image.fromarray(values).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    out = read_image(tmp_path / "a.png")
    assert out[0, 0] == 0 and out[0, 1] == 255
    assert close(out, minmax(values), tol=0.5)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32bit_and_float_tiff(tmp_path, mode):
    values = RNG.normal(0, 5000, (H, W)).astype(np.int32 if mode == "I" else np.float32)
    Image.fromarray(values, mode).save(tmp_path / "a.tiff")
    assert close(read_image(tmp_path / "a.tiff"), minmax(values), tol=0.5)


def test_float_nan_and_flat_image_give_zeros(tmp_path):
    values = np.full((H, W), 7.0, np.float32)
    values[0, 0] = np.nan
    Image.fromarray(values, "F").save(tmp_path / "a.tiff")
    assert not read_image(tmp_path / "a.tiff").any()


# ---- EXIF orientation --------------------------------------------------------------------

def save_with_orientation(path: Path, array: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(array, "L").save(path, exif=exif, quality=95)


@pytest.mark.parametrize("orientation,rotate", [(3, 2), (6, -1), (8, 1)])
def test_exif_rotation_png_is_exact(tmp_path, orientation, rotate):
    save_with_orientation(tmp_path / "a.png", GRAY, orientation)
    out = read_image(tmp_path / "a.png")
    assert np.array_equal(out, np.rot90(GRAY, rotate))  # orientation 6 = turn 90 deg clockwise
    assert image_size(tmp_path / "a.png") == (out.shape[1], out.shape[0])


def test_exif_rotated_jpeg_shape(tmp_path):
    save_with_orientation(tmp_path / "a.jpg", GRAY, 6)
    assert read_image(tmp_path / "a.jpg").shape == (W, H)
    assert image_size(tmp_path / "a.jpg") == (H, W)


# ---- broken files ------------------------------------------------------------------------

def test_truncated_jpeg_raises(tmp_path):
    Image.fromarray(RGB, "RGB").save(tmp_path / "full.jpeg")
    data = (tmp_path / "full.jpeg").read_bytes()
    (tmp_path / "IMG000123.jpeg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=r"^IMG000123\.jpeg: truncated JPEG"):
        read_image(tmp_path / "IMG000123.jpeg")


def test_truncated_png_raises(tmp_path):
    Image.fromarray(RGB, "RGB").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"^cut\.png: truncated PNG"):
        read_image(tmp_path / "cut.png")


def test_reader_refuses_global_truncated_loading(tmp_path, monkeypatch):
    Image.fromarray(GRAY).save(tmp_path / "a.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpeg", b"", "zero-byte file"),
    ("notes.jpeg", b"patient list, not an image\n" * 20, "not an image"),
    ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "not an image"),
])
def test_bad_files_raise_with_name(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    for reader in (read_image, image_size):
        with pytest.raises(ImageReadError, match=rf"^{name}: {reason}"):
            reader(tmp_path / name)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageReadError, match="^gone.png: no such file"):
        read_image(tmp_path / "gone.png")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_checked_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(12_000, 10_000))
    with pytest.raises(ImageReadError,
                       match=r"^bomb\.png: decompression bomb: 120000000 pixels > limit 100000000"):
        read_image(tmp_path / "bomb.png", max_pixels=100_000_000)
    assert image_size(tmp_path / "bomb.png") == (12_000, 10_000)  # header only, no decoding


def test_decompression_bomb_beyond_pillow_hard_limit(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_header_only(20_000, 20_000))
    with pytest.raises(ImageReadError, match=r"^huge\.png: decompression bomb"):
        read_image(tmp_path / "huge.png", max_pixels=10**12)


def test_small_image_over_a_low_limit(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match=f"{H * W} pixels > limit 100"):
        read_image(tmp_path / "a.png", max_pixels=100)


# ---- DICOM -------------------------------------------------------------------------------

def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits: int = 12, **attrs) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(pixels, photometric, bits)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 'LINEAR' window to 0-255, written out here as a reference."""
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(scaled, 0, 255)


def test_dicom_rescale_then_window(tmp_path):
    raw = np.tile(np.array([0, 450, 500, 520, 1000], np.uint16), (6, 1))
    path = write_dicom(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=0, WindowWidth=400)
    out = read_image(path)
    expected = linear_window(raw * 2.0 - 1000, center=0, width=400)
    assert close(out, expected, tol=1)
    # Without the rescale raw 500 would sit above the window; without the window, -100 -> 115.
    assert list(out[0]) == [0, 64, 128, 153, 255]


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = np.array([[0, 200], [800, 1000]], np.uint16)
    out = read_image(write_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1"))
    assert out[1, 1] == 0 and out[0, 0] == 255  # bright in the raw data, dark on screen
    assert close(out, 255 - minmax(raw), tol=0.5)


def test_dicom_multiframe_gives_first_frame(tmp_path):
    frames = np.stack([np.arange(12, dtype=np.uint16).reshape(3, 4) * 10,
                       np.full((3, 4), 999, np.uint16)])
    path = write_dicom(tmp_path / "mf.dcm", frames)
    assert close(read_image(path), minmax(frames[0]), tol=0.5)
    assert image_size(path) == (4, 3)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((3, 4), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="^nopix.dcm: DICOM without pixel data"):
        read_image(path)


def test_dicom_found_by_content_not_extension(tmp_path):
    raw = np.arange(20, dtype=np.uint16).reshape(4, 5) * 50
    dicom = write_dicom(tmp_path / "scan.png", raw)  # DICOM named .png
    assert is_dicom(dicom)
    assert close(read_image(dicom), minmax(raw), tol=0.5)
    Image.fromarray(GRAY).save(tmp_path / "photo.dcm", format="PNG")  # PNG named .dcm
    assert not is_dicom(tmp_path / "photo.dcm")
    assert np.array_equal(read_image(tmp_path / "photo.dcm"), GRAY)


def test_dicom_without_preamble(tmp_path):
    raw = np.arange(20, dtype=np.uint16).reshape(4, 5) * 50
    data = write_dicom(tmp_path / "full.dcm", raw).read_bytes()
    (tmp_path / "bare").write_bytes(data[132:])  # drop the preamble and the DICM magic
    assert not is_dicom(tmp_path / "bare")
    assert close(read_image(tmp_path / "bare"), minmax(raw), tol=0.5)
    assert image_size(tmp_path / "bare") == (5, 4)


def test_dicom_bomb_guard(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((30, 40), np.uint16))
    with pytest.raises(ImageReadError, match="1200 pixels > limit 1000"):
        read_image(path, max_pixels=1000)


# ---- decoded-size limit and the memory of deep images ------------------------------------

def test_deep_image_refused_by_its_decoded_bytes(tmp_path):
    """A small file of a large 16-bit image: under the pixel limit, over the bytes limit."""
    Image.fromarray(np.zeros((2000, 3000), np.uint16)).save(tmp_path / "deep.png")
    assert (tmp_path / "deep.png").stat().st_size < 100_000
    with pytest.raises(ImageReadError, match=r"^deep\.png: decompression bomb: 3000 x 2000 px x 2 "
                                             r"byte\(s\) = 11 MiB decoded > limit 8 MiB"):
        read_image(tmp_path / "deep.png", max_pixels=10**8, max_bytes=8 * 2**20)
    Image.fromarray(np.zeros((2000, 3000), np.uint8)).save(tmp_path / "shallow.png")
    assert read_image(tmp_path / "shallow.png", max_bytes=8 * 2**20).shape == (2000, 3000)


def test_dicom_decoded_bytes_count_samples_and_bits(tmp_path):
    path = write_dicom(tmp_path / "deep.dcm", np.zeros((300, 400), np.uint16))
    with pytest.raises(ImageReadError, match=r"400 x 300 px x 2 byte\(s\)"):
        read_image(path, max_bytes=200_000)
    assert read_image(path, max_bytes=240_000).shape == (300, 400)


def test_deep_image_stretch_takes_no_float_copy_of_the_image(tmp_path):
    """numpy's and Python's allocations while a 4000 x 4000 16-bit PNG is read stay near its
    8-bit result (16 MB): a float64 copy of the image alone would be 128 MB."""
    import tracemalloc

    values = np.zeros((4000, 4000), np.uint16)
    values[::7, ::3] = 4000
    Image.fromarray(values).save(tmp_path / "deep.png")
    tracemalloc.start()
    try:
        out = read_image(tmp_path / "deep.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[0, 0] == 255 and out[1, 1] == 0
    assert peak < values.size * 1 + 48 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_blockwise_stretch_equals_the_whole_image_rule(tmp_path, monkeypatch, mode):
    """Many blocks of rows give the very numbers of one min-max over the whole image."""
    import assurexray.data.imageio as imageio

    values = RNG.normal(3000, 900, (61, 37)).clip(0, 65535)
    values = values.astype(np.uint16) if mode == "I;16" else values.astype(np.float32)
    if mode == "F":
        values[3, 4], values[9, 9] = np.nan, np.inf
    Image.fromarray(values).save(tmp_path / "a.tiff")
    monkeypatch.setattr(imageio, "STRETCH_BLOCK", 100)   # 3 rows per block
    finite = np.isfinite(values.astype(np.float64))
    lo, hi = values[finite].min(), values[finite].max()
    expected = np.zeros(values.shape, np.uint8)
    expected[finite] = np.rint((values[finite].astype(np.float64) - lo) * (255.0 / (hi - lo)))
    assert np.array_equal(read_image(tmp_path / "a.tiff"), expected)


# ---- image_size agrees with read_image ---------------------------------------------------

def test_image_size_matches_read_image(tmp_path):
    Image.fromarray(RGB, "RGB").save(tmp_path / "a.jpeg")
    Image.fromarray(np.dstack([GRAY, ALPHA]), "LA").save(tmp_path / "b.png")
    Image.fromarray(GRAY.astype(np.uint16) * 100).save(tmp_path / "c.png")
    save_with_orientation(tmp_path / "d.jpeg", GRAY, 8)
    save_with_orientation(tmp_path / "e.jpeg", GRAY, 2)  # mirror: no swap
    write_dicom(tmp_path / "f.dcm", np.zeros((7, 9), np.uint16))
    for path in sorted(tmp_path.iterdir()):
        height, width = read_image(path).shape
        assert image_size(path) == (width, height), path.name


# ---- reduced JPEG decode -----------------------------------------------------------------

def smooth(h: int, w: int) -> np.ndarray:
    """A radiograph-like smooth image (a JPEG's DCT scaling is exact only on smooth content)."""
    y, x = np.mgrid[0:h, 0:w]
    return (127 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)).astype(np.uint8)


@pytest.mark.parametrize("h,w,longer,shape", [
    (640, 1024, 256, (160, 256)),   # 1/4
    (1000, 600, 256, (500, 300)),   # 1/2: at 1/4 the shorter side (150) would be below its share (154)
    (700, 1024, 300, (350, 512)),   # 1/2: 1/4 would leave the longer side at 256 < 300
    (100, 80, 256, (100, 80)),      # smaller than needed: full decode
])
def test_reduced_jpeg_decode(tmp_path, h, w, longer, shape):
    pixels = smooth(h, w)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    full = read_image(tmp_path / "a.jpg")
    reduced, size = read_image_reduced(tmp_path / "a.jpg", longer)
    assert size == (w, h) and reduced.shape == shape
    assert max(reduced.shape) >= min(longer, max(h, w))
    shrunk = cv2.resize(full, shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(float) - shrunk).mean() < 2.0  # the same picture, smaller


def test_reduced_decode_of_other_formats_and_rotations(tmp_path):
    pixels = smooth(300, 500)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    reduced, size = read_image_reduced(tmp_path / "a.png", 64)
    assert np.array_equal(reduced, read_image(tmp_path / "a.png")) and size == (500, 300)
    save_with_orientation(tmp_path / "r.png", pixels, 6)
    reduced, size = read_image_reduced(tmp_path / "r.png", 64)
    assert reduced.shape == (500, 300) and size == (300, 500)
    save_with_orientation(tmp_path / "r.jpg", pixels, 6)  # stored 500 x 300, shown 300 x 500
    reduced, size = read_image_reduced(tmp_path / "r.jpg", 125)
    assert size == (300, 500) == image_size(tmp_path / "r.jpg") and reduced.shape == (125, 75)


# ---- read_decoded: file facts and colour ---------------------------------------------------

def image_info(source) -> dict:
    return read_decoded(source, 256).info


def reference_chroma(rgb: np.ndarray) -> float:
    """Mean |(Cb, Cr)| with OpenCV's YCrCb conversion (offset 128) as the independent reference."""
    ycrcb = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb) * 255
    return float(np.hypot(ycrcb[..., 1] - 127.5, ycrcb[..., 2] - 127.5).mean())


def test_image_info_grey_files_have_no_chroma_and_their_bit_depth(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    Image.fromarray(GRAY.astype(np.uint16) * 200).save(tmp_path / "g16.png")
    assert image_info(tmp_path / "g.png") == {"bit_depth": 8, "modality": "", "chroma": 0.0}
    assert image_info(tmp_path / "g16.png")["bit_depth"] == 16
    # a grey picture stored as a 3-channel JPEG (as many exports are): colour noise only
    Image.fromarray(np.dstack([GRAY] * 3), "RGB").save(tmp_path / "g.jpg", quality=90)
    assert image_info(tmp_path / "g.jpg")["chroma"] < 1.0


def test_image_info_chroma_of_colour_files_equals_opencvs(tmp_path):
    tint = np.clip(np.dstack([GRAY * 0.9 + 20, GRAY * 0.7, GRAY * 0.3]), 0, 255).astype(np.uint8)
    Image.fromarray(tint, "RGB").save(tmp_path / "c.png")
    assert image_info(tmp_path / "c.png")["chroma"] == pytest.approx(reference_chroma(tint), rel=1e-3)
    palette = Image.fromarray(tint, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.save(tmp_path / "p.png")
    expected = reference_chroma(np.asarray(palette.convert("RGB")))
    assert image_info(tmp_path / "p.png")["chroma"] == pytest.approx(expected, rel=1e-3)
    # a large colour JPEG is measured on its reduced decode: close to the full image's value
    big = cv2.resize(tint, (W * 40, H * 40), interpolation=cv2.INTER_NEAREST)
    Image.fromarray(big, "RGB").save(tmp_path / "c.jpg", quality=95)
    full = reference_chroma(np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")))
    data = (tmp_path / "c.jpg").read_bytes()
    assert image_info(Upload(data, "upload"))["chroma"] == pytest.approx(full, abs=1.0)


def test_image_info_of_dicom(tmp_path):
    grey = write_dicom(tmp_path / "g.dcm", (GRAY.astype(np.uint16) * 16), Modality="DX")
    assert image_info(grey) == {"bit_depth": 12, "modality": "DX", "chroma": 0.0}
    colour = write_dicom(tmp_path / "c.dcm", RGB, "RGB", 8, Modality="OT")
    info = image_info(colour)
    assert (info["bit_depth"], info["modality"]) == (8, "OT")
    assert info["chroma"] == pytest.approx(reference_chroma(RGB), rel=1e-3)
