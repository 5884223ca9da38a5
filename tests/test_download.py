"""Download and extraction against a local HTTP server (no network) and hand-made zips."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assurexray.data import download
from assurexray.data.download import (
    EXTRACTED_MARKER,
    DownloadError,
    UnsafeArchiveError,
    default_cache_dir,
    fetch,
    fetch_and_extract,
    safe_extract,
)
from assurexray.params import BtxrdParams

PAYLOAD = os.urandom(300_000)


class FileServer:
    """Serves ``payload`` at /file (Range aware), redirects /redirect to it, logs requests.

    ``cut_after``: the next response stops after that many body bytes and drops the connection.
    ``ignore_range``: answer every request with the whole file (200).
    ``omit_length``: send no Content-Length (the body ends when the connection closes).
    """

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None
        self.ignore_range = False
        self.omit_length = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/file")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/file":
                    server.serve_file(self)
                else:
                    self.send_error(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{route}"

    def serve_file(self, handler: BaseHTTPRequestHandler) -> None:
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(self.payload):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(self.payload)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range",
                                f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            handler.send_response(200)
        body = self.payload[start:]
        if not self.omit_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if self.cut_after is not None:
            body, self.cut_after = body[:self.cut_after], None
            handler.close_connection = True
        handler.wfile.write(body)


@pytest.fixture
def server():
    srv = FileServer(PAYLOAD)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def sums(data: bytes) -> dict:
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest()}


def test_full_download_verifies_and_leaves_no_part(server, tmp_path):
    dest = tmp_path / "cache" / "a.zip"
    assert fetch(server.url("/file"), dest, **sums(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".zip.part").exists()
    assert server.requests == [("/file", None)]


def test_redirect_is_followed(server, tmp_path):
    dest = fetch(server.url("/redirect"), tmp_path / "a.zip", **sums(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert [path for path, _ in server.requests] == ["/redirect", "/file"]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.cut_after = 100_000
    dest = fetch(server.url("/file"), tmp_path / "a.zip", **sums(PAYLOAD), backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/file", None), ("/file", "bytes=100000-")]


def test_interruption_without_content_length_is_caught_by_expected_size(server, tmp_path):
    server.cut_after, server.omit_length = 70_000, True
    dest = fetch(server.url("/file"), tmp_path / "a.zip", **sums(PAYLOAD), backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/file", None), ("/file", "bytes=70000-")]


def test_resume_survives_a_new_run_through_a_redirect(server, tmp_path):
    server.cut_after = 120_000
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError, match="rerun to resume"):
        fetch(server.url("/redirect"), dest, **sums(PAYLOAD), retries=0)
    assert dest.with_suffix(".zip.part").stat().st_size == 120_000
    assert not dest.exists()
    fetch(server.url("/redirect"), dest, **sums(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    # The Range header travels through the redirect to the file route.
    assert server.requests[-1] == ("/file", "bytes=120000-")


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "a.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD[:5000])
    fetch(server.url("/file"), dest, **sums(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD  # not the 5000-byte prefix twice
    assert server.requests == [("/file", "bytes=5000-")]


def test_416_on_a_complete_part_restarts(server, tmp_path):
    dest = tmp_path / "a.zip"
    dest.with_suffix(".zip.part").write_bytes(PAYLOAD)
    checks = sums(PAYLOAD)
    fetch(server.url("/file"), dest, md5=checks["md5"], sha256=checks["sha256"], backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/file", f"bytes={len(PAYLOAD)}-"), ("/file", None)]


@pytest.mark.parametrize("field", ["md5", "sha256", "size"])
def test_wrong_checksum_raises_and_leaves_nothing(server, tmp_path, field):
    checks = sums(PAYLOAD)
    expected = {"md5": "0" * 32, "sha256": "f" * 64, "size": len(PAYLOAD) + 1}[field]
    checks[field] = expected
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/file"), dest, **checks, backoff=0)
    message = str(err.value)
    assert str(expected) in message and "btxrd_dir" in message
    if field != "size":
        assert sums(PAYLOAD)[field] in message  # the digest we got
    assert list(tmp_path.iterdir()) == []


def test_cached_rerun_does_not_touch_the_server(server, tmp_path):
    dest = tmp_path / "a.zip"
    fetch(server.url("/file"), dest, **sums(PAYLOAD))
    server.requests.clear()
    fetch(server.url("/file"), dest, **sums(PAYLOAD))
    assert server.requests == []


def test_corrupt_existing_file_is_downloaded_again(server, tmp_path):
    dest = tmp_path / "a.zip"
    dest.write_bytes(b"x" * len(PAYLOAD))
    fetch(server.url("/file"), dest, **sums(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404.*btxrd_dir"):
        fetch(server.url("/missing"), tmp_path / "a.zip", **sums(PAYLOAD), backoff=0)
    assert len(server.requests) == 1


def test_unreachable_server_retries_then_explains(tmp_path):
    srv = FileServer(PAYLOAD)  # bound but never serving: connections are refused or hang
    port = srv.httpd.server_address[1]
    srv.httpd.server_close()
    with pytest.raises(DownloadError, match="after 3 attempts.*btxrd_dir"):
        fetch(f"http://127.0.0.1:{port}/file", tmp_path / "a.zip", retries=2, timeout=5,
              backoff=0)


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSUREXRAY_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "own"
    monkeypatch.delenv("ASSUREXRAY_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "assurexray"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "assurexray"


# ---- extraction --------------------------------------------------------------------------

def make_zip(path: Path, entries: dict) -> Path:
    """entries: name -> bytes, or name -> ZipInfo-ready (bytes, external_attr)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if isinstance(data, tuple):
                data, info.external_attr = data
            zf.writestr(info, data)
    return path


BTXRD_ENTRIES = {
    "BTXRD/": b"",
    "BTXRD/images/": b"",
    "BTXRD/images/IMG000001.jpeg": b"jpeg-1",
    "BTXRD/images/IMG003720.jpg": b"jpeg-2",
    "BTXRD/Annotations/IMG000001.json": b"{}",
    "BTXRD/Annotations/Annotations/IMG000001.json": b"{}",
    "BTXRD/dataset.xlsx": b"xlsx",
    "BTXRD/~$dataset(total).xlsx": b"lock",
    "__MACOSX/BTXRD/._dataset.xlsx": b"junk",
}


def test_extract_release_layout(tmp_path):
    archive = make_zip(tmp_path / "a.zip", BTXRD_ENTRIES)
    dest = safe_extract(archive, tmp_path / "raw")
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    expected = sorted(n for n, d in BTXRD_ENTRIES.items()
                      if not n.endswith("/") and not n.startswith("__MACOSX"))
    assert files == sorted(expected + [EXTRACTED_MARKER])
    assert (dest / "BTXRD/images/IMG003720.jpg").read_bytes() == b"jpeg-2"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_complete_extraction_is_not_redone(tmp_path):
    archive = make_zip(tmp_path / "a.zip", BTXRD_ENTRIES)
    dest = safe_extract(archive, tmp_path / "raw")
    (dest / "BTXRD/dataset.xlsx").write_bytes(b"edited")
    safe_extract(archive, dest)
    assert (dest / "BTXRD/dataset.xlsx").read_bytes() == b"edited"


def test_incomplete_destination_is_replaced(tmp_path):
    archive = make_zip(tmp_path / "a.zip", BTXRD_ENTRIES)
    (tmp_path / "raw" / "stale").mkdir(parents=True)
    dest = safe_extract(archive, tmp_path / "raw")
    assert not (dest / "stale").exists()
    assert (dest / "BTXRD/dataset.xlsx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "raw"]


SYMLINK = (b"/etc/passwd", (stat.S_IFLNK | 0o777) << 16)


@pytest.mark.parametrize("hostile", ["../evil.txt", "BTXRD/../../evil.txt", "/abs.txt",
                                     "C:/evil.txt", "..\\evil.txt", "link"])
def test_hostile_entry_is_refused_and_nothing_extracted(tmp_path, hostile):
    entries = {"BTXRD/ok.txt": b"ok", hostile: SYMLINK if hostile == "link" else b"evil"}
    archive = make_zip(tmp_path / "a.zip", entries)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(hostile))):
        safe_extract(archive, work / "raw")
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bomb_ratio_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"bomb.bin": bytes(4 * 1024**2)})
    with pytest.raises(UnsafeArchiveError, match="bomb.bin.*zip bomb"):
        safe_extract(archive, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_total_size_limit_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.bin": os.urandom(600), "b.bin": os.urandom(600)})
    with pytest.raises(UnsafeArchiveError, match="more than 1000 bytes.*b.bin"):
        safe_extract(archive, tmp_path / "raw", max_bytes=1000)


def test_interrupted_extraction_leaves_no_output(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "a.zip", BTXRD_ENTRIES)
    calls, real_copy = [], shutil.copyfileobj

    def failing_copy(src, dst, length=0):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C in the middle of the third file
            raise KeyboardInterrupt
        real_copy(src, dst, length)

    monkeypatch.setattr(download.shutil, "copyfileobj", failing_copy)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_fetch_and_extract_finds_root_and_caches_zip(server, tmp_path):
    archive = make_zip(tmp_path / "release.zip", BTXRD_ENTRIES)
    server.payload = archive.read_bytes()
    checks = sums(server.payload)
    params = BtxrdParams(url=server.url("/redirect"), size=checks["size"], md5=checks["md5"],
                         sha256=checks["sha256"], cache_dir=str(tmp_path / "unused"))
    root = fetch_and_extract(params, tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert root == tmp_path / "raw" / "BTXRD"
    assert (root / "images" / "IMG000001.jpeg").read_bytes() == b"jpeg-1"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        f"BTXRD-{checks['sha256'][:12]}.zip"]
    assert not (tmp_path / "unused").exists()
    server.requests.clear()
    assert fetch_and_extract(params, tmp_path / "raw", cache_dir=tmp_path / "cache") == root
    assert server.requests == []


def test_archive_without_btxrd_layout_is_an_error(server, tmp_path):
    archive = make_zip(tmp_path / "release.zip", {"other/readme.txt": b"hi"})
    server.payload = archive.read_bytes()
    checks = sums(server.payload)
    params = BtxrdParams(url=server.url("/file"), **checks)
    with pytest.raises(download.ArchiveError, match="images/, Annotations/ and dataset.xlsx"):
        fetch_and_extract(params, tmp_path / "raw", cache_dir=tmp_path / "cache")
