"""What a file really is, from its first bytes: so that a text file where a binary is expected is named as such.

Downloads that "succeed" with the wrong bytes are common (field-notes.md): a mirror answers 200 with an HTML
login, quota or error page; a repository clone holds Git LFS or git-annex *pointers* instead of the weights
or images; a cloud bucket sends an XML or JSON error body; an interrupted copy leaves an empty file. A
binary reader then fails with "not a gzip file", "invalid load key 'v'" or "cannot identify image file",
which sends the user to the wrong fix. Every binary clipcal reads (archives, checkpoints, images, ``.npy``
arrays) is checked here when it fails to load, or before it is kept (downloads), and the message says what
the file is and what to do.

==================  ==================================================  =========================================
kind                recognised by                                       detail shown
==================  ==================================================  =========================================
``empty``           0 bytes                                             —
``lfs-pointer``     ``version https://git-lfs.github.com/spec/v1``      size of the real file, oid
``annex-pointer``   a (broken) link or text into ``.git/annex/objects`` size of the real file from the key
                    or ``/annex/objects/<KEY>``
``html``            ``<!doctype html``, ``<html``, ``<head``, ``<body``  the page's ``<title>``
``xml``             ``<?xml`` or a leading tag (S3 ``<Error>`` bodies)   ``<Code>`` / ``<Message>``
``json``            parses as JSON                                      ``error`` / ``message`` / ``detail``
``text``            printable UTF-8 (or a UTF-16 BOM), no NUL bytes      the first line
``gzip`` ``bzip2``  magic numbers                                       —
``xz`` ``zstd``
``zip`` ``tar``
``png`` ``jpeg``
``gif`` ``webp``
``bmp`` ``tiff``
``npy`` ``pickle``
``safetensors``
``binary``          anything else (left to the format's own reader)     —
==================  ==================================================  =========================================

The HTTP ``Content-Type`` of a download is used too (:func:`content_type_kind`): ``text/html`` with a body that
is not the expected binary is refused before it is written.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from clipcal.errors import ClipcalError

#: Bytes read from the start of a file to recognise it.
HEAD_BYTES = 65536

#: Kinds that are text: never a valid archive, checkpoint, image or array.
TEXT_KINDS = frozenset({"empty", "lfs-pointer", "annex-pointer", "html", "xml", "json", "text"})

#: Expected kinds per binary clipcal reads (``binary`` = an unrecognised binary: the reader decides).
ARCHIVE_KINDS = frozenset({"gzip", "bzip2", "xz", "zstd", "zip", "tar"})
CHECKPOINT_KINDS = frozenset({"zip", "pickle", "safetensors", "npy"})
IMAGE_KINDS = frozenset({"png", "jpeg", "gif", "webp", "bmp", "tiff"})
ARRAY_KINDS = frozenset({"npy"})

_ANNEX = re.compile(r"(?:^|/)(?:\.git/)?annex/objects/(?:[^\s]*/)?([A-Z0-9]+E?-s(\d+)(?:--|-)[^\s/]+)")

_LABELS = {
    "empty": "an empty file (0 bytes)",
    "lfs-pointer": "a Git LFS pointer file (the real file was never fetched)",
    "annex-pointer": "a git-annex pointer (the file's content is not present in this copy)",
    "html": "an HTML web page",
    "xml": "an XML document",
    "json": "a JSON document",
    "text": "a plain text file",
    "gzip": "a gzip archive", "bzip2": "a bzip2 archive", "xz": "an xz archive", "zstd": "a zstd archive",
    "zip": "a zip archive (also PyTorch checkpoints, .npz)", "tar": "a tar archive",
    "png": "a PNG image", "jpeg": "a JPEG image", "gif": "a GIF image", "webp": "a WebP image",
    "bmp": "a BMP image", "tiff": "a TIFF image",
    "npy": "a NumPy .npy array", "pickle": "a Python pickle (e.g. a legacy PyTorch checkpoint)",
    "safetensors": "a safetensors file",
    "binary": "a binary file of an unrecognised format",
    "missing": "missing",
}

_REMEDY = {
    "empty": "the download or copy was interrupted or failed: get the file again",
    "lfs-pointer": "fetch the real file: `git lfs pull` in the repository it came from (or download the file "
                   "itself; on Hugging Face use the 'resolve' link, not 'blob')",
    "annex-pointer": "fetch the content: `git annex get <path>` (DataLad: `datalad get <path>`) in the dataset "
                     "repository it came from",
    "html": "the server sent a web page (a login, quota, cookie-consent or error page) instead of the file: "
            "open the link in a browser, download the file itself",
    "xml": "the server sent an error document instead of the file (expired or private link?): check the URL",
    "json": "the server sent an error message instead of the file: check the URL and any access token",
    "text": "the file holds text, not the binary data expected: check that this is the right file",
}


@dataclass(frozen=True)
class FileKind:
    """What a file is.

    Attributes:
        kind: one of the kinds in the module table (``"html"``, ``"lfs-pointer"``, ``"gzip"``, …, ``"binary"``).
        label: a phrase for messages, e.g. ``"an HTML web page"``.
        detail: what identifies this one (an HTML title, the size of the file an LFS pointer stands for), or ``""``.
        size: the file's size in bytes (``None`` when unknown, e.g. a stream).
    """

    kind: str
    label: str
    detail: str = ""
    size: int | None = None

    @property
    def is_text(self) -> bool:
        """True for the text kinds (:data:`TEXT_KINDS`), which are never a valid binary."""
        return self.kind in TEXT_KINDS

    @property
    def remedy(self) -> str:
        """What to do about a file of this kind where a binary was expected (``""`` for binary kinds)."""
        return _REMEDY.get(self.kind, "")

    def describe(self) -> str:
        """``label`` with ``detail`` and the size, e.g. ``'an HTML web page titled "Quota exceeded" (2,345 bytes)'``."""
        bits = [b for b in (self.detail, f"{self.size:,} bytes" if self.size and self.kind != "empty" else "") if b]
        return self.label + (f" ({'; '.join(bits)})" if bits else "")


def _make(kind: str, detail: str = "", size: int | None = None) -> FileKind:
    return FileKind(kind, _LABELS[kind], detail, size)


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _short(s: str, n: int = 100) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _decode_text(head: bytes) -> str | None:
    """The head as text when it is text (UTF-8/ASCII or UTF-16 with a BOM, no control bytes), else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return head[2: len(head) - (len(head) % 2)].decode("utf-16-le" if head[1] == 0xFE else "utf-16-be")
        except UnicodeDecodeError:
            return None
    if b"\x00" in head:
        return None
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # a multi-byte character cut at the end of the head is fine
            return None
        s = head[: err.start].decode("utf-8")
    s = s.removeprefix("\ufeff")
    control = sum(1 for c in s if ord(c) < 32 and c not in "\t\n\r\f\v")
    return s if control <= len(s) // 100 else None


#: Binary formats recognised by their leading bytes ("magic numbers"), as ``(kind, prefixes)``.
_MAGIC: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("gzip", (b"\x1f\x8b",)), ("bzip2", (b"BZh",)), ("xz", (b"\xfd7zXZ\x00",)), ("zstd", (b"\x28\xb5\x2f\xfd",)),
    ("zip", (b"PK\x03\x04", b"PK\x05\x06")), ("png", (b"\x89PNG\r\n\x1a\n",)), ("jpeg", (b"\xff\xd8\xff",)),
    ("gif", (b"GIF87a", b"GIF89a")), ("tiff", (b"II*\x00", b"MM\x00*")), ("npy", (b"\x93NUMPY",)),
)


def _binary_kind(head: bytes, size: int | None) -> str | None:
    for kind, prefixes in _MAGIC:
        if head.startswith(prefixes):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 10 and head[8:10] == b'{"':  # safetensors: u64 little-endian header length, then JSON
        n = struct.unpack("<Q", head[:8])[0]
        if size is None or 8 + n <= size:
            return "safetensors"
    return None


def _text_kind(s: str, size: int | None) -> FileKind:
    t = s.lstrip()
    low = t[:2048].lower()
    if t.startswith(("version https://git-lfs.github.com/spec/", "version https://hawser.github.com/spec/")):
        m = re.search(r"^size (\d+)", t, re.M)
        oid = re.search(r"^oid (\w+):([0-9a-f]{8,})", t, re.M)
        bits = ([f"stands for a {_human(int(m.group(1)))} file"] if m else []) + \
               ([f"oid {oid.group(1)}:{oid.group(2)[:12]}…"] if oid else [])
        return _make("lfs-pointer", ", ".join(bits), size)
    if (size if size is not None else len(t)) < 4096:  # annex pointer files are one short line
        m = _ANNEX.search(t.splitlines()[0] if t else "")
        if m:
            return _make("annex-pointer", f"key {m.group(1)[:40]}…, stands for a {_human(int(m.group(2)))} file",
                         size)
    if low.startswith(("<!doctype html", "<html")) or re.search(r"<(html|head|body)[\s>]", low):
        m = re.search(r"<title[^>]*>(.*?)</title>", t[:HEAD_BYTES], re.I | re.S)
        return _make("html", f'titled "{_short(m.group(1), 80)}"' if m and m.group(1).strip() else "", size)
    if low.startswith("<?xml") or re.match(r"<[a-z][\w:-]*[\s>]", low):
        code = re.search(r"<Code>(.*?)</Code>", t, re.S)
        msg = re.search(r"<Message>(.*?)</Message>", t, re.S)
        detail = ": ".join(_short(x.group(1), 80) for x in (code, msg) if x)
        return _make("xml", detail, size)
    if t[:1] in "{[":
        try:
            obj, parsed = json.loads(t), True
        except ValueError:  # a long document cut at the head still counts as JSON
            obj, parsed = None, size is not None and size > HEAD_BYTES
        if parsed:
            detail = ""
            for k in ("error", "message", "detail", "errors", "msg", "code"):
                if isinstance(obj, dict) and k in obj:
                    v = obj[k] if isinstance(obj[k], str) else json.dumps(obj[k], ensure_ascii=False)
                    detail = f"{k}: {_short(v, 100)}"
                    break
            return _make("json", detail, size)
    first = next((ln for ln in t.splitlines() if ln.strip()), "")
    return _make("text", f'begins "{_short(first, 60)}"' if first else "", size)


def sniff_bytes(head: bytes, size: int | None = None) -> FileKind:
    """Recognise data from its first bytes.

    Args:
        head: the first bytes (up to :data:`HEAD_BYTES` are looked at).
        size: the whole file's size in bytes, if known (``None``: ``head`` may be all of it).

    Returns:
        :class:`FileKind`; ``kind == "binary"`` when nothing is recognised.
    """
    head = bytes(head[:HEAD_BYTES])
    if not head and (size is None or size == 0):
        return _make("empty", size=0)
    kind = _binary_kind(head, size)
    if kind is not None:
        return _make(kind, size=size)
    s = _decode_text(head)
    if s is not None and s.strip():
        return _text_kind(s, size)
    if s is not None:  # only whitespace
        return _make("text", "only whitespace", size)
    return _make("binary", size=size)


def sniff(path: str | os.PathLike) -> FileKind:
    """Recognise a file (see the module table). A broken link into ``.git/annex/objects`` is an
    ``annex-pointer``; a path that does not exist is ``missing``.

    Args:
        path: the file.

    Returns:
        :class:`FileKind`.
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        target = os.readlink(p)
        m = _ANNEX.search(target.replace(os.sep, "/"))
        if m:
            return _make("annex-pointer", f"a link to {_short(target, 60)} whose content was not fetched; "
                                          f"stands for a {_human(int(m.group(2)))} file")
        return _make("missing", f"a broken link to {_short(target, 80)}")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
    except FileNotFoundError:
        return _make("missing")
    except OSError:
        return _make("binary")
    return sniff_bytes(head, size)


def content_type_kind(content_type: str | None) -> str | None:
    """The text kind an HTTP ``Content-Type`` announces (``"html"``, ``"json"``, ``"xml"``, ``"text"``), or
    ``None`` for binary or absent types."""
    if not content_type:
        return None
    ct = content_type.split(";")[0].strip().lower()
    if ct in ("text/html", "application/xhtml+xml"):
        return "html"
    if ct == "application/json" or ct.endswith("+json"):
        return "json"
    if ct in ("application/xml", "text/xml") or ct.endswith("+xml"):
        return "xml"
    if ct.startswith("text/"):
        return "text"
    return None


def unexpected(path_or_kind: str | os.PathLike | FileKind, expected: Iterable[str]) -> FileKind | None:
    """The file's kind when it is recognised and not one of ``expected`` (text kinds always count), else None.

    An unrecognised binary (``"binary"``) is not judged here: the format's own reader decides.

    Args:
        path_or_kind: a file, or a :class:`FileKind` from :func:`sniff` / :func:`sniff_bytes`.
        expected: acceptable kinds, e.g. :data:`ARCHIVE_KINDS`.
    """
    k = path_or_kind if isinstance(path_or_kind, FileKind) else sniff(path_or_kind)
    if k.kind in ("binary", "missing") or k.kind in set(expected):
        return None
    return k


def note(path: str | os.PathLike) -> str:
    """``" — it is <what it is>; <what to do>"`` when ``path`` is a text file where a binary belongs, else ``""``.
    For appending to the message of a reader that failed."""
    k = sniff(path)
    if not k.is_text:
        return ""
    return f" — it is {k.describe()}; {k.remedy}"


def check_file(path: str | os.PathLike, what: str, expected: Iterable[str] = (), error: type = ClipcalError,
               hint: str | None = None) -> None:
    """Raise ``error`` when ``path`` is a text file (HTML page, LFS/annex pointer, empty, JSON, …) or another
    recognised kind not in ``expected``; pass otherwise (unrecognised binaries are left to the real reader).

    Args:
        path: the file.
        what: what it should be, for the message (e.g. ``"a PyTorch / safetensors checkpoint"``).
        expected: acceptable kinds (e.g. :data:`CHECKPOINT_KINDS`); empty = only text kinds are refused.
        error: the :class:`~clipcal.errors.ClipcalError` subclass to raise.
        hint: what to do, appended after the kind's own remedy.

    Raises:
        ``error``: message ``"<path> is <what it is>, not <what>"``, hint the remedy.
    """
    k = sniff(path)
    bad = (k.is_text and k.kind not in set(expected)) or (expected and unexpected(k, expected) is not None)
    if not bad:
        return
    remedy = "; ".join(x for x in (k.remedy, hint) if x) or None
    raise error(f"{path} is {k.describe()}, not {what}", hint=remedy)
