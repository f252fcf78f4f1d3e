"""Downloads against a local HTTP server on 127.0.0.1: resume with Range, checksums, atomic extraction, and
the manual-placement message when the network is unreachable."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipcal.data import download
from clipcal.data.download import SOURCES, Source, fetch
from clipcal.errors import DataError

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng and not srv.ignore_range else 0
        if start >= len(data) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # simulate a dropped connection mid-transfer
            self.wfile.write(body[: srv.cut_after])
            self.wfile.flush()
            srv.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server with Range support; stopped at the end of the test."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.ignore_range, srv.cut_after = {}, [], False, None
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    watchdog = threading.Timer(60, srv.shutdown)  # stops by itself even if a test hangs
    watchdog.daemon = True
    watchdog.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        watchdog.cancel()
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/file.tar.gz"


def test_fetch_complete_with_checksum(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    seen = []
    out = fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD),
                   progress=lambda d, t, m: seen.append((d, t)))
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_fetch_resumes_part_file_with_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:3000])
    out = fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.log == [("/f.bin", "bytes=3000-")]


def test_fetch_dropped_connection_then_resume(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = 4000
    with pytest.raises(DataError, match="stopped at 4000 of 10240 bytes") as e:
        fetch(server.url + "/f.bin", tmp_path / "f.bin", md5=hashlib.md5(PAYLOAD).hexdigest())
    assert "resume" in e.value.hint
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 4000 and not (tmp_path / "f.bin").exists()
    out = fetch(server.url + "/f.bin", tmp_path / "f.bin", md5=hashlib.md5(PAYLOAD).hexdigest())
    assert out.read_bytes() == PAYLOAD
    assert server.log[-1] == ("/f.bin", "bytes=4000-")


def test_fetch_server_ignoring_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 500)  # stale bytes must not survive
    out = fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD))
    assert out.read_bytes() == PAYLOAD


def test_fetch_complete_part_gets_416_and_is_verified(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    assert fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256=_sha(PAYLOAD)).read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_part(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(server.url + "/f.bin", tmp_path / "f.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def _tarball(folder: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def tiny_source(monkeypatch):
    def check(p: Path):
        return None if (p / "metadata.csv").is_file() else "metadata.csv missing"

    def make(sha256=None, folder="tiny_ds"):
        src = Source(name="tiny", urls=("unused",), filename="tiny.tar.gz", folder=folder,
                        layout="{root}/tiny_ds/metadata.csv", sha256=sha256, check=check,
                        manual="get tiny.tar.gz and extract it into {root}")
        monkeypatch.setitem(SOURCES, "tiny", src)
        return src
    return make


def test_download_end_to_end_atomic_and_idempotent(server, tmp_path, tiny_source):
    blob = _tarball("tiny_ds", {"metadata.csv": b"a,b\n1,2\n", "img/1.jpg": b"\xff\xd8"})
    server.files["/tiny.tar.gz"] = blob
    tiny_source(sha256=_sha(blob))
    root = tmp_path / "data"
    out = download("tiny", root, urls=[server.url + "/tiny.tar.gz"])
    assert out == root / "tiny_ds" and (out / "metadata.csv").read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.name for p in root.iterdir()) == ["tiny_ds"]  # archive removed, no temp folders
    n = len(server.log)
    assert download("tiny", root, urls=[server.url + "/tiny.tar.gz"]) == out
    assert len(server.log) == n  # already there: no request


def test_download_without_published_checksum_records_sha256(server, tmp_path, tiny_source):
    blob = _tarball("tiny_ds", {"metadata.csv": b"x\n"})
    server.files["/t.tgz"] = blob
    tiny_source(sha256=None)
    download("tiny", tmp_path, urls=[server.url + "/t.tgz"])
    assert (tmp_path / "tiny.tar.gz.sha256").read_text().split()[0] == _sha(blob)


def test_download_failing_content_check_leaves_no_folder(server, tmp_path, tiny_source):
    server.files["/bad.tgz"] = _tarball("tiny_ds", {"readme.txt": b"no metadata"})
    tiny_source()
    with pytest.raises(DataError, match="failed its check: metadata.csv missing"):
        download("tiny", tmp_path, urls=[server.url + "/bad.tgz"])
    assert not (tmp_path / "tiny_ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extract")]


def test_unsafe_tar_member_refused(server, tmp_path, tiny_source):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    server.files["/evil.tgz"] = buf.getvalue()
    tiny_source()
    with pytest.raises(DataError, match="cannot extract"):
        download("tiny", tmp_path / "root", urls=[server.url + "/evil.tgz"])
    assert not (tmp_path / "escape.txt").exists()


def test_unreachable_network_gives_manual_placement(tmp_path):
    with pytest.raises(DataError) as e:
        download("waterbirds", tmp_path, urls=[_dead_url()], timeout=2)
    msg = str(e.value)
    assert "download failed" in msg
    assert f"{tmp_path}/waterbird_complete95_forest2water2/metadata.csv" in msg
    assert "waterbird_complete95_forest2water2.tar.gz" in msg and "tar -xzf" in msg


def test_celeba_is_manual_and_unknown_name(tmp_path):
    with pytest.raises(DataError) as e:
        download("celeba", tmp_path)
    assert "cannot be downloaded automatically" in str(e.value)
    assert f"{tmp_path}/list_attr_celeba.csv" in str(e.value)
    with pytest.raises(DataError, match="downloads exist for: waterbirds, metashift, celeba"):
        download("demo", tmp_path)
