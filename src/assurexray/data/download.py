"""Download and unpack the BTXRD release: resumable, verified, and safe against hostile archives.

Only the standard library talks to the network (urllib follows figshare's redirect to its
signed URL). A download lands in ``<dest>.part``, resumes with an HTTP Range request after an
interruption, and is renamed into place only after its size, MD5 and SHA-256 match.
"""
from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from assurexray.console import progress
from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)

MANUAL_HINT = ("download the archive manually in a browser, unzip it, and set "
               "data.source: btxrd_dir with data.btxrd_dir.path pointing to its BTXRD folder")
# Zip-bomb guard. The BTXRD release unpacks to about the size of the zip (JPEGs do not
# compress), so these limits are far above any honest archive of this kind.
MAX_UNCOMPRESSED_BYTES = 32 * 1024**3
MAX_COMPRESSION_RATIO = 100
RATIO_MIN_ENTRY_BYTES = 1024**2  # small entries (JSON, xlsx) may compress well and are harmless
EXTRACTED_MARKER = ".assurexray-extracted.json"
JUNK_DIRS = {"__MACOSX"}


class DownloadError(AssureXRayError, RuntimeError):
    """A download failed or did not verify; the message says what to do next."""


class ArchiveError(AssureXRayError, RuntimeError):
    """An archive cannot be unpacked."""


class UnsafeArchiveError(ArchiveError):
    """An archive entry would escape the destination, is a link, or is a zip bomb."""


def default_cache_dir() -> Path:
    """$ASSUREXRAY_CACHE, else $XDG_CACHE_HOME/assurexray, else ~/.cache/assurexray."""
    if os.environ.get("ASSUREXRAY_CACHE"):
        return Path(os.environ["ASSUREXRAY_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "assurexray"
    return Path.home() / ".cache" / "assurexray"


# ---- download ----------------------------------------------------------------------------

def fetch(url: str, dest: Path, size: int | None = None, md5: str | None = None,
          sha256: str | None = None, chunk: int = 1 << 20, retries: int = 3,
          timeout: float = 60, backoff: float = 2.0) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``.

    An existing ``dest`` that verifies is returned without touching the network. Otherwise the
    file is written to ``dest.part``; after a network error it is resumed (Range request) up to
    ``retries`` more times, waiting ``backoff * attempt`` seconds. A server that ignores Range
    restarts the file from zero. Raises DownloadError on HTTP client errors, on exhausted
    retries (the .part is kept for the next run) and on a size/checksum mismatch (the .part is
    deleted).
    """
    dest = Path(dest)
    if dest.exists():
        problems = _mismatches(dest, size, md5, sha256, chunk)
        if not problems:
            log.info("%s already downloaded and verified", dest)
            return dest
        log.warning("%s does not verify (%s); downloading it again", dest, "; ".join(problems))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _download_with_retries(url, part, size, chunk, retries, timeout, backoff)
    problems = _mismatches(part, size, md5, sha256, chunk)
    if problems:
        part.unlink()
        raise DownloadError(
            f"{dest.name} from {url} does not verify: {'; '.join(problems)}. The bad download was "
            "deleted. Rerun to download it again; if it fails again, check data.btxrd.url, size, "
            f"md5 and sha256 in params.yaml, or {MANUAL_HINT}.")
    os.replace(part, dest)
    log.info("downloaded and verified %s", dest)
    return dest


def _download_with_retries(url: str, part: Path, size: int | None, chunk: int, retries: int,
                           timeout: float, backoff: float) -> None:
    error: OSError | http.client.HTTPException
    for attempt in range(retries + 1):
        try:
            _download(url, part, size, chunk, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the .part is at or past the end: start over
                part.unlink(missing_ok=True)
            elif exc.code < 500:
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}: check "
                                    f"data.btxrd.url in params.yaml, or {MANUAL_HINT}") from exc
            error = exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            error = exc
        if attempt == retries:
            raise DownloadError(
                f"could not download {url} after {retries + 1} attempts ({error}). The partial "
                f"file {part} is kept: rerun to resume it, or {MANUAL_HINT}.") from error
        log.warning("download interrupted (%s); resuming, attempt %d of %d",
                    error, attempt + 2, retries + 1)
        time.sleep(backoff * (attempt + 1))


def _download(url: str, part: Path, size: int | None, chunk: int, timeout: float) -> None:
    """One request: append to ``part`` from where it ends, or rewrite it from zero."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return  # complete; verification decides
        part.unlink()
        offset = 0
    headers = {"User-Agent": "assurexray", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout) as resp:
        if offset and resp.status != 206:
            log.info("server ignored the Range request; restarting from zero")
            offset = 0
        elif offset and _range_start(resp) != offset:
            part.unlink()
            raise ConnectionError(f"server answered range {resp.headers.get('Content-Range')} "
                                  f"for a request from byte {offset}")
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        received = _stream(resp, part, "ab" if offset else "wb", chunk, offset, total)
    # urllib returns b"" at a premature close instead of raising: compare with the expected end.
    if total is not None and offset + received < total:
        raise ConnectionError(f"connection closed at byte {offset + received} of {total}")


def _range_start(resp) -> int:
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _stream(resp, part: Path, mode: str, chunk: int, initial: int, total: int | None) -> int:
    received = 0
    with open(part, mode) as fh, progress(total=total, initial=initial, unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=part.name, mininterval=1) as bar:
        while block := resp.read(chunk):
            fh.write(block)
            received += len(block)
            bar.update(len(block))
    return received


def _mismatches(path: Path, size: int | None, md5: str | None, sha256: str | None,
                chunk: int = 1 << 20) -> list[str]:
    """'<check>: expected X, got Y' for each failing check; size first (no hashing needed)."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return [f"size: expected {size} bytes, got {got_size}"]
    if md5 is None and sha256 is None:
        return []
    got_md5, got_sha256 = _digests(path, chunk)
    problems = []
    if md5 is not None and got_md5 != md5.lower():
        problems.append(f"MD5: expected {md5}, got {got_md5}")
    if sha256 is not None and got_sha256 != sha256.lower():
        problems.append(f"SHA-256: expected {sha256}, got {got_sha256}")
    return problems


def _digests(path: Path, chunk: int) -> tuple[str, str]:
    """MD5 and SHA-256 hex digests in one streaming pass."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


# ---- extraction --------------------------------------------------------------------------

def safe_extract(zip_path: Path, dest: Path, max_bytes: int = MAX_UNCOMPRESSED_BYTES,
                 max_ratio: float = MAX_COMPRESSION_RATIO) -> Path:
    """Unpack ``zip_path`` into ``dest`` atomically; return ``dest``.

    Every entry is checked before anything is written: absolute paths, drive letters, ``..``
    components and symlinks raise UnsafeArchiveError naming the entry, as do a total declared
    size above ``max_bytes`` or an entry over 1 MiB compressed more than ``max_ratio`` times
    (zipfile enforces the declared sizes and CRCs while reading). Directory entries and
    ``__MACOSX/`` are skipped. The files go to a temporary sibling that is renamed to ``dest``
    when complete, so an interrupted run leaves no half-written ``dest``. A ``dest`` already
    holding a complete extraction of this archive (marker file) is returned as is; any other
    existing ``dest`` is replaced.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    stamp = {"archive": zip_path.name, "bytes": zip_path.stat().st_size}
    if _read_marker(dest) == stamp:
        log.info("%s already holds %s", dest, zip_path.name)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _safe_members(zf.infolist(), max_bytes, max_ratio)
            tmp = _sibling_dir(dest, "partial")
            try:
                _extract_members(zf, members, tmp)
                (tmp / EXTRACTED_MARKER).write_text(json.dumps(stamp) + "\n")
                _replace_dir(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip_path}: not a valid zip archive ({exc}); delete it and "
                           "rerun to download it again") from exc
    log.info("extracted %d files from %s into %s", len(members), zip_path.name, dest)
    return dest


def _safe_members(infos: list[zipfile.ZipInfo], max_bytes: int,
                  max_ratio: float) -> list[zipfile.ZipInfo]:
    """The file entries to extract, after refusing any hostile entry."""
    members, total = [], 0
    for info in infos:
        parts = _checked_parts(info)
        if info.is_dir() or JUNK_DIRS & set(parts):
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_MIN_ENTRY_BYTES and ratio > max_ratio:
            raise UnsafeArchiveError(f"zip entry {info.filename!r} expands {ratio:.0f}x "
                                     f"(limit {max_ratio:g}x): refusing a possible zip bomb")
        total += info.file_size
        if total > max_bytes:
            raise UnsafeArchiveError(f"archive expands to more than {max_bytes} bytes (at entry "
                                     f"{info.filename!r}): refusing a possible zip bomb")
        members.append(info)
    return members


def _checked_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Path components of an entry; raise for anything that could land outside the target."""
    name = info.filename.replace("\\", "/")  # Windows-made archives; refuse on every OS alike
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(f"zip entry {info.filename!r} is a symbolic link")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"zip entry {info.filename!r} has an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UnsafeArchiveError(f"zip entry {info.filename!r} climbs out with '..'")
    return parts


def _extract_members(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], root: Path) -> None:
    for info in progress(members, desc=f"unzip {Path(zf.filename or '').name}", unit="file",
                     mininterval=1):
        target = root.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an old ``dest`` is moved aside first and deleted after."""
    if not dest.exists():
        os.replace(new, dest)
        return
    log.warning("replacing %s, which holds no complete extraction of this archive", dest)
    old = _sibling_dir(dest, "old")
    os.replace(dest, old / dest.name)
    os.replace(new, dest)
    shutil.rmtree(old)


def _sibling_dir(dest: Path, role: str) -> Path:
    """A new hidden folder beside ``dest`` (same filesystem, so renames are atomic).

    Not tempfile.mkdtemp: its 0700 mode would become the mode of ``dest``.
    """
    path = dest.parent / f".{dest.name}.{role}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _read_marker(dest: Path) -> dict | None:
    try:
        return json.loads((dest / EXTRACTED_MARKER).read_text())
    except (OSError, ValueError):
        return None


# ---- BTXRD -------------------------------------------------------------------------------

def fetch_and_extract(btxrd_params, raw_dir: Path, cache_dir: Path | None = None) -> Path:
    """Download the BTXRD zip into the cache, unpack it into ``raw_dir``, return the BTXRD root.

    The zip stays in ``cache_dir`` (argument, else ``data.btxrd.cache_dir``, else
    ``default_cache_dir()``) as ``BTXRD-<sha256[:12]>.zip``, outside the workspace, so reruns
    and new clones never download it again. The images are unpacked directly into ``raw_dir``
    (not linked from the cache) because DVC tracks ``raw_dir`` as a stage output and must see
    real files there. The root returned is the folder holding ``images/``, ``Annotations/``
    and ``dataset.xlsx`` (``raw_dir/BTXRD`` for the published layout).
    """
    cache = Path(cache_dir or btxrd_params.cache_dir or default_cache_dir()).expanduser()
    zip_path = cache / f"BTXRD-{btxrd_params.sha256[:12]}.zip"
    fetch(btxrd_params.url, zip_path, size=btxrd_params.size, md5=btxrd_params.md5,
          sha256=btxrd_params.sha256)
    raw_dir = safe_extract(zip_path, Path(raw_dir))
    return find_btxrd_root(raw_dir)


def find_btxrd_root(folder: Path) -> Path:
    """The first folder (``folder`` itself, then two levels down) laid out like BTXRD."""
    candidates = itertools.chain([folder], sorted(folder.glob("*")), sorted(folder.glob("*/*")))
    for candidate in candidates:
        if ((candidate / "images").is_dir() and (candidate / "Annotations").is_dir()
                and (candidate / "dataset.xlsx").is_file()):
            return candidate
    raise ArchiveError(f"{folder}: no folder with images/, Annotations/ and dataset.xlsx found "
                       f"in the extracted archive; {MANUAL_HINT}")
