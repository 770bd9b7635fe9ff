"""Each training worker's own rows of a latent cache, read straight from its Parquet files.

The contract (what :mod:`pipelines.train_loop` trains on when a stage hands it a cache):

- The driver passes the workers a :class:`CacheShards`: the cache's files in their order (absolute paths or
  object-store URIs) and its tensor columns. Nothing else travels; no Ray Dataset is built for training.
- Every worker indexes the cache (:func:`read_index`): the footer and the ``error`` column of every file (a few
  bytes per row), which give the ``N`` encoded rows (``error == ""``) in the cache's order and where each lies.
- Rank ``r`` of ``world`` trains on the contiguous range ``[r·P, (r+1)·P)`` of the encoded rows, ``P = ((N //
  world) // m) · m`` (``m``: the micro-batch size), in ``P / m`` micro-batches; global batch ``k`` is micro-batch
  ``k`` of every rank. The last ``N − world·P`` encoded rows are not trained on (fewer than one micro-batch per
  rank, or the remainder of a rank's range that would leave the ranks unequal). :func:`rank_plan` computes any
  rank's range and reads from the index alone: which rows of which row groups, and the bytes they cost.
- A worker reads only the row groups its range overlaps, only the tensor columns (``ParquetFile.read_row_group``
  through a pyarrow file system: local files and object stores alike), drops the rows outside its range and the
  failed ones, and yields micro-batches as dicts of torch tensors (:class:`RankReader`), as Ray Data's
  ``iter_torch_batches`` did: one tensor ``(m, *shape)`` per column in the column's dtype.

So what a rank trains on depends on the cache's rows alone: not on block layout, timing, actor counts or restarts,
and a resumed run skips exactly the micro-batches an uninterrupted one trained. A pass costs a worker the index
(footers and every file's ``error`` column) plus its row groups' tensor column chunks, about ``1/world`` of the
cache, instead of the whole cache each. The bytes are planned from the Parquet metadata (:attr:`RankPlan.bytes`)
and counted as the reader fetches them (:attr:`RankReader.bytes_read`): the two agree, since the footer is read
exactly (not pyarrow's speculative 64 KiB tail read) and a row group's column chunk is fetched as one range.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import storage

log = logging.getLogger(__name__)

ERROR_COLUMN = "error"
"""The cache's per-row failure reason ("" when the row encoded)."""
_MAGIC = b"PAR1"
_TENSOR_SHAPE = b"ARROW:extension:metadata"  # a Ray tensor column's shape, kept in the field metadata on disk


@dataclass(frozen=True)
class CacheShards:
    """A latent cache as the training workers receive it (picklable): its Parquet files in their order, absolute
    paths or object-store URIs, and the tensor columns they train on."""

    files: tuple[str, ...]
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("CacheShards: no files")
        relative = [f for f in self.files if not storage.is_uri(f) and not f.startswith("/")]
        if relative:
            raise ValueError(f"CacheShards: {relative[0]!r} is relative; the workers need absolute paths or URIs")


# ------------------------------------------------------------------------------------------------ reading bytes


class _Files:
    """Opens a cache's files through pyarrow file systems (one per bucket: building one from a URI may itself ask
    the store for the bucket's region) and counts the bytes read through them (:attr:`bytes`)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._stores: dict[str, object] = {}

    def open(self, location: str) -> _Counted:
        if storage.is_uri(location) and "?" not in location:
            root = "/".join(location.split("/", 3)[:3])  # scheme://bucket
            if root not in self._stores:
                self._stores[root] = storage.filesystem(location)[0]
            fs, path = self._stores[root], location.split("://", 1)[1]
        else:
            fs, path = storage.filesystem(location)
        return _Counted(fs.open_input_file(path), self)


class _Counted:
    """A pyarrow random-access file seen as a Python file, counting the bytes read through it into ``files``."""

    def __init__(self, raw, files: _Files) -> None:
        self.raw, self.files = raw, files

    def read(self, nbytes: int = -1) -> bytes:
        data = self.raw.read() if nbytes is None or nbytes < 0 else self.raw.read(nbytes)
        self.files.bytes += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def size(self) -> int:
        return self.raw.size()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def close(self) -> None:
        self.raw.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


def _footer(f: _Counted, location: str) -> pq.FileMetaData:
    """The file's Parquet metadata, reading exactly its footer: the 8-byte tail, then the footer it measures."""
    size = f.size()
    if size < 12:
        raise ValueError(f"{location}: {size} bytes, not a Parquet file")
    f.seek(size - 8)
    tail = f.read(8)
    if tail[4:] != _MAGIC:
        raise ValueError(f"{location}: not a Parquet file (or an encrypted one): its last bytes are {tail[4:]!r}")
    length = int.from_bytes(tail[:4], "little")
    f.seek(size - 8 - length)
    return pq.read_metadata(pa.BufferReader(_MAGIC + f.read(length) + tail))


def _parquet(f: _Counted, metadata: pq.FileMetaData) -> pq.ParquetFile:
    """The file for reading column chunks: with its metadata (no second footer read), each chunk fetched as its own
    range (pyarrow's pre-buffering would also fetch the gaps of up to 8 KiB between the chunks it coalesces)."""
    return pq.ParquetFile(f, metadata=metadata, pre_buffer=False)


# ------------------------------------------------------------------------------------------------ the index


@dataclass(frozen=True, eq=False)
class FileIndex:
    """One cache file as the index sees it."""

    location: str
    metadata: pq.FileMetaData
    group_rows: tuple[int, ...]
    """Rows per row group."""
    group_bytes: tuple[int, ...]
    """Compressed bytes of the tensor columns' chunks per row group (what reading the group costs)."""
    error_bytes: int
    """Compressed bytes of the ``error`` column's chunks (every row group)."""
    footer_bytes: int
    """The footer and its 8-byte tail."""
    encoded: np.ndarray
    """Row numbers (in the file) of the encoded rows, ascending."""


@dataclass(frozen=True, eq=False)
class CacheIndex:
    """Every file of a cache: where its encoded rows are and what its row groups cost (:func:`read_index`)."""

    files: tuple[FileIndex, ...]
    columns: tuple[str, ...]

    @property
    def encoded(self) -> int:
        """Encoded rows of the whole cache (``N``)."""
        return sum(len(f.encoded) for f in self.files)

    @property
    def index_bytes(self) -> int:
        """What indexing costs every worker: every file's footer and ``error`` column."""
        return sum(f.footer_bytes + f.error_bytes for f in self.files)

    @property
    def whole_bytes(self) -> int:
        """The index plus the tensor columns of every row group: what a worker reading the whole cache (the loop
        before this module: every worker read every row, keeping its slice) fetched per pass."""
        return self.index_bytes + sum(sum(f.group_bytes) for f in self.files)


def _chunk_bytes(group: pq.RowGroupMetaData, columns: set[str]) -> int:
    """Compressed bytes of the row group's column chunks of ``columns`` (a tensor column is one leaf chunk)."""
    return sum(group.column(j).total_compressed_size for j in range(group.num_columns)
               if group.column(j).path_in_schema.split(".", 1)[0] in columns)  # fmt: skip


def read_index(shards: CacheShards, files: _Files | None = None) -> CacheIndex:
    """Index ``shards`` (footers and ``error`` columns only; see the module docstring), opening them with ``files``
    (which counts the bytes read)."""
    opener = files if files is not None else _Files()
    wanted = set(shards.columns)
    found = []
    for location in shards.files:
        f = opener.open(location)
        try:
            before = opener.bytes
            metadata = _footer(f, location)
            footer_bytes = opener.bytes - before
            names = metadata.schema.to_arrow_schema().names
            missing = [c for c in (ERROR_COLUMN, *shards.columns) if c not in names]
            if missing:
                raise ValueError(f"{location}: a latent cache file without column(s) {missing} (it has {names})")
            errors = _parquet(f, metadata).read(columns=[ERROR_COLUMN], use_threads=False)
        finally:
            f.close()
        ok = pc.fill_null(pc.equal(errors.column(ERROR_COLUMN), ""), False)
        groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
        found.append(FileIndex(
            location=location, metadata=metadata, group_rows=tuple(g.num_rows for g in groups),
            group_bytes=tuple(_chunk_bytes(g, wanted) for g in groups),
            error_bytes=sum(_chunk_bytes(g, {ERROR_COLUMN}) for g in groups), footer_bytes=footer_bytes,
            encoded=np.flatnonzero(ok.to_numpy(zero_copy_only=False)),
        ))  # fmt: skip
    return CacheIndex(tuple(found), shards.columns)


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, eq=False)
class GroupRead:
    """One row group a rank reads: file ``file`` (its position in the cache), row group ``group``, the rows it keeps
    (row numbers within the group, ascending) and the bytes the group's tensor columns cost."""

    file: int
    group: int
    rows: np.ndarray
    bytes: int


@dataclass(frozen=True, eq=False)
class RankPlan:
    """What rank ``rank`` of ``world`` reads per pass (:func:`rank_plan`)."""

    rank: int
    world: int
    micro_batch_size: int
    first: int
    """Its first encoded row (``rank·P``)."""
    rows: int
    """Encoded rows it trains on per pass (``P``; the same on every rank)."""
    reads: tuple[GroupRead, ...]
    index_bytes: int
    """The index every worker reads (footers and ``error`` columns of every file)."""
    data_bytes: int
    """The tensor column chunks of the row groups it reads."""

    @property
    def micro_batches(self) -> int:
        return self.rows // self.micro_batch_size

    @property
    def bytes(self) -> int:
        """Bytes a pass reads: the index and the row groups (reported as the ``shard_bytes`` metric)."""
        return self.index_bytes + self.data_bytes

    def describe(self) -> dict:
        """The plan as JSON-able numbers (what a bench prints)."""
        return {"rank": self.rank, "world": self.world, "rows": [self.first, self.first + self.rows],
                "micro_batches": self.micro_batches, "row_groups": [[r.file, r.group] for r in self.reads],
                "index_bytes": self.index_bytes, "data_bytes": self.data_bytes, "bytes": self.bytes}  # fmt: skip


def rank_plan(index: CacheIndex, rank: int, world: int, micro_batch_size: int) -> RankPlan:
    """Rank ``rank``'s rows and reads (see the module docstring): a pure function of the index."""
    if not 0 <= rank < world or micro_batch_size < 1:
        raise ValueError(f"rank {rank} of world {world} with micro_batch_size {micro_batch_size}: needs 0 ≤ rank < "
                         "world and micro_batch_size ≥ 1")  # fmt: skip
    per_rank = (index.encoded // world) // micro_batch_size * micro_batch_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    reads, seen = [], 0
    for i, f in enumerate(index.files):
        a, b = max(lo, seen) - seen, min(hi, seen + len(f.encoded)) - seen
        seen += len(f.encoded)
        if a >= b:
            continue
        rows = f.encoded[a:b]
        starts = np.cumsum([0, *f.group_rows])
        groups = np.searchsorted(starts, rows, side="right") - 1
        for g in np.unique(groups):
            reads.append(GroupRead(i, int(g), rows[groups == g] - starts[g], f.group_bytes[g]))
    return RankPlan(rank=rank, world=world, micro_batch_size=micro_batch_size, first=lo, rows=per_rank,
                    reads=tuple(reads), index_bytes=index.index_bytes,
                    data_bytes=sum(r.bytes for r in reads))  # fmt: skip


# ------------------------------------------------------------------------------------------------ tensors


def tensor_numpy(column: pa.ChunkedArray | pa.Array, field: pa.Field) -> np.ndarray:
    """A column of a cache file as one numpy array ``(rows, *shape)``.

    Tensor columns are Ray Data's tensor extension type (``ray.data.arrow_tensor_v2``): a (large) list of the
    flattened values, the shape in the field's ``ARROW:extension:metadata``. Where Ray has registered the type
    (any process that imported ``ray.data``) pyarrow gives the extension array, with ``.shape``; elsewhere the plain
    list with the metadata. A fixed-shape tensor of Arrow's own (``arrow.fixed_shape_tensor``) reads alike; a plain
    numeric column as itself."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    typ = arr.type
    if isinstance(typ, pa.BaseExtensionType):
        shape = getattr(typ, "shape", None)
        if shape is None or any(d is None for d in shape):
            raise ValueError(f"column {field.name!r}: {typ} has no fixed shape; a cache holds fixed-shape tensors")
        arr = arr.storage
    elif field.metadata and _TENSOR_SHAPE in field.metadata:
        shape = json.loads(field.metadata[_TENSOR_SHAPE])
    else:
        return arr.to_numpy(zero_copy_only=False)
    if arr.null_count:
        raise ValueError(f"column {field.name!r}: {arr.null_count} null tensor(s)")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(arr), *(int(d) for d in shape))


# ------------------------------------------------------------------------------------------------ the reader


class RankReader:
    """Rank ``rank``'s micro-batches of ``shards``, pass after pass (:meth:`batches`), as planned by
    :func:`rank_plan`; indexes the cache when built. :attr:`bytes_read` counts every byte fetched (index included)."""

    def __init__(self, shards: CacheShards, *, rank: int, world: int, micro_batch_size: int) -> None:
        self.shards = shards
        self._files = _Files()
        self.index = read_index(shards, self._files)
        self.plan = rank_plan(self.index, rank, world, micro_batch_size)

    @property
    def bytes_read(self) -> int:
        return self._files.bytes

    def batches(self) -> Iterator[dict]:
        """One pass: the plan's micro-batches in order, each a dict of torch tensors ``(m, *shape)``."""
        import torch

        m, columns = self.plan.micro_batch_size, list(self.shards.columns)
        buf: dict[str, np.ndarray] | None = None
        pos, opened, f = 0, -1, None
        try:
            for read in self.plan.reads:
                if read.file != opened:
                    if f is not None:
                        f.close()
                    info = self.index.files[read.file]
                    f, opened = self._files.open(info.location), read.file
                    pf = _parquet(f, info.metadata)
                table = pf.read_row_group(read.group, columns=columns, use_threads=False).take(read.rows)
                arrays = {c: tensor_numpy(table.column(c), table.schema.field(c)) for c in columns}
                if buf is not None and pos < len(buf[columns[0]]):  # a micro-batch spanning two row groups
                    arrays = {c: np.concatenate([buf[c][pos:], arrays[c]]) for c in columns}
                buf, pos = arrays, 0
                while len(buf[columns[0]]) - pos >= m:
                    yield {c: torch.from_numpy(np.array(buf[c][pos : pos + m])) for c in columns}
                    pos += m
        finally:
            if f is not None:
                f.close()
