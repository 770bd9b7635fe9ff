"""Reading untrusted input files safely: regular files only, plain tars, bounded text, safe member names.

Shared by the image-text readers (:mod:`pipelines.sources`) and the video readers (:mod:`pipelines.video_sources`).
Nothing here raises for bad data except :class:`SpecialFile` and ``tarfile.ReadError``, which the readers turn into
quarantined rows naming the file.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from filters.decode import DecodeConfig

_DECODE = DecodeConfig()


@dataclass(frozen=True)
class ReadLimits:
    """Byte limits of what readers read besides the media (whose limit each job passes as ``max_bytes``).
    Defaults are :class:`filters.decode.DecodeConfig`'s; jobs pass their profile's (:meth:`of`)."""

    caption_bytes: int = _DECODE.max_caption_bytes
    metadata_bytes: int = _DECODE.max_metadata_bytes
    row_group_bytes: int = _DECODE.max_row_group_bytes

    @classmethod
    def of(cls, decode) -> ReadLimits:
        """The limits of a profile's ``decode`` section."""
        return cls(decode.max_caption_bytes, decode.max_metadata_bytes, decode.max_row_group_bytes)


PARQUET_BATCH_BYTES = 16 * 1024 * 1024
"""Target decoded size of one Parquet read batch (from the row group's declared bytes per row; 1 to 256 rows)."""

_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


def over_limit(what: str, size: int, key: str, limit: int) -> str:
    """Error text of a value above a byte limit, naming the dotted config key."""
    return f"{what} is {size} bytes > {key}={limit}"


CAPTION_HEAD_BYTES = 1024
"""Bytes of an over-long caption kept in the audit (the error records its full length)."""


def caption_head(data: bytes) -> str:
    """The start of an over-long caption, as the audit keeps it: its first :data:`CAPTION_HEAD_BYTES` (a split
    UTF-8 character replaced), then "…"."""
    return data[:CAPTION_HEAD_BYTES].decode("utf-8", errors="replace") + "…"


def escape_name(text: str | None) -> str | None:
    """A name (or a text quoting one) safe for Arrow and JSON: each byte that was not valid UTF-8 in a file or member
    name (Python holds it as a lone surrogate, ``surrogateescape``) becomes ``\\xNN``. Valid text is unchanged."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                       c if not 0xD800 <= ord(c) <= 0xDFFF else f"\\u{ord(c):04x}" for c in text)  # fmt: skip


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
        head = handle.read(6)
        kind = next((name for magic, name in _COMPRESSED if head.startswith(magic)), None)
        if kind:
            raise tarfile.ReadError(f"a {kind}-compressed tar: not read (shards are plain tars; decompress it first)")
        handle.seek(0)
        return handle, tarfile.open(fileobj=handle, mode="r:")
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
    if member.issparse():
        return "sparse member (it expands beyond its stored bytes)"
    return None
