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

Reads are bounded before they happen (:class:`ReadLimits`, the ``decode.max_*_bytes`` keys): a caption above its
limit is ``too_large`` and only its first KiB is read (kept as the audit's caption, with the full length in
``error``); metadata above its limit is not read at all. Compressed tars are refused (webdataset shards
are plain tars; a gzip "tar" could expand without bound) and so are sparse members. A Parquet row group whose column
chunks declare more than ``max_row_group_bytes`` uncompressed is one quarantined row, not read; the others are read
in batches of a few MiB, with dictionary-encoded columns left encoded so that a value's length is checked before it
is expanded (a small shard repeating one 100 MB caption would otherwise become gigabytes).

A row's ``id`` is ``<source>#<index>`` with a zero-padded index (``<source>`` is the path relative to the input
root), so ids are unique and sort in reading order; duplicate *keys* are resolved later, globally.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import storage
from pipelines.safe_read import (
    CAPTION_HEAD_BYTES,
    PARQUET_BATCH_BYTES,
    ReadLimits,
    SpecialFile,
    caption_head,
    caption_text,
    check_regular,
    escape_name,
    full_path,
    inside_root,
    open_regular,
    open_tar,
    over_limit,
    read_regular,
    unsafe_member,
)

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
    return {  # names from the file system or a tar may hold bytes that are not UTF-8: escaped (escape_name)
        "id": escape_name(rid),
        "key": escape_name(key),
        "source": escape_name(source),
        "caption": caption,
        "image": image,
        "url": escape_name(url),
        "quarantine": quarantine,
        "error": escape_name(error),
    }


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
    return sources, [escape_name(f) for f in ignored]  # reported in manifests: names that are not UTF-8 escaped


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


def read_source(root: Path, source: Source, *, max_bytes: int, limits: ReadLimits = ReadLimits()) -> Iterator[dict]:  # noqa: B008 - frozen
    """Yield the raw rows of one source (``max_bytes``: the media limit; ``limits``: text, metadata, Parquet row
    groups). Never raises for bad data: it yields quarantined rows instead."""
    root = Path(root)
    if source.kind == "parquet":
        yield from _read_parquet(root, source.path, max_bytes=max_bytes, limits=limits)
    elif source.kind == "tar":
        yield from _read_tar(root, source.path, max_bytes=max_bytes, limits=limits)
    elif source.kind == "folder":
        yield from _read_folder(root, source, max_bytes=max_bytes, limits=limits)
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


def _read_parquet(root: Path, rel: str, *, max_bytes: int, limits: ReadLimits) -> Iterator[dict]:
    path = full_path(root, rel)
    try:
        check_regular(path)
        schema = pq.ParquetFile(path).schema_arrow
    except SpecialFile as exc:
        yield _row(f"{rel}#shard", rel, rel, quarantine="special_file", error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - an unreadable shard is one quarantined row, by contract
        yield _row(f"{rel}#shard", rel, rel, quarantine="bad_schema", error=f"unreadable Parquet: {exc}")
        return
    names = set(schema.names)
    kinds = {f.name: f.type.value_type if pa.types.is_dictionary(f.type) else f.type for f in schema}
    image_cols = [c for c in IMAGE_COLUMNS if c in names]
    problems = []
    if "key" not in names:
        problems.append("no 'key' column")
    path_col = "image_path" if "image_path" in names and pa.types.is_string(kinds["image_path"]) else None
    if not image_cols and not path_col:
        problems.append(f"no image column (expected one of {', '.join(IMAGE_COLUMNS)}, or image_path)")
    for col in image_cols:
        if not (pa.types.is_binary(kinds[col]) or pa.types.is_large_binary(kinds[col])):
            problems.append(f"column {col!r} is {kinds[col]}, expected binary")
    columns = [c for c in ("key", "caption", "url", "image_path", *image_cols) if c in names]
    index = 0
    try:
        # Only the columns read; dictionary-encoded text and bytes stay encoded (lengths are checked first); pages
        # are streamed, not the whole row group buffered.
        text_cols = [c for c in columns if _is_bytes_like(kinds[c])]
        pf = pq.ParquetFile(path, read_dictionary=text_cols, pre_buffer=False, buffer_size=1 << 20)
        for group in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(group)
            refused = _oversized_chunk(meta, columns, limits.row_group_bytes)
            if refused:
                yield _row(f"{rel}#{index:08d}", f"{rel} row group {group}", rel, quarantine="too_large",
                           error=f"row group {group} (rows {index}-{index + meta.num_rows - 1}, {meta.num_rows} rows) "
                           f"not read: {refused}")  # fmt: skip
                index += meta.num_rows
                continue
            per_row = max(1, meta.total_byte_size // max(1, meta.num_rows))
            rows = min(256, max(1, PARQUET_BATCH_BYTES // per_row))
            for batch in pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns):
                for row in _parquet_rows(root, rel, batch, index, problems, image_cols, path_col, max_bytes, limits):
                    index += 1
                    yield row
    except Exception as exc:  # noqa: BLE001 - a shard that breaks mid-way: the rest of it is one quarantined row
        yield _row(
            f"{rel}#rest-{index:08d}",
            rel,
            rel,
            quarantine="bad_schema",
            error=f"Parquet read failed after {index} rows: {exc}",
        )


def _is_bytes_like(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _oversized_chunk(meta, columns: list[str], limit: int) -> str | None:
    """Why a row group may not be read: a read column chunk declaring more than ``limit`` bytes uncompressed."""
    for j in range(meta.num_columns):
        chunk = meta.column(j)
        top = chunk.path_in_schema.split(".")[0]
        if top in columns and chunk.total_uncompressed_size > limit:
            return over_limit(f"column {top!r} (declared uncompressed)", chunk.total_uncompressed_size,
                              "decode.max_row_group_bytes", limit)  # fmt: skip
    return None


def _byte_lengths(column: pa.Array) -> list[int] | None:
    """Byte length of each value of a binary/string column (dictionary-encoded or not), -1 for nulls, without
    expanding a dictionary; None for other types."""
    values, indices = (column.dictionary, column.indices) if pa.types.is_dictionary(column.type) else (column, None)
    if not _is_bytes_like(values.type):
        return None
    lengths = pc.fill_null(pc.binary_length(values), -1).to_pylist()
    if indices is None:
        return lengths
    return [-1 if i is None else lengths[i] for i in indices.to_pylist()]


def _heads(column: pa.Array) -> list[bytes | None]:
    """The first :data:`CAPTION_HEAD_BYTES` of each value of a binary/string column, each dictionary value sliced
    once (never expanded per row)."""
    values, indices = (column.dictionary, column.indices) if pa.types.is_dictionary(column.type) else (column, None)
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    heads = pc.binary_slice(values.cast(pa.large_binary() if large else pa.binary()), 0, CAPTION_HEAD_BYTES)
    heads = heads.to_pylist()
    return heads if indices is None else [None if i is None else heads[i] for i in indices.to_pylist()]


def _parquet_rows(root, rel, batch, first, problems, image_cols, path_col, max_bytes, limits) -> Iterator[dict]:
    """The raw rows of one Parquet batch (``first``: the shard index of its first row)."""
    cols = {name: batch.column(name) for name in batch.schema.names}
    caption_len = _byte_lengths(cols["caption"]) if "caption" in cols else None
    heads = _heads(cols["caption"]) if caption_len and max(caption_len) > limits.caption_bytes else None
    image_len = {c: _byte_lengths(cols[c]) for c in image_cols}
    for i in range(batch.num_rows):
        rid = f"{rel}#{first + i:08d}"
        key = cols["key"][i].as_py() if "key" in cols else None
        key_str = str(key) if key is not None else rid
        if problems:
            yield _row(rid, key_str, rel, quarantine="bad_schema", error="; ".join(problems))
            continue
        if not isinstance(key, str) or not key.strip():
            yield _row(rid, key_str, rel, quarantine="bad_schema", error=f"key {key!r} is not a string")
            continue
        if caption_len is not None and caption_len[i] > limits.caption_bytes:
            head = caption_head(heads[i])
            error = over_limit("caption", caption_len[i], "decode.max_caption_bytes", limits.caption_bytes)
            yield _row(rid, key, rel, caption=head, quarantine="too_large", error=error)
            continue
        big = next((c for c in image_cols if image_len[c] is not None and image_len[c][i] > max_bytes), None)
        if big:
            yield _row(rid, key, rel, quarantine="too_large", error=f"{big}: {image_len[big][i]} bytes > {max_bytes}")
            continue
        got = cols["caption"][i].as_py() if "caption" in cols else None
        caption, why = caption_text(got)
        if why:
            error = ("caption bytes are not valid UTF-8" if why == "bad_encoding"
                     else f"caption is a {type(got).__name__}, not text")  # fmt: skip
            yield _row(rid, key, rel, quarantine=why, error=error)
            continue
        image = next((v for v in (cols[c][i].as_py() for c in image_cols) if v is not None), None)
        url = cols["url"][i].as_py() if "url" in cols else None
        url = url if isinstance(url, str) else None
        ref = cols[path_col][i].as_py() if path_col else None
        if image is None and ref:
            image, why, err = _read_referenced(root, ref, max_bytes=max_bytes)
            if why:
                yield _row(rid, key, rel, caption=caption, url=url, quarantine=why, error=err)
                continue
        yield _row(rid, key, rel, caption=caption, image=image, url=url)


def _read_tar(root: Path, rel: str, *, max_bytes: int, limits: ReadLimits) -> Iterator[dict]:
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
            text, meta = parts.get(".txt"), parts.get(".json")
            try:
                if text is not None and text.size > limits.caption_bytes:
                    head = caption_head(tar.extractfile(text).read(CAPTION_HEAD_BYTES))
                    error = over_limit(text.name, text.size, "decode.max_caption_bytes", limits.caption_bytes)
                    yield _row(rid, key, rel, caption=head, quarantine="too_large", error=error)
                    continue
                if meta is not None and meta.size > limits.metadata_bytes:
                    error = over_limit(meta.name, meta.size, "decode.max_metadata_bytes", limits.metadata_bytes)
                    yield _row(rid, key, rel, quarantine="too_large", error=error)
                    continue
                image = tar.extractfile(image_member).read()
                caption, why, url = None, None, None
                if text is not None:
                    caption, why = caption_text(tar.extractfile(text).read())
                if meta is not None:
                    doc = json.loads(tar.extractfile(meta).read() or b"{}")
                    url = doc.get("url") if isinstance(doc, dict) and isinstance(doc.get("url"), str) else None
            except Exception as exc:  # noqa: BLE001 - a truncated member is a quarantined row
                yield _row(rid, key, rel, quarantine="bad_schema", error=f"member read failed: {exc}")
                continue
            if why:
                yield _row(rid, key, rel, quarantine=why, error="caption .txt is not valid UTF-8")
                continue
            yield _row(rid, key, rel, caption=caption, image=image, url=url)


def _read_folder(root: Path, source: Source, *, max_bytes: int, limits: ReadLimits) -> Iterator[dict]:
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
                with open_regular(sidecar) as f:
                    data = f.read(max(limits.caption_bytes + 1, CAPTION_HEAD_BYTES))
                if len(data) > limits.caption_bytes:
                    size = max(sidecar.stat().st_size, len(data))
                    yield _row(rid, key, source.path, caption=caption_head(data),
                               quarantine="too_large", error=over_limit(sidecar.name, size, "decode.max_caption_bytes",
                                                                        limits.caption_bytes))  # fmt: skip
                    continue
                caption, why = caption_text(data)
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
