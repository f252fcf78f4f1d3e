"""Download helpers: resumable HTTP download, checksum, atomic extraction, and manual-placement messages.

Public sources (:data:`SOURCES`):

* **waterbirds** — the group_DRO tarball ``waterbird_complete95_forest2water2.tar.gz`` (Stanford NLP), with
  the WILDS CodaLab bundle ``0x505056d5…`` (same content, ``waterbirds_v1.0/``) as the second mirror.
  Neither group_DRO nor WILDS publishes a checksum (WILDS: ``compressed_size: None``), so the extracted
  content is verified instead: ``metadata.csv`` must give the 12 official group counts
  (:data:`clipcal.data.waterbirds.EXPECTED_GROUP_COUNTS`) and its images must exist. The sha256 of the
  downloaded archive is written beside it (``<archive>.sha256``) for the record.
* **metashift** — SubpopBench's ``metashift.tar.gz`` (Dropbox); no published checksum: the four
  cat/dog × indoor/outdoor folders must be present and non-empty after extraction.
* **celeba** — no stable plain-HTTP source (Google Drive with quota pages, or Kaggle behind a login):
  :func:`download` explains the manual placement.

Mechanics (:func:`fetch`): the file is written to ``<name>.part``; a rerun sends ``Range: bytes=<size>-``
and appends when the server answers 206 (restarts cleanly on 200); the checksum (when known) is checked
before the ``.part`` file is renamed; a mismatch deletes it. What the server sent is recognised
(:mod:`clipcal.filekind`): an answer whose ``Content-Type`` or first bytes show an HTML page, a JSON / XML
error body, a Git LFS pointer, plain text or nothing at all is refused and named as such, and never kept
(neither as ``.part`` nor under the final name; no ``.sha256`` is written), so a mirror that answers 200 with
a quota or login page falls through to the next mirror and, at the end, to the manual-placement message. Extraction goes into a temporary folder
inside ``root`` (members with absolute paths or ``..`` are refused by ``tarfile``'s ``data`` filter), the
content is checked, and the dataset folder is moved into place with one ``os.replace``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from clipcal import filekind
from clipcal.errors import DataError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a benchmark can be downloaded from and what it must look like once extracted.

    Attributes:
        name: registry name.
        urls: mirrors, tried in order (empty: manual placement only).
        filename: archive file name written into ``root``.
        folder: the folder the archive creates inside ``root`` (what the loader reads).
        layout: the expected layout, for the manual-placement message (``{root}`` is substituted).
        sha256 / md5: checksum of the archive when one is published, else ``None``.
        check: ``check(folder) -> None | str`` verifying the extracted content (reason on failure).
        manual: extra instructions for getting the files by hand.
        folder_aliases: other folder names a mirror extracts to (e.g. WILDS' ``waterbirds_v1.0``).
    """

    name: str
    urls: tuple[str, ...]
    filename: str
    folder: str
    layout: str
    sha256: str | None = None
    md5: str | None = None
    check: Callable[[Path], str | None] | None = None
    manual: str = ""
    folder_aliases: tuple[str, ...] = field(default_factory=tuple)


def _check_waterbirds(folder: Path) -> str | None:
    import pandas as pd

    from clipcal.data.waterbirds import EXPECTED_GROUP_COUNTS

    meta = folder / "metadata.csv"
    if not meta.is_file():
        return f"{meta} missing"
    df = pd.read_csv(meta)
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        s = df[df["split"] == code]
        got = tuple(int(((s["y"] == y) & (s["place"] == a)).sum()) for y in (0, 1) for a in (0, 1))
        if got != EXPECTED_GROUP_COUNTS[split]:
            return f"{split} group counts {got} differ from the official {EXPECTED_GROUP_COUNTS[split]}"
    absent = [f for f in df["img_filename"].head(50) if not (folder / f).is_file()]
    if absent:
        return f"images listed in metadata.csv are missing, e.g. {absent[:3]}"
    return None


def _check_metashift(folder: Path) -> str | None:
    from clipcal.data.metashift import FOLDERS

    for sub in FOLDERS:
        if not (folder / sub).is_dir() or not any((folder / sub).glob("*.jpg")):
            return f"{folder / sub} missing or without .jpg images"
    return None


SOURCES: dict[str, Source] = {
    "waterbirds": Source(
        name="waterbirds",
        urls=("https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz",
              "https://worksheets.codalab.org/rest/bundles/0x505056d5cdea4e4eaa0e242cbfe2daa4/contents/blob/"),
        filename="waterbird_complete95_forest2water2.tar.gz",
        folder="waterbird_complete95_forest2water2",
        folder_aliases=("waterbirds_v1.0",),
        layout="{root}/waterbird_complete95_forest2water2/metadata.csv\n"
               "{root}/waterbird_complete95_forest2water2/001.Black_footed_Albatross/*.jpg  (200 bird folders)",
        check=_check_waterbirds,
        manual="download https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz "
               "(group_DRO) in a browser or with wget, then `tar -xzf waterbird_complete95_forest2water2.tar.gz "
               "-C {root}`",
    ),
    "metashift": Source(
        name="metashift",
        urls=("https://www.dropbox.com/s/a7k65rlj4ownyr2/metashift.tar.gz?dl=1",),
        filename="metashift.tar.gz",
        folder="MetaShift-Cat-Dog-indoor-outdoor",
        layout="{root}/MetaShift-Cat-Dog-indoor-outdoor/train/cat/cat(indoor)/*.jpg\n"
               "{root}/MetaShift-Cat-Dog-indoor-outdoor/train/dog/dog(outdoor)/*.jpg\n"
               "{root}/MetaShift-Cat-Dog-indoor-outdoor/test/cat/cat(outdoor)/*.jpg\n"
               "{root}/MetaShift-Cat-Dog-indoor-outdoor/test/dog/dog(indoor)/*.jpg",
        check=_check_metashift,
        manual="download SubpopBench's https://www.dropbox.com/s/a7k65rlj4ownyr2/metashift.tar.gz?dl=1, then "
               "`tar -xzf metashift.tar.gz -C {root}`",
    ),
    "celeba": Source(
        name="celeba",
        urls=(),
        filename="",
        folder=".",
        layout="{root}/img_align_celeba/000001.jpg … 202599.jpg\n"
               "{root}/list_attr_celeba.csv        (or list_attr_celeba.txt)\n"
               "{root}/list_eval_partition.csv     (or list_eval_partition.txt)",
        manual="CelebA has no stable direct-download link: get it from Kaggle (`kaggle datasets download -d "
               "jessicali9530/celeba-dataset`, then `unzip celeba-dataset.zip -d {root}`) or from the official "
               "page https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive: Img/img_align_celeba.zip, "
               "Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt)",
    ),
}


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class _WrongContent(DataError):
    """A download answered with the wrong kind of content (an HTML page, an error body, …); nothing was kept."""

    def __init__(self, url: str, kind: filekind.FileKind, what: str, content_type: str | None = None):
        ctype = f" (Content-Type {content_type.split(';')[0].strip()})" if content_type else ""
        self.remedy = kind.remedy or "check the URL"
        super().__init__(f"download of {url}: the server answered{ctype} with {kind.describe()}, not {what}",
                         hint=f"{self.remedy}; nothing of it was kept")


def fetch(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
          progress: Callable | None = None, timeout: float = 30.0, expect: Iterable[str] | None = None,
          what: str = "the expected binary file") -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    Args:
        url: http(s) URL.
        dest: final file path; the data is written to ``<dest>.part`` and renamed when complete and verified.
        sha256 / md5: expected checksum (hex); checked over the whole file before the rename.
        progress: optional ``progress(done_bytes, total_bytes_or_None, message)``.
        timeout: socket timeout in seconds.
        expect: acceptable :mod:`clipcal.filekind` kinds (e.g. ``filekind.ARCHIVE_KINDS``); ``None`` = any
            binary. Text kinds (HTML page, JSON / XML error body, LFS pointer, plain text, empty) are always
            refused.
        what: what the file should be, for messages (``"a .tar.gz archive"``).

    Returns:
        ``dest`` (complete, verified).

    Raises:
        DataError: network/HTTP failure (the ``.part`` file is kept so a rerun resumes); checksum mismatch, or
            content of the wrong kind (checked from the ``Content-Type`` and the first bytes, and again over
            the finished file) — then nothing is kept.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    expect = frozenset(expect or ())
    if part.is_file() and filekind.unexpected(part, expect) is not None:
        part.unlink()  # an earlier attempt stored an error page: its bytes are not the start of the file
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "clipcal-download/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URLs come from SOURCES or the user
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part is already complete
                resp = None
            else:
                raise
        if resp is not None:
            with resp:
                status = getattr(resp, "status", 200)
                if status == 206:
                    start = resp.headers.get("Content-Range", "")
                    if not start.startswith(f"bytes {have}-"):
                        raise DataError(f"download of {url}: server resumed at the wrong offset ({start!r})",
                                        hint=f"delete {part} and run again")
                    mode = "ab"
                else:  # 200: the server ignored the Range header; start over
                    have, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                ctype = resp.headers.get("Content-Type")
                first = resp.read(CHUNK)
                if mode == "wb":  # the start of the file: its first bytes say what it is
                    kind = filekind.sniff_bytes(first, total)
                    # a text Content-Type (text/html …) with bytes that are not a recognised expected kind
                    if filekind.unexpected(kind, expect) is not None or (
                            filekind.content_type_kind(ctype) and expect and kind.kind not in expect):
                        part.unlink(missing_ok=True)
                        raise _WrongContent(url, kind, what, ctype)
                elif filekind.content_type_kind(ctype):  # a text answer to a range request: not our bytes
                    raise _WrongContent(url, filekind.sniff_bytes(first, None), what, ctype)
                done = have
                last = 0.0
                with open(part, mode) as f:
                    block = first
                    while block:
                        f.write(block)
                        done += len(block)
                        now = time.monotonic()
                        if progress is not None and now - last > 0.5:
                            progress(done, total, f"downloading {dest.name}")
                            last = now
                        block = resp.read(CHUNK)
                if total is not None and done < total:
                    raise DataError(f"download of {url} stopped at {done} of {total} bytes",
                                    hint=f"run again to resume from {part}")
                if progress is not None:
                    progress(done, total, f"downloaded {dest.name}")
    except DataError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError,
            ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"download of {url} failed: {reason}",
                        hint=f"partial data kept in {part}; run again to resume" if part.exists() else
                        "check the network connection") from None
    kind = filekind.sniff(part)
    if filekind.unexpected(kind, expect) is not None:  # e.g. a server that resumed an error page
        part.unlink(missing_ok=True)
        raise _WrongContent(url, kind, what)
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = _hash_file(part, algo)
            if got.lower() != want.lower():
                part.unlink(missing_ok=True)
                raise DataError(f"checksum mismatch for {dest.name}: {algo} {got}, expected {want}",
                                hint="the download was corrupted or the file changed upstream; it was deleted — "
                                "run again, or place the files manually")
    os.replace(part, dest)
    return dest


def extract(archive: str | Path, root: str | Path, folder: str, check: Callable[[Path], str | None] | None = None,
            aliases: tuple[str, ...] = ()) -> Path:
    """Extract a .tar(.gz) or .zip archive so that ``root/folder`` appears complete or not at all.

    Args:
        archive: the archive file.
        root: destination folder.
        folder: the folder the archive must create (one of ``aliases`` is accepted and renamed to it).
        check: optional content check ``check(path) -> None | reason``.

    Returns:
        ``root / folder``.

    Raises:
        DataError: unreadable archive, unsafe member paths, the expected folder missing, or ``check`` failing
            (nothing is left in ``root`` in these cases).
    """
    archive, root = Path(archive), Path(root)
    tmp = root / f".extract-{folder}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    for m in z.namelist():
                        if m.startswith("/") or ".." in Path(m).parts:
                            raise DataError(f"{archive}: unsafe member path {m!r}", hint="do not use this archive")
                    z.extractall(tmp)
            else:
                with tarfile.open(archive) as t:
                    t.extractall(tmp, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            kind = filekind.sniff(archive)
            if kind.is_text or filekind.unexpected(kind, filekind.ARCHIVE_KINDS):
                raise DataError(f"cannot extract {archive}: it is {kind.describe()}, not an archive",
                                hint=kind.remedy or "delete it and get the archive again") from None
            raise DataError(f"cannot extract {archive}: {err}",
                            hint="delete the archive and download it again") from None
        found = next((tmp / n for n in (folder, *aliases) if (tmp / n).is_dir()), None)
        if found is None:
            top = sorted(p.name for p in tmp.iterdir())[:10]
            raise DataError(f"{archive} does not contain the folder {folder!r} (top level: {top})",
                            hint="the archive is not the expected one")
        if check is not None:
            reason = check(found)
            if reason:
                raise DataError(f"{archive}: extracted content failed its check: {reason}",
                                hint="delete the archive and download it again, or place the files manually")
        dest = root / folder
        if dest.exists():
            raise DataError(f"{dest} already exists", hint="move it away to extract again")
        os.replace(found, dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def manual_message(source: Source, root: Path) -> str:
    """The manual-placement instructions for ``source`` with ``root`` filled in."""
    text = source.manual.format(root=root)
    layout = "\n".join("    " + ln for ln in source.layout.format(root=root).splitlines())
    return f"{text}.\nExpected layout:\n{layout}"


def download(name: str, root: str | Path, progress: Callable | None = None,
             urls: list[str] | None = None, keep_archive: bool = False, timeout: float = 30.0) -> Path:
    """Download and extract a benchmark into ``root`` (resumable, verified, atomic).

    Args:
        name: ``waterbirds``, ``metashift`` or ``celeba`` (see :data:`SOURCES`).
        root: folder to put the dataset in (created if needed); pass the same folder as ``--root`` later.
        progress: optional ``progress(done_bytes, total_bytes_or_None, message)``.
        urls: override the mirrors (e.g. a local copy); tried in order.
        keep_archive: keep the downloaded archive after extraction.
        timeout: socket timeout per request, seconds.

    Returns:
        The dataset folder (``root / Source.folder``), already present or freshly extracted.

    Raises:
        DataError: unknown name; no public source (CelebA) or every mirror failed — the message gives the
            exact manual placement; checksum or content check failed.
    """
    key = str(name).strip().lower()
    if key not in SOURCES:
        raise DataError(f"no download for benchmark {name!r}",
                        hint="downloads exist for: " + ", ".join(SOURCES) + " (the demo is built locally)")
    src = SOURCES[key]
    root = Path(root).expanduser().resolve()
    for folder in (src.folder, *src.folder_aliases):
        existing = root / folder
        if src.check is not None and existing.is_dir() and not src.check(existing):
            return existing
    mirrors = list(urls) if urls else list(src.urls)
    if not mirrors:
        raise DataError(f"{key} cannot be downloaded automatically",
                        hint=manual_message(src, root))
    root.mkdir(parents=True, exist_ok=True)
    failures, remedies = [], []
    for i, url in enumerate(mirrors):
        # one file per mirror: mirrors may serve different bytes, so a .part is only resumed from its own URL
        archive = root / (src.filename if i == 0 else f"{src.filename}.mirror{i}")
        try:
            fetch(url, archive, sha256=src.sha256, md5=src.md5, progress=progress, timeout=timeout,
                  expect=filekind.ARCHIVE_KINDS, what=f"the {key} archive ({src.filename})")
            break
        except DataError as err:
            failures.append(err.message)
            if isinstance(err, _WrongContent) and err.remedy not in remedies:
                remedies.append(err.remedy)
    else:
        raise DataError(f"{key}: download failed ({'; '.join(failures)}); nothing was kept",
                        hint="; ".join(remedies + ["place the files by hand: " + manual_message(src, root)]))
    existed = (root / src.folder).exists()
    try:
        out = extract(archive, root, src.folder, src.check, src.folder_aliases)
    except DataError as err:
        if existed:  # the archive may be fine; the destination is in the way (the message says so)
            raise
        archive.unlink(missing_ok=True)  # never keep a bad download
        raise DataError(f"{err.message}; the downloaded file was deleted",
                        hint="place the files by hand: " + manual_message(src, root)) from None
    if not src.sha256 and not src.md5:  # nothing published: record what we got, for reproducibility
        (root / (src.filename + ".sha256")).write_text(f"{_hash_file(archive, 'sha256')}  {url}\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return out
