"""Issue 10 item 3 — a text file where a binary is expected is named as such.

Kind-level rule: every binary clipcal reads (downloaded archives, checkpoints, images, ``.npy`` arrays) that turns
out to be an HTML page, a Git LFS / git-annex pointer, an empty file, a JSON / XML error body or plain text is
reported as *that*, with what to do; a bad download is never kept (no archive, no ``.part``, no ``.sha256``) and
the message gives the manual-placement instructions.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from clipcal import filekind
from clipcal.errors import BackboneError, DataError

HTML = (b"<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title></head>"
        b"<body><p>Too many users have viewed or downloaded this file recently.</p></body></html>\n")
LFS = (b"version https://git-lfs.github.com/spec/v1\n"
       b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 351234567\n")
ANNEX = b"/annex/objects/SHA256E-s2048--4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393.jpg\n"
JSON_BODY = b'{"error": "invalid_token", "message": "The access token expired"}'
XML_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b"<Message>Request has expired</Message></Error>")


# --------------------------------------------------------------------------------------------------------
# recognising the kind
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, kind, detail", [
    (HTML, "html", "Quota exceeded"),
    (LFS, "lfs-pointer", "351.2 MB"),
    (ANNEX, "annex-pointer", "2.0 KB"),
    (b"", "empty", ""),
    (JSON_BODY, "json", "invalid_token"),
    (XML_BODY, "xml", "AccessDenied"),
    (b"404: Not Found\n", "text", "404: Not Found"),
])
def test_text_kinds_are_recognised_with_what_identifies_them(tmp_path, data, kind, detail):
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    k = filekind.sniff(p)
    assert k.kind == kind
    assert k.is_text
    assert detail in k.describe()
    assert k.remedy  # every text kind says what to do


def test_binary_kinds_are_not_mistaken_for_text(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.arange(5.0))
    rng = np.random.default_rng(0)
    cases = {"gzip": gzip.compress(b"x" * 1000), "npy": buf.getvalue(),
             "binary": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()}
    for kind, data in cases.items():
        k = filekind.sniff_bytes(data, len(data))
        assert (k.kind, k.is_text) == (kind, False)


def test_broken_annex_link_is_named_not_just_missing(tmp_path):
    link = tmp_path / "img.jpg"
    os.symlink("../.git/annex/objects/Xx/Yy/SHA256E-s5000--abcdef0123.jpg/SHA256E-s5000--abcdef0123.jpg", link)
    k = filekind.sniff(link)
    assert k.kind == "annex-pointer"
    assert "git annex get" in k.remedy


def test_content_type_names_text_kinds():
    assert filekind.content_type_kind("text/html; charset=utf-8") == "html"
    assert filekind.content_type_kind("application/json") == "json"
    assert filekind.content_type_kind("application/x-gzip") is None
    assert filekind.content_type_kind(None) is None


# --------------------------------------------------------------------------------------------------------
# downloads: a mirror answering 200 with an HTML page
# --------------------------------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body, ctype = self.server.files.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files = {}
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


@pytest.fixture
def toy_source(monkeypatch):
    """A download source whose archive holds ``toy/data.txt`` (no content check)."""
    mod = importlib.import_module("clipcal.data.download")  # the module (clipcal.data.download is the function)
    src = mod.Source(name="toy", urls=(), filename="toy.tar.gz", folder="toy",
                     layout="{root}/toy/data.txt", manual="copy toy.tar.gz by hand and run `tar -xzf toy.tar.gz -C {root}`")
    monkeypatch.setitem(mod.SOURCES, "toy", src)
    return mod


def _toy_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = b"hello\n"
        info = tarfile.TarInfo("toy/data.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _left_over(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream", None])
def test_download_answered_with_html_page_is_named_and_not_kept(server, toy_source, tmp_path, ctype):
    """Whatever the Content-Type says, a 200 answer holding an HTML page is refused as an HTML page, nothing
    of it is kept, and the hint is the manual placement."""
    server.files["/toy.tar.gz"] = (HTML, ctype)
    root = tmp_path / "data"
    with pytest.raises(DataError) as ei:
        toy_source.download("toy", root, urls=[server.url + "/toy.tar.gz"])
    err = ei.value
    assert "HTML web page" in err.message and "Quota exceeded" in err.message
    assert "not a gzip file" not in str(err)
    assert "tar -xzf toy.tar.gz" in err.hint and "toy/data.txt" in err.hint  # manual placement
    assert _left_over(root) == []  # no archive, no .part, no .sha256


def test_download_of_lfs_pointer_is_named(server, toy_source, tmp_path):
    server.files["/toy.tar.gz"] = (LFS, "text/plain")
    root = tmp_path / "data"
    with pytest.raises(DataError) as ei:
        toy_source.download("toy", root, urls=[server.url + "/toy.tar.gz"])
    assert "Git LFS pointer" in ei.value.message
    assert _left_over(root) == []


def test_html_mirror_falls_through_to_the_good_mirror(server, toy_source, tmp_path):
    server.files["/bad.tar.gz"] = (HTML, "text/html")
    server.files["/good.tar.gz"] = (_toy_archive(), "application/gzip")
    root = tmp_path / "data"
    out = toy_source.download("toy", root, urls=[server.url + "/bad.tar.gz", server.url + "/good.tar.gz"])
    assert (out / "data.txt").read_text() == "hello\n"
    assert _left_over(root) == ["toy", "toy.tar.gz.sha256"]  # only the good one's checksum is recorded


def test_part_file_holding_an_html_page_is_not_resumed(server, toy_source, tmp_path):
    """A .part left by an earlier attempt that got an HTML page must not be the start of the archive."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "toy.tar.gz.part").write_bytes(HTML)
    server.files["/toy.tar.gz"] = (_toy_archive(), "application/gzip")
    out = toy_source.download("toy", root, urls=[server.url + "/toy.tar.gz"])
    assert (out / "data.txt").read_text() == "hello\n"


def test_archive_that_cannot_be_extracted_is_deleted_with_manual_hint(server, toy_source, tmp_path):
    rng = np.random.default_rng(1)
    server.files["/toy.tar.gz"] = (b"\x1f\x8b" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
                                   "application/gzip")
    root = tmp_path / "data"
    with pytest.raises(DataError) as ei:
        toy_source.download("toy", root, urls=[server.url + "/toy.tar.gz"])
    assert "tar -xzf toy.tar.gz" in ei.value.hint
    assert _left_over(root) == []  # the bad archive and its .sha256 are gone


def test_fetch_refuses_text_where_a_binary_was_asked(server, tmp_path):
    from clipcal.data.download import fetch

    server.files["/w.pt"] = (JSON_BODY, "application/json")
    with pytest.raises(DataError) as ei:
        fetch(server.url + "/w.pt", tmp_path / "w.pt")
    assert "JSON document" in ei.value.message and "invalid_token" in ei.value.message
    assert _left_over(tmp_path) == []


# --------------------------------------------------------------------------------------------------------
# images, checkpoints, arrays
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, words", [(HTML, "HTML web page"), (LFS, "Git LFS pointer"),
                                         (ANNEX, "git-annex pointer"), (b"", "empty file")])
def test_image_that_is_a_text_file_is_named(tmp_path, data, words):
    from clipcal.data.images import check_image, load_image, thumbnail

    p = tmp_path / "bird.jpg"
    p.write_bytes(data)
    for fn in (load_image, thumbnail):
        with pytest.raises(DataError) as ei:
            fn(p)
        assert words in ei.value.message
    assert words in check_image(p)  # what `data validate` lists


def test_image_that_is_an_unfetched_annex_link_is_named(tmp_path):
    from clipcal.data.images import load_image, missing_reason

    link = tmp_path / "bird.jpg"
    os.symlink("../.git/annex/objects/Xx/Yy/SHA256E-s5000--abc.jpg/SHA256E-s5000--abc.jpg", link)
    with pytest.raises(DataError) as ei:
        load_image(link)
    assert "git-annex" in ei.value.message and "git annex get" in ei.value.hint
    assert "git-annex" in missing_reason(link)  # validate's reason for a missing file


def test_validate_names_an_unfetched_annex_image(tmp_path):
    from clipcal.data import load_benchmark, validate
    from tests.fixtures_data import make_csv_dataset

    rows = [{"filename": f"img{i}.jpg", "split": s, "y": i % 2, "a": i % 2}
            for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)]
    make_csv_dataset(tmp_path, rows)
    (tmp_path / "img0.jpg").unlink()
    os.symlink(".git/annex/objects/Ab/Cd/SHA256E-s999--ff.jpg/SHA256E-s999--ff.jpg", tmp_path / "img0.jpg")
    rep = validate(load_benchmark("csv", root=tmp_path))
    assert len(rep.missing) == 1 and "git-annex" in rep.missing["reason"].iloc[0]


@pytest.mark.parametrize("data, words", [(LFS, "Git LFS pointer"), (HTML, "HTML web page"), (b"", "empty file")])
def test_checkpoint_that_is_a_text_file_is_named_before_loading(tmp_path, data, words):
    from clipcal.backbones import check_weights, load_backbone

    ck = tmp_path / "ViT-B-32.pt"
    ck.write_bytes(data)
    for fn in (check_weights, load_backbone):
        with pytest.raises(BackboneError) as ei:
            fn(f"open_clip:ViT-B-32:{ck}")
        assert words in ei.value.message, ei.value.message
        assert "Python objects" not in str(ei.value)  # not the unpickling message


def test_store_array_replaced_by_lfs_pointer_is_named_in_trash_reason(tmp_path):
    from clipcal.store import Store

    st = Store(tmp_path / "store")
    e = st.put("inspect", {"k": 1}, {"x": np.arange(100.0)}, meta={})
    (e.path / e.manifest["arrays"]["x"]["file"]).write_bytes(LFS)
    assert st.get("inspect", {"k": 1}) is None
    reasons = [p.read_text() for p in (st.root / ".trash").glob("*/TRASHED_BECAUSE.txt")]
    assert len(reasons) == 1 and "Git LFS pointer" in reasons[0]
