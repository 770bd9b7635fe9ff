"""Writing a latent cache in parallel, in an order fixed by the input alone.

The rows to encode (the dataset's Parquet files, in their order, each in its row-group order) are cut into units
of ``rows_per_file`` consecutive rows (:func:`plan_units`; the last unit may be shorter): unit ``u`` holds the
input's rows ``[u·R, (u+1)·R)``, wherever its files' row groups begin and end. The units go to a Ray Data actor
pool (:class:`CacheWriter`, whose encoder is built once per actor); an actor reads its unit's rows itself (only
the input row groups they lie in, only the columns the encoder reads), encodes them in batches of ``batch_size``
(``R`` is a multiple of it, so the batches are the same whatever the unit cut or the number of actors), and writes
the unit as its own file, ``part-<offset of its first row, 12 digits>.parquet``, one row group per batch. So the
files' sorted names are the input order whatever actor finishes first, and the driver (:func:`write_cache`) only
collects each file's rows, failure counts and sha256.

A file is complete or absent: locally it is written under a hidden ``.partial`` name in the data directory and
renamed into place (a killed actor's retry writes it again; the driver removes leftovers); on an object store it
is written to the actor's local temporary directory, hashed and uploaded as one object. The same input, encoder,
``batch_size`` and ``rows_per_file`` give the same files, byte for byte, whatever the number of actors.

Tensors are written as Ray Data's tensor extension type (what a Ray Data ``map_batches`` wrote before, and what
:func:`pipelines.rank_data.tensor_numpy` reads); string columns as Arrow strings; dictionary encoding only for
the string columns (it never pays on latents).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from contracts import storage
from contracts.digests import sha256_file

log = logging.getLogger(__name__)

BATCHES_PER_FILE = 16
"""Encode batches per cache file by default (``rows_per_file = batch_size × BATCHES_PER_FILE``)."""


@dataclass(frozen=True)
class Unit:
    """Input rows ``[offset, offset + rows)`` as pieces ``(file, row group, first row, end row)`` of the input's row
    groups, and the cache file they become."""

    offset: int
    rows: int
    pieces: tuple[tuple[str, int, int, int], ...]

    @property
    def name(self) -> str:
        return f"part-{self.offset:012d}.parquet"

    def to_json(self) -> str:
        return json.dumps({"offset": self.offset, "rows": self.rows, "pieces": self.pieces})

    @classmethod
    def from_json(cls, text: str) -> Unit:
        d = json.loads(text)
        return cls(d["offset"], d["rows"], tuple(tuple(p) for p in d["pieces"]))


def plan_units(files: list[Path] | list[str], rows_per_file: int) -> list[Unit]:
    """The units of ``files`` (read from their footers only): see the module docstring."""
    units: list[Unit] = []
    pieces: list[tuple[str, int, int, int]] = []
    offset = filled = 0
    for location in files:
        location = storage.normalize(location)  # absolute: the actors may run in another directory
        fs, path = storage.filesystem(location)
        meta = pq.read_metadata(path, filesystem=fs)
        for g in range(meta.num_row_groups):
            n, r = meta.row_group(g).num_rows, 0
            while r < n:
                take = min(n - r, rows_per_file - filled)
                pieces.append((location, g, r, r + take))
                r, filled = r + take, filled + take
                if filled == rows_per_file:
                    units.append(Unit(offset, filled, tuple(pieces)))
                    offset, filled, pieces = offset + filled, 0, []
    if filled:
        units.append(Unit(offset, filled, tuple(pieces)))
    return units


def _input_batches(unit: Unit, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    """The unit's input rows, ``columns`` only, in tables of ``batch_size`` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    have, opened, pf = 0, None, None
    for location, group, start, stop in unit.pieces:
        if location != opened:
            fs, path = storage.filesystem(location)
            pf, opened = pq.ParquetFile(fs.open_input_file(path)), location
        pending.append(pf.read_row_group(group, columns=columns).slice(start, stop - start))
        have += stop - start
        while have >= batch_size:
            joined = pa.concat_tables(pending, promote_options="default")
            yield joined.slice(0, batch_size).combine_chunks()
            pending, have = [joined.slice(batch_size)], have - batch_size
    if have:
        yield pa.concat_tables(pending, promote_options="default").combine_chunks()


def to_table(columns: dict) -> pa.Table:
    """An encoder's output (column → numpy array or list) as an Arrow table: arrays of two or more dimensions as Ray
    Data's tensor extension type, strings as Arrow strings, other 1-D arrays as themselves."""
    from ray.data.extensions import ArrowTensorArray

    out = {}
    for name, values in columns.items():
        values = np.asarray(values) if not isinstance(values, np.ndarray) else values
        if values.dtype == object or values.dtype.kind == "U":
            out[name] = pa.array([None if v is None else str(v) for v in values.tolist()], type=pa.string())
        elif values.ndim >= 2:
            out[name] = ArrowTensorArray.from_numpy(np.ascontiguousarray(values))
        else:
            out[name] = pa.array(values)
    return pa.table(out)


class CacheWriter:
    """Ray Data actor: encodes whole units (one per batch of the unit dataset) and writes each as its own file in
    ``out_dir`` (a local directory or an object-store prefix); returns per unit its file's description as JSON."""

    def __init__(self, make_encoder: Callable[[], Callable[[pa.Table], dict]], columns: tuple[str, ...],
                 out_dir: str, batch_size: int) -> None:  # fmt: skip
        self.encode = make_encoder()
        self.columns, self.out_dir, self.batch_size = list(columns), out_dir, batch_size

    def __call__(self, batch: pa.Table) -> dict:
        done = [self.write(Unit.from_json(text)) for text in batch.column("unit").to_pylist()]
        return {"written": np.array([json.dumps(d) for d in done], dtype=object)}

    def write(self, unit: Unit) -> dict:
        """Encode ``unit`` into its file (see the module docstring); return its name, rows, failure reasons, tensor
        columns and sha256."""
        remote = storage.is_uri(self.out_dir)
        scratch = Path(tempfile.mkdtemp(prefix="alcm-cache-")) if remote else None
        local = scratch / unit.name if remote else Path(self.out_dir, f".{unit.name}.{uuid.uuid4().hex[:8]}.partial")
        reasons: Counter = Counter()
        writer, names, rows = None, [], 0
        try:
            for rows_in in _input_batches(unit, self.columns, self.batch_size):
                table = to_table(self.encode(rows_in))
                if writer is None:
                    names = table.schema.names
                    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
                    writer = pq.ParquetWriter(str(local), table.schema, use_dictionary=strings)
                writer.write_table(table.cast(writer.schema), row_group_size=max(1, table.num_rows))
                reasons.update(str(e or "").split(":", 1)[0] for e in table.column("error").to_pylist())
                rows += table.num_rows
            if writer is None:
                raise RuntimeError(f"cache unit at row {unit.offset}: no rows read from {unit.pieces}")
            writer.close()
            writer = None
            if rows != unit.rows:
                raise RuntimeError(f"cache unit at row {unit.offset}: encoded {rows} rows, expected {unit.rows}")
            digest = sha256_file(local)
            if remote:
                storage.upload(local, storage.join(self.out_dir, unit.name))
            else:
                os.replace(local, Path(self.out_dir, unit.name))
        finally:
            if writer is not None:
                writer.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            elif local.exists():
                local.unlink()
        return {"offset": unit.offset, "rows": rows, "file": unit.name, "sha256": digest, "reasons": dict(reasons),
                "columns": names}  # fmt: skip


def write_cache(make_encoder: Callable[[], Callable[[pa.Table], dict]], files: list[Path] | list[str],
                out_dir: Path | str, *, columns: list[str], batch_size: int, actors: int, cpus: float = 1.0,
                gpus: float = 0.0, rows_per_file: int | None = None) -> list[dict]:  # fmt: skip
    """Encode the rows of ``files`` into ``out_dir`` as the module docstring says, with ``actors`` actors each
    running ``make_encoder()`` (a picklable callable building a ``pa.Table → dict of arrays`` encoder that keeps
    its batch's rows, with an ``error`` column); return the files' descriptions in order."""
    rows_per_file = rows_per_file or batch_size * BATCHES_PER_FILE
    if rows_per_file % batch_size:
        raise ValueError(f"rows_per_file={rows_per_file} must be a multiple of batch_size={batch_size}")
    units = plan_units(files, rows_per_file)
    if not units:
        raise ValueError(f"no rows to encode in {len(files)} file(s)")
    out = storage.normalize(out_dir)
    if not storage.is_uri(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    results = (
        ray.data.from_items([{"unit": u.to_json()} for u in units], override_num_blocks=len(units))
        .map_batches(CacheWriter, fn_constructor_args=(make_encoder, tuple(columns), out, batch_size),
                     batch_size=1, batch_format="pyarrow", num_cpus=cpus, num_gpus=gpus,
                     compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(units)))))
        .take_all()
    )  # fmt: skip
    if not storage.is_uri(out):
        for leftover in Path(out).glob(".*.partial"):  # a killed actor's file (its retry wrote the file again)
            leftover.unlink(missing_ok=True)
    written = sorted((json.loads(r["written"]) for r in results), key=lambda w: w["offset"])
    if [(w["offset"], w["rows"]) for w in written] != [(u.offset, u.rows) for u in units]:
        raise RuntimeError(f"latent cache {out}: the actors wrote {[w['file'] for w in written]}, expected "
                           f"{[u.name for u in units]}")  # fmt: skip
    return written
