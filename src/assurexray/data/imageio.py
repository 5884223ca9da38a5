"""The one image reader: JPEG/PNG (any Pillow mode) and DICOM to (H, W) uint8 grayscale.

Files are recognised by content, not by extension: DICOM by the ``DICM`` magic at offset 128,
everything else by Pillow; a file Pillow cannot identify gets one more try as a DICOM file
without preamble. Every failure is an ``ImageReadError`` whose message names the file and the
reason, so callers (ingest, audit) can report it instead of dropping the image.

Conversion rules (deterministic, documented once here):

- 8-bit modes (L, RGB, CMYK, P, 1, YCbCr...) go through Pillow's ``convert("L")``
  (ITU-R 601-2 luma).
- Modes with transparency (LA, RGBA, PA, P/L/RGB with a ``transparency`` key) are composited
  on opaque black first: transparent areas become background (0), as on a radiograph.
- 16-bit and 32-bit integer and float modes (I;16*, I, F) are stretched min-max over the image
  to 0-255; many "16-bit" radiographs store only 10-12 bits, so scaling by the full 16-bit range
  would leave them nearly black. A flat image becomes all zeros; NaN becomes 0. The stretch runs
  over blocks of rows, so a deep image costs its decoded pixels plus its 8-bit result, never a
  float64 copy of the whole image.
- DICOM: modality LUT/rescale, then VOI LUT or window (pydicom), then min-max to 0-255 (the same
  rule as 16-bit PNG), then MONOCHROME1 is inverted so bone is always bright. Multi-frame files
  give their first frame; colour DICOM is reduced to luma.
- EXIF orientation is applied (``ImageOps.exif_transpose``).
- Two limits are checked from the header, before any pixel is decoded: ``max_pixels`` (width x
  height, the work) and ``max_bytes``, the memory the decoded pixels take (width x height x
  bytes per pixel: Pillow stores 1 byte for 1/L/P, 2 for I;16, 4 for every other mode; DICOM
  rows x columns x samples x bytes per sample of one frame). A small compressed file of a
  huge deep image is refused by the second one.
- ``read_image_reduced(path, longer_side)`` is the same reader for a caller that shrinks the
  image to ``longer_side`` anyway (the cache, ``predict``): a JPEG is then decoded at the
  smallest DCT scale (1/2, 1/4, 1/8, Pillow's ``draft``) that still leaves both sides at least
  their share of ``longer_side``, which skips most of the decoding work. Other formats decode
  in full.
"""
from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from assurexray.errors import AssureXRayError

DEFAULT_MAX_PIXELS = 200_000_000
DEFAULT_MAX_BYTES = 2**30
# Values per block of rows when a deep image is stretched to 8 bits (8 MiB as float64).
STRETCH_BLOCK = 2**20
LUMA = np.array([0.299, 0.587, 0.114])
# The file names that folders are scanned for (ingest, predict): what this reader decodes.
# Reading itself goes by content, so a file named explicitly is read whatever its suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
DICOM_MAGIC = b"DICM"
DICOM_MAGIC_OFFSET = 128
NOT_AN_IMAGE = "not an image (neither Pillow nor pydicom can read it)"
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# EXIF orientations that transpose the image, i.e. swap width and height.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
# Pillow modes with one channel: no colour to measure (read_decoded's chroma).
GREY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
CHROMA_SIDE = 64
# Exceptions Pillow and pydicom raise on broken content (pydicom's pixel decoders are varied).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                 TypeError, AttributeError, NotImplementedError, RuntimeError)


class ImageReadError(AssureXRayError):
    """An image could not be read; the message is '<file name>: <reason>'."""

    def __init__(self, path: str | Path | io.BytesIO, reason: str):
        self.path = Path(path.name if isinstance(path, io.BytesIO) else path)  # an upload has a name
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode ``path`` to an (H, W) uint8 grayscale array (see the module doc for the rules).

    The header's width * height is checked against ``max_pixels`` and the decoded size against
    ``max_bytes`` before any pixel is decoded. Pillow also refuses, at open, anything above its
    own hard limit (2 * ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 M pixels); all come out as
    ImageReadError.
    """
    return _read(_existing_file(path), max_pixels, None, max_bytes).pixels


def read_image_reduced(source: str | Path | Upload, longer_side: int,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """(pixels, (width, height) of the full image) for a caller that needs ``longer_side`` px.

    The pixels are ``read_image``'s, except that a JPEG larger than needed comes at a reduced
    DCT scale 1/s: ceil(width / s) x ceil(height / s), covering the same field of view.
    ``source`` is a file or an in-memory ``Upload`` (same rules, same errors).
    """
    pixels, full, _ = read_decoded(source, longer_side, max_pixels)
    return pixels, full


class Decoded(NamedTuple):
    pixels: np.ndarray       # (H, W) uint8, as read_image_reduced gives them
    full: tuple[int, int]    # (width, height) of the whole image
    info: dict               # {"bit_depth", "modality", "chroma"}


def read_decoded(source: str | Path | Upload, longer_side: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Decoded:
    """``read_image_reduced`` plus facts about the file, from the same single read.

    ``info``: bits per sample as stored (1, 8, 16, 32) and the DICOM Modality ('' for
    JPEG/PNG), from the header, and ``chroma``, how far the colours are from grey: the mean
    distance of (Cb, Cr) from the neutral point (ITU-R 601, 8-bit units; 0 for a file that
    stores one channel, up to about 181), on the decoded colours before the grey conversion.
    A colour photograph is not a radiograph, whatever its grey levels look like.
    """
    if isinstance(source, Upload):
        if not source.getbuffer().nbytes:
            raise ImageReadError(source.name, "zero-byte file")
        return _read(source, max_pixels, longer_side, max_bytes)
    return _read(_existing_file(source), max_pixels, longer_side, max_bytes)


class Upload(io.BytesIO):
    """Bytes in memory (an upload) that Pillow and pydicom open like a file called ``name``;
    nothing is written to disk."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name


def sniff_format(data: bytes) -> str | None:
    """'jpeg', 'png' or 'dicom' from the leading bytes (never the name); None otherwise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return "dicom"
    return None


def _chroma(rgb: np.ndarray) -> float:
    """Mean distance of (Cb, Cr) from grey (ITU-R 601, 8-bit units) of an (H, W, 3) RGB array,
    on a grid of at most ``CHROMA_SIDE`` px."""
    step = max(1, max(rgb.shape[:2]) // CHROMA_SIDE)
    rgb = rgb[::step, ::step, :3].astype(np.float64)
    if rgb.max(initial=0) > 255:  # a 16-bit colour DICOM: to 8-bit units
        rgb *= 255.0 / rgb.max()
    cb = rgb @ np.array([-0.168736, -0.331264, 0.5])
    cr = rgb @ np.array([0.5, -0.418688, -0.081312])
    return float(np.hypot(cb, cr).mean())


def _pil_info(mode: str, decoded: Image.Image) -> dict:
    bits = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 1 if mode == "1" else 8
    if mode in GREY_MODES:
        return {"bit_depth": bits, "modality": "", "chroma": 0.0}
    w, h = decoded.size
    step = max(1, max(w, h) // CHROMA_SIDE)  # shrink first: a palette image converts cheaply
    small = decoded.resize((max(1, w // step), max(1, h // step)), Image.Resampling.NEAREST)
    return {"bit_depth": bits, "modality": "", "chroma": _chroma(np.asarray(small.convert("RGB")))}


def _read(source: Path | Upload, max_pixels: int, longer_side: int | None,
          max_bytes: int = DEFAULT_MAX_BYTES) -> Decoded:
    if is_dicom(source):
        return _read_dicom(source, max_pixels, max_bytes, force=False)
    try:
        im = _open_pil(source)
    except UnidentifiedImageError:
        return _read_dicom(source, max_pixels, max_bytes, force=True)
    with im:
        _check_pixels(source, im.size, max_pixels)
        stored, full = im.size, _oriented_size(im)
        if longer_side:
            _draft(im, longer_side)
        # after the draft: a JPEG decoded at a reduced scale takes only the reduced size
        _check_bytes(source, im.size, _pil_pixel_bytes(im.mode), max_bytes)
        decoded = _decode_pil(source, im)
        img = _pil_to_gray(decoded)
        # A reduced decode is a JPEG, whose header (EXIF included) precedes the pixels, so the
        # header's size is exact; otherwise the decoded shape is (a PNG's EXIF may trail).
        return Decoded(img, full if im.size != stored else (img.shape[1], img.shape[0]),
                       _pil_info(im.mode, decoded))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image as ``read_image`` returns it, from the header only.

    EXIF rotations by 90/270 degrees swap the two. For PNG only EXIF data stored before the
    pixel data is seen (reading a trailing eXIf chunk would mean decoding the pixels).
    """
    path = _existing_file(path)
    if is_dicom(path):
        return _dicom_size(_dicom_dataset(path, force=False))
    try:
        im = _open_pil(path)
    except UnidentifiedImageError:
        return _dicom_size(_dicom_dataset(path, force=True))
    with im:
        return _oriented_size(im)


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header of an unloaded image."""
    # Image.getexif reads only what the header parse found; PngImageFile.getexif would
    # decode the whole image when the header holds no EXIF.
    orientation = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
    width, height = im.size
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def _draft(im: Image.Image, longer_side: int) -> None:
    """Let a JPEG decode at a reduced scale whose sides stay >= their share of longer_side.

    The mode stays the file's, so the conversion rules above are unchanged; other formats
    ignore ``draft``.
    """
    width, height = im.size
    share = longer_side / max(width, height)
    if share < 1:
        im.draft(im.mode, (max(1, math.ceil(width * share)), max(1, math.ceil(height * share))))


def is_dicom(path: str | Path | Upload) -> bool:
    """True when the file carries the DICOM Part 10 magic ``DICM`` at offset 128."""
    if isinstance(path, Upload):
        return sniff_format(path.getbuffer()[:DICOM_MAGIC_OFFSET + 4].tobytes()) == "dicom"
    with open(path, "rb") as fh:
        fh.seek(DICOM_MAGIC_OFFSET)
        return fh.read(len(DICOM_MAGIC)) == DICOM_MAGIC


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "zero-byte file")
    return path


def _rewind(source) -> None:
    """An upload is read twice at most (Pillow, then pydicom): start each from byte 0."""
    if isinstance(source, Upload):
        source.seek(0)


def _check_pixels(path: Path | Upload, size: tuple[int, int], max_pixels: int) -> None:
    pixels = int(size[0]) * int(size[1])
    if pixels > max_pixels:
        raise ImageReadError(path, f"decompression bomb: {pixels} pixels > limit {max_pixels}")


def _check_bytes(path: Path | Upload, size: tuple[int, int], pixel_bytes: int, max_bytes: int) -> None:
    need = int(size[0]) * int(size[1]) * pixel_bytes
    if need > max_bytes:
        raise ImageReadError(path, f"decompression bomb: {size[0]} x {size[1]} px x {pixel_bytes} "
                                   f"byte(s) = {need / 2**20:.0f} MiB decoded > limit "
                                   f"{max_bytes / 2**20:.0f} MiB")


def _pil_pixel_bytes(mode: str) -> int:
    """Bytes per pixel of Pillow's decoded image: 1 for 1/L/P, 2 for I;16*, else 4 (Pillow keeps
    every multi-band or 32-bit mode in 4-byte pixels)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


# ---- Pillow ------------------------------------------------------------------------------

def _open_pil(path: Path | Upload) -> Image.Image:
    """Lazy open (header only); UnidentifiedImageError passes through for the DICOM retry."""
    try:
        with warnings.catch_warnings():
            # The caller checks max_pixels itself; Pillow's soft-limit warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _rewind(path)
            return Image.open(path)
    except UnidentifiedImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"decompression bomb: {exc}") from exc
    except DECODE_ERRORS as exc:
        raise ImageReadError(path, f"unreadable image header ({exc})") from exc


def _decode_pil(path: Path | Upload, im: Image.Image) -> Image.Image:
    """Decode all pixels and apply EXIF orientation; a truncated file raises."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Set by some other module: Pillow would then return truncated images half grey.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; AssureXRay refuses to "
                           "read images with it because truncated files would load silently")
    try:
        im.load()
        return ImageOps.exif_transpose(im)
    except DECODE_ERRORS as exc:
        kind = "truncated" if "truncated" in str(exc) else "corrupt"
        raise ImageReadError(path, f"{kind} {im.format} ({exc})") from exc


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        width, height = im.size
        return _stretch(lambda y0, y1: np.asarray(im.crop((0, y0, width, y1)), dtype=np.float64),
                        height, width)
    if im.has_transparency_data:
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, im if im.mode == "RGBA" else im.convert("RGBA"))
    # an L image is already grey: converting it would only copy it once more
    return np.array(im if im.mode == "L" else im.convert("L"), dtype=np.uint8)


def _stretch(rows: Callable[[int, int], np.ndarray], height: int, width: int) -> np.ndarray:
    """Min-max map the finite values to 0-255 (rounded); flat images and NaN give 0.

    ``rows(y0, y1)`` gives rows y0 to y1 as float64. It is called twice per block of
    ``STRETCH_BLOCK`` values (once for the range, once to map), so the memory is the uint8
    result plus one block, whatever the depth and size of the image.
    """
    step = max(1, STRETCH_BLOCK // max(1, width))
    spans = [(y, min(y + step, height)) for y in range(0, height, step)]
    lo, hi = np.inf, -np.inf
    for y0, y1 in spans:
        block = rows(y0, y1)
        finite = block[np.isfinite(block)]
        if finite.size:
            lo, hi = min(lo, finite.min()), max(hi, finite.max())
    out = np.zeros((height, width), dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for y0, y1 in spans:
            block = rows(y0, y1)
            finite = np.isfinite(block)
            out[y0:y1][finite] = np.rint((block[finite] - lo) * scale).astype(np.uint8)
    return out


# ---- DICOM -------------------------------------------------------------------------------

def _dicom_dataset(path: Path | Upload, force: bool, with_pixels: bool = False) -> pydicom.Dataset:
    """The parsed file (pixel bytes still encoded); ``force`` is the last-chance try on a file
    Pillow could not identify."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd tag of a forced read
            _rewind(path)
            ds = pydicom.dcmread(path, force=force, stop_before_pixels=not with_pixels)
    except (InvalidDicomError, *DECODE_ERRORS) as exc:
        raise ImageReadError(path, NOT_AN_IMAGE if force else f"unreadable DICOM ({exc})") from exc
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(path, NOT_AN_IMAGE if force else "DICOM without Rows/Columns")
    return ds


def _dicom_size(ds: pydicom.Dataset) -> tuple[int, int]:
    return int(ds.Columns), int(ds.Rows)


def _read_dicom(path: Path | Upload, max_pixels: int, max_bytes: int, force: bool) -> Decoded:
    ds = _dicom_dataset(path, force, with_pixels=True)
    _check_pixels(path, _dicom_size(ds), max_pixels)  # before the pixel bytes are decoded
    sample_bytes = math.ceil(int(ds.get("BitsAllocated", 8)) / 8)
    _check_bytes(path, _dicom_size(ds), int(ds.get("SamplesPerPixel", 1)) * sample_bytes, max_bytes)
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        raise ImageReadError(path, "DICOM without pixel data")
    try:
        frame = pixel_array(ds, index=0)  # the first frame of a multi-frame file
        img = _dicom_to_gray(ds, frame)
    except DECODE_ERRORS as exc:
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({exc})") from exc
    info = {"bit_depth": int(ds.get("BitsStored", 8)), "modality": str(ds.get("Modality", "")),
            "chroma": _chroma(frame) if frame.ndim == 3 else 0.0}
    return Decoded(img, (img.shape[1], img.shape[0]), info)


def _dicom_to_gray(ds: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if frame.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _stretch(lambda y0, y1: frame[y0:y1].astype(np.float64) @ LUMA, height, width)

    def values(y0: int, y1: int) -> np.ndarray:
        # the modality and VOI LUTs map each value on its own, so blocks of rows give the
        # same numbers as the whole frame
        mapped = apply_voi_lut(apply_modality_lut(frame[y0:y1], ds), ds, index=0)
        return np.asarray(mapped, dtype=np.float64)

    out = _stretch(values, height, width)
    return 255 - out if ds.get("PhotometricInterpretation") == "MONOCHROME1" else out
