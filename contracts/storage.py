"""Locations: a local path or an object-store URI (``s3://bucket/prefix``, ``gs://...``), read and written alike.

Every input and output location a job or flow takes may be either. A URI never passes through :class:`pathlib.Path`
(``Path("s3://b/k")`` silently becomes ``s3:/b/k``): locations are strings here, joined with :func:`join`.

Object stores are reached through pyarrow's file systems (``pyarrow.fs.FileSystem.from_uri``), which take their
credentials and endpoint from the standard environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` (an S3-compatible store such as MinIO or
moto) for ``s3://``; Google's application default credentials for ``gs://``. A location that cannot be reached
raises :class:`StorageError` naming it and the cause.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

#: URI schemes of the object stores a location may name.
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "gcs://")


class StorageError(OSError):
    """A location that cannot be reached or used (named in the message with the cause)."""


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an object-store URI (``s3://``, ``gs://``); a local path otherwise."""
    return str(location).startswith(OBJECT_STORE_SCHEMES)


def check_scheme(location: str) -> None:
    """Refuse a URI of a scheme this platform cannot read or write, naming the supported ones."""
    if "://" in location and not is_uri(location):
        raise StorageError(f"{location}: unsupported location; use a local path or one of "
                           f"{', '.join(OBJECT_STORE_SCHEMES)}")  # fmt: skip


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...`` for a path or a URI."""
    if not is_uri(location):
        return str(Path(location, *parts))
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts if p)])


def basename(location: str | os.PathLike) -> str:
    """The last component of a path or URI (``s3://b/runs/x/`` → ``x``)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_uri(location) else Path(location).name


def normalize(location: str | os.PathLike) -> str:
    """A URI as given (without a trailing ``/``), a local path made absolute."""
    check_scheme(str(location))
    return str(location).rstrip("/") if is_uri(location) else str(Path(location).resolve())


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow file system, path in it) of ``location``."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError / ValueError for a bad URI
        raise StorageError(f"{location}: cannot open this object-store location ({exc}); check the URI and the "
                           "AWS_* / GOOGLE_* environment") from exc  # fmt: skip


def _info(location: str) -> pafs.FileInfo:
    fs, path = filesystem(location)
    try:
        return fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - access denied, unknown bucket, unreachable endpoint
        raise StorageError(f"{location}: cannot be read ({exc})") from exc


def exists(location: str) -> bool:
    """Whether a file or a non-empty prefix (directory) is at ``location``."""
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return _info(location).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    """The bytes of the file at ``location``; FileNotFoundError if there is none."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if _info(location).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{location} does not exist") from exc
        raise StorageError(f"{location}: cannot be read ({exc})") from exc


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` as the file at ``location`` (one PUT on an object store: readers see all of it or none)."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)
        return
    fs, path = filesystem(location)
    try:
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as exc:
        raise StorageError(f"{location}: cannot be written ({exc})") from exc


def list_files(location: str) -> list[tuple[str, int]]:
    """Every file under the prefix or directory ``location``: (path relative to it, size), sorted by path."""
    fs, root = filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"{location}: cannot be listed ({exc})") from exc
    root = root.rstrip("/") + "/"
    return sorted((i.path[len(root):], i.size) for i in infos
                  if i.type == pafs.FileType.File and i.path.startswith(root))  # fmt: skip


def listing(location: str) -> list[tuple[str, int, int]]:
    """Every object under the prefix ``location`` (or the object itself): (path relative to it, size, modification
    time in ns), sorted by path; nothing is read."""
    fs, root = filesystem(location)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [(root.rsplit("/", 1)[-1], info.size, info.mtime_ns or 0)]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"{location}: cannot be listed ({exc})") from exc
    root = root.rstrip("/") + "/"
    return sorted((i.path[len(root):], i.size, i.mtime_ns or 0) for i in infos
                  if i.type == pafs.FileType.File and i.path.startswith(root))  # fmt: skip


def sha256(location: str, *, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of the file at ``location``, streamed."""
    fs, path = filesystem(location)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(location: str, local: Path) -> Path:
    """Copy the file at ``location`` to the local path ``local``; return it."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as src, open(local, "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    return local


def upload(local: Path, location: str) -> None:
    """Copy the local file ``local`` to ``location`` (one object on a store: readers see all of it or none)."""
    fs, path = filesystem(location)
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as exc:
        raise StorageError(f"{location}: cannot be written ({exc})") from exc


def upload_tree(local_dir: Path, location: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under ``local_dir`` to the same relative path under ``location`` (names in ``skip`` left
    out); return the relative paths copied."""
    copied = []
    for f in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        rel = f.relative_to(local_dir).as_posix()
        if rel in skip:
            continue
        upload(f, join(location, rel))
        copied.append(rel)
    return copied


def delete_tree(location: str) -> None:
    """Remove the file at ``location`` or everything under it (a missing one is fine)."""
    if not is_uri(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = filesystem(location)
    if is_file(location):
        fs.delete_file(path)
        return
    for rel, _ in list_files(location):
        fs.delete_file(f"{path.rstrip('/')}/{rel}")
