"""Reading image-text inputs into uniform raw rows, safely and without losing any.

Three layouts are read:

- img2dataset-style Parquet shards: columns ``key``, ``caption``, and the image bytes in ``jpg``, ``png``, ``webp``
  or ``image`` (the first non-null per row), optionally ``url``; or, instead of bytes, ``image_path``: a file path
  relative to the dataset root (a path that leaves the root is quarantined as ``unsafe_path``, never opened);
- webdataset tars: members ``KEY.jpg|png|webp`` with ``KEY.txt`` (caption) and ``KEY.json`` (metadata);
- a folder of images with ``.txt`` caption sidecars next to them (only when the root holds no Parquet or tar
  shards; otherwise loose images are listed as ignored files in the manifest).

Every input row becomes exactly one raw row, a dict with the columns of :data:`RAW_COLUMNS`. A row that cannot be
read is still emitted, with ``quarantine`` set to its reason (``bad_schema``, ``unsafe_path``, ``bad_encoding``,
``too_large``) and ``error`` explaining it; an unreadable shard becomes one quarantined row naming the shard. Member
names and paths that leave the dataset root (absolute, ``..``, symlinks, devices) are never opened. Tar members are
read in memory, never extracted.

A row's ``id`` is ``<source>#<index>`` with a zero-padded index (``<source>`` is the path relative to the input
root), so ids are unique and sort in reading order; duplicate *keys* are resolved later, globally.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from contracts import storage

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "image")
RAW_COLUMNS = ("id", "key", "source", "caption", "image", "url", "quarantine", "error")


@dataclass(frozen=True)
class Source:
    """One unit of reading work: a Parquet shard, a tar, or a chunk of a plain image folder."""

    kind: str
    """``parquet``, ``tar``, ``folder`` or ``unsafe`` (a path that leaves the root; read as one quarantined row)."""
    path: str
    """Path relative to the input root (for ``folder``: the directory)."""
    files: tuple[str, ...] = ()
    """For ``folder`` sources: the image files (relative to the input root) of this chunk."""


def _row(
    rid: str,
    key: str,
    source: str,
    caption: str | None = None,
    image: bytes | None = None,
    url: str | None = None,
    quarantine: str | None = None,
    error: str | None = None,
) -> dict:
    return {
        "id": rid,
        "key": key,
        "source": source,
        "caption": caption,
        "image": image,
        "url": url,
        "quarantine": quarantine,
        "error": error,
    }


class SpecialFile(OSError):
    """An input path that is not a regular file (a FIFO, socket, device or directory): refused before any read."""


_SPECIAL_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"))  # fmt: skip


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, which it must be a regular file to be (symlinks followed). It is opened
    with ``O_NONBLOCK``, so a FIFO without a writer opens at once instead of blocking the job forever, and checked
    with ``fstat`` on the open descriptor, so the file read is the file checked. Raises :class:`SpecialFile` for
    anything else (naming what it is), OSError as ``open`` does."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
            raise SpecialFile(f"{path.name} is a {kind}, not a regular file: not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Path) -> None:
    """Raise :class:`SpecialFile` unless ``path`` is a regular file, for readers that open the path themselves
    (pyarrow); :func:`open_regular` where the reader takes a file object."""
    open_regular(path).close()


def read_regular(path: Path) -> bytes:
    """The bytes of ``path``, a regular file (:func:`open_regular`)."""
    with open_regular(path) as f:
        return f.read()


def open_tar(path: Path) -> tuple[BinaryIO, tarfile.TarFile]:
    """``path`` (a regular file, :func:`open_regular`) opened as a tar archive: its file and the archive, to be
    closed together (``with handle, tar:``). Raises :class:`SpecialFile`, or what ``open``/``tarfile.open`` raise."""
    handle = open_regular(path)
    try:
        return handle, tarfile.open(fileobj=handle, mode="r:*")
    except BaseException:
        handle.close()
        raise


def json_problem(text: str | None, name: str) -> str | None:
    """Error text if metadata ``text`` is not JSON (later stages parse it), else None; also for JSON nested deeper
    than Python's stack can parse (RecursionError)."""
    if text is None:
        return None
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"{name} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def inside_root(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies under ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def discover(root: Path, *, folder_chunk: int = 256) -> tuple[list[Source], list[str]]:
    """Walk ``root`` (a directory, or a single .parquet/.tar file) and return the sources to read, in sorted order,
    plus the relative paths of files that are not inputs (reported in the manifest, never silently dropped).
    """
    if storage.is_uri(root):
        return _discover_remote(str(root), folder_chunk=folder_chunk)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    if root.is_file():
        kind = {".parquet": "parquet", ".tar": "tar"}.get(root.suffix.lower())
        if kind is None:
            raise ValueError(f"input {root}: a single input file must be .parquet or .tar (or pass a directory)")
        return [Source(kind, str(root))], []
    sources: list[Source] = []
    ignored: list[str] = []
    folders: dict[str, list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink() and not inside_root(root, full):
                sources.append(Source("unsafe", rel))
                continue
            _classify(rel, sources, folders, ignored)
    return _group(sources, folders, ignored, folder_chunk)


def _classify(rel: str, sources: list[Source], folders: dict[str, list[str]], ignored: list[str]) -> None:
    """File ``rel`` (relative to the input root) as a shard source, an image of a folder, a sidecar or ignored."""
    ext = PurePosixPath(rel).suffix.lower()
    if ext == ".parquet":
        sources.append(Source("parquet", rel))
    elif ext == ".tar":
        sources.append(Source("tar", rel))
    elif ext in IMAGE_EXTS:
        folders[PurePosixPath(rel).parent.as_posix()].append(rel)
    elif ext not in (".txt", ".json"):  # sidecars are read with their image
        ignored.append(rel)


def _group(sources: list[Source], folders: dict[str, list[str]], ignored: list[str],
           folder_chunk: int) -> tuple[list[Source], list[str]]:  # fmt: skip
    if any(s.kind in ("parquet", "tar") for s in sources):
        # A root with shards is a shard dataset: loose images there are referenced files (``image_path``) or
        # strays, not a second input. They are reported as ignored, never silently curated twice.
        ignored.extend(f for files in folders.values() for f in files)
        folders = {}
    for folder, files in sorted(folders.items()):
        for start in range(0, len(files), folder_chunk):
            sources.append(Source("folder", folder, tuple(files[start : start + folder_chunk])))
    sources.sort(key=lambda s: (s.path, s.files[:1]))
    return sources, ignored


def _discover_remote(root: str, *, folder_chunk: int) -> tuple[list[Source], list[str]]:
    """:func:`discover` of an object-store prefix (or a single object): the same sources, from a listing (object
    stores have no symlinks; names starting with ``.`` are skipped as on a file system)."""
    if storage.is_file(root):
        kind = {".parquet": "parquet", ".tar": "tar"}.get(PurePosixPath(root).suffix.lower())
        if kind is None:
            raise ValueError(f"input {root}: a single input file must be .parquet or .tar (or pass a prefix)")
        return [Source(kind, root.rsplit("/", 1)[1])], []
    files = storage.list_files(root)
    if not files:
        raise FileNotFoundError(f"input {root} does not exist or holds no files")
    sources: list[Source] = []
    ignored: list[str] = []
    folders: dict[str, list[str]] = defaultdict(list)
    for rel, _ in files:
        if not any(part.startswith(".") for part in rel.split("/")):
            _classify(rel, sources, folders, ignored)
    return _group(sources, folders, ignored, folder_chunk)


def input_root(location: str | Path) -> str | Path:
    """The root that :func:`discover`'s source paths are relative to: the location, or a single file's folder."""
    if storage.is_uri(location):
        return str(location).rsplit("/", 1)[0] if storage.is_file(str(location)) else str(location)
    location = Path(location)
    return location if location.is_dir() else location.parent


def localize(root: str, source: Source, into: Path) -> Path:
    """Copy the files of one source under the object-store prefix ``root`` into the local directory ``into``
    (same relative paths, a folder's caption sidecars too); return ``into``, the root to read the source from.
    A shard is read whole anyway, so one read task copies it once; a missing sidecar is no error."""
    for rel in source.files if source.kind == "folder" else (source.path,) if source.kind != "unsafe" else ():
        storage.download(storage.join(root, rel), into / rel)
        if source.kind == "folder":
            sidecar = PurePosixPath(rel).with_suffix(".txt").as_posix()
            if storage.is_file(storage.join(root, sidecar)):
                storage.download(storage.join(root, sidecar), into / sidecar)
    return into


def read_source(root: Path, source: Source, *, max_bytes: int) -> Iterator[dict]:
    """Yield the raw rows of one source. Never raises for bad data: it yields quarantined rows instead."""
    root = Path(root)
    if source.kind == "parquet":
        yield from _read_parquet(root, source.path, max_bytes=max_bytes)
    elif source.kind == "tar":
        yield from _read_tar(root, source.path, max_bytes=max_bytes)
    elif source.kind == "folder":
        yield from _read_folder(root, source, max_bytes=max_bytes)
    elif source.kind == "unsafe":
        yield _row(
            f"{source.path}#00000000",
            Path(source.path).stem,
            source.path,
            quarantine="unsafe_path",
            error=f"{source.path} is a symlink that leaves the input root",
        )
    else:
        raise ValueError(f"unknown source kind {source.kind!r}; expected parquet, tar, folder or unsafe")


def full_path(root: Path, rel: str) -> Path:
    """``rel`` under ``root`` (a source's path is relative to the input root unless the root is a single file)."""
    p = Path(rel)
    return p if p.is_absolute() else root / p


def caption_text(value: object) -> tuple[str | None, str | None]:
    """Caption value → (text, quarantine reason)."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "bad_encoding"
    return None, "bad_schema"


def _read_referenced(root: Path, ref: str, *, max_bytes: int) -> tuple[bytes | None, str | None, str | None]:
    """Bytes of an image referenced by a path relative to the dataset root → (bytes, quarantine, error)."""
    if PurePosixPath(ref).is_absolute() or ".." in PurePosixPath(ref).parts or not inside_root(root, root / ref):
        return None, "unsafe_path", f"image_path {ref!r} leaves the dataset root"
    path = root / ref
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return None, "too_large", f"{ref}: {size} bytes > {max_bytes}"
        return read_regular(path), None, None
    except SpecialFile as exc:
        return None, "special_file", f"image_path {ref!r}: {exc}"
    except OSError as exc:
        return None, "bad_schema", f"image_path {ref!r}: {exc}"


def _read_parquet(root: Path, rel: str, *, max_bytes: int) -> Iterator[dict]:
    path = full_path(root, rel)
    try:
        check_regular(path)
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except SpecialFile as exc:
        yield _row(f"{rel}#shard", rel, rel, quarantine="special_file", error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - an unreadable shard is one quarantined row, by contract
        yield _row(f"{rel}#shard", rel, rel, quarantine="bad_schema", error=f"unreadable Parquet: {exc}")
        return
    names = set(schema.names)
    image_cols = [c for c in IMAGE_COLUMNS if c in names]
    problems = []
    if "key" not in names:
        problems.append("no 'key' column")
    path_col = "image_path" if "image_path" in names and pa.types.is_string(schema.field("image_path").type) else None
    if not image_cols and not path_col:
        problems.append(f"no image column (expected one of {', '.join(IMAGE_COLUMNS)}, or image_path)")
    for col in image_cols:
        if not (pa.types.is_binary(schema.field(col).type) or pa.types.is_large_binary(schema.field(col).type)):
            problems.append(f"column {col!r} is {schema.field(col).type}, expected binary")
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=256):
            for rec in batch.to_pylist():
                rid = f"{rel}#{index:08d}"
                index += 1
                key = rec.get("key")
                key_str = str(key) if key is not None else rid
                if problems:
                    yield _row(rid, key_str, rel, quarantine="bad_schema", error="; ".join(problems))
                    continue
                if not isinstance(key, str) or not key.strip():
                    yield _row(rid, key_str, rel, quarantine="bad_schema", error=f"key {key!r} is not a string")
                    continue
                caption, why = caption_text(rec.get("caption"))
                if why:
                    got = rec.get("caption")
                    error = ("caption bytes are not valid UTF-8" if why == "bad_encoding"
                             else f"caption is a {type(got).__name__}, not text")  # fmt: skip
                    yield _row(rid, key, rel, quarantine=why, error=error)
                    continue
                image = next((rec[c] for c in image_cols if rec.get(c) is not None), None)
                url = rec.get("url") if isinstance(rec.get("url"), str) else None
                if image is None and path_col and rec.get(path_col):
                    image, why, err = _read_referenced(root, rec[path_col], max_bytes=max_bytes)
                    if why:
                        yield _row(rid, key, rel, caption=caption, url=url, quarantine=why, error=err)
                        continue
                yield _row(rid, key, rel, caption=caption, image=image, url=url)
    except Exception as exc:  # noqa: BLE001 - a shard that breaks mid-way: the rest of it is one quarantined row
        yield _row(
            f"{rel}#rest-{index:08d}",
            rel,
            rel,
            quarantine="bad_schema",
            error=f"Parquet read failed after {index} rows: {exc}",
        )


def unsafe_member(name: str, member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be read (an absolute or escaping path, a link, not a regular file), or None."""
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")):
        return "absolute member path"
    if ".." in p.parts:
        return "member path contains '..'"
    if member.issym() or member.islnk():
        return "symlink or hard link member"
    if not member.isfile():
        return "not a regular file"
    return None


def _read_tar(root: Path, rel: str, *, max_bytes: int) -> Iterator[dict]:
    path = full_path(root, rel)
    try:
        handle, tar = open_tar(path)
    except SpecialFile as exc:
        yield _row(f"{rel}#shard", rel, rel, quarantine="special_file", error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - an unreadable tar is one quarantined row, by contract
        yield _row(f"{rel}#shard", rel, rel, quarantine="bad_schema", error=f"unreadable tar: {exc}")
        return
    index = 0
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    with handle, tar:
        try:
            members = tar.getmembers()
        except Exception as exc:  # noqa: BLE001
            yield _row(f"{rel}#shard", rel, rel, quarantine="bad_schema", error=f"corrupt tar index: {exc}")
            return
        for member in members:
            if member.isdir():
                continue
            why = unsafe_member(member.name, member)
            if why:
                yield _row(
                    f"{rel}#{index:08d}", member.name, rel, quarantine="unsafe_path", error=f"{member.name}: {why}"
                )
                index += 1
                continue
            base = PurePosixPath(member.name)
            # webdataset: the key is everything before the first dot of the file name, with its directory
            stem, _, ext = base.name.partition(".")
            key = str(base.parent / stem) if str(base.parent) != "." else stem
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key]["." + ext.lower()] = member
        for key in order:
            parts = groups[key]
            rid = f"{rel}#{index:08d}"
            index += 1
            image_member = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
            if image_member is None:
                yield _row(
                    rid,
                    key,
                    rel,
                    quarantine="bad_schema",
                    error=f"sample {key!r} has no image member (members: {', '.join(sorted(parts))})",
                )
                continue
            if image_member.size > max_bytes:
                yield _row(rid, key, rel, quarantine="too_large", error=f"{image_member.size} bytes > {max_bytes}")
                continue
            try:
                image = tar.extractfile(image_member).read()
                caption, why, url = None, None, None
                if ".txt" in parts:
                    caption, why = caption_text(tar.extractfile(parts[".txt"]).read())
                if ".json" in parts:
                    meta = json.loads(tar.extractfile(parts[".json"]).read() or b"{}")
                    url = meta.get("url") if isinstance(meta, dict) and isinstance(meta.get("url"), str) else None
            except Exception as exc:  # noqa: BLE001 - a truncated member is a quarantined row
                yield _row(rid, key, rel, quarantine="bad_schema", error=f"member read failed: {exc}")
                continue
            if why:
                yield _row(rid, key, rel, quarantine=why, error="caption .txt is not valid UTF-8")
                continue
            yield _row(rid, key, rel, caption=caption, image=image, url=url)


def _read_folder(root: Path, source: Source, *, max_bytes: int) -> Iterator[dict]:
    for rel in source.files:
        path = root / rel
        rid = rel
        key = Path(rel).stem
        if path.is_symlink() and not inside_root(root, path):
            yield _row(rid, key, source.path, quarantine="unsafe_path", error=f"{rel} links outside the input root")
            continue
        try:
            size = path.stat().st_size
            if size > max_bytes:
                yield _row(rid, key, source.path, quarantine="too_large", error=f"{size} bytes > {max_bytes}")
                continue
            image = read_regular(path)
            caption, why = None, None
            sidecar = path.with_suffix(".txt")
            if sidecar.exists():
                if sidecar.is_symlink() and not inside_root(root, sidecar):
                    yield _row(rid, key, source.path, quarantine="unsafe_path", error=f"{sidecar} links outside")
                    continue
                caption, why = caption_text(read_regular(sidecar))
        except SpecialFile as exc:
            yield _row(rid, key, source.path, quarantine="special_file", error=f"{rel}: {exc}")
            continue
        except OSError as exc:
            yield _row(rid, key, source.path, quarantine="bad_schema", error=f"read failed: {exc}")
            continue
        if why:
            yield _row(rid, key, source.path, quarantine=why, error="caption sidecar is not valid UTF-8")
            continue
        yield _row(rid, key, source.path, caption=caption, image=image)
