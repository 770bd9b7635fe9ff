"""Each training rank reads only its own encoded rows of a latent cache, and only the row groups they lie in
(``pipelines.rank_data``), on a small cache written here with pyarrow in the cache's format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.rank_data import CacheShards, RankReader, rank_plan, read_index, tensor_numpy

# Three files of uneven row groups (rows per group), 10% of the rows failed: 83 rows in all.
LAYOUT = [[7, 7, 5], [16, 3, 11], [9, 9, 9, 7]]


def _failed(row: int) -> bool:
    return row % 10 == 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache whose row ``i`` holds ``i`` in every tensor (float32 latents (2, 3, 3), int64 ids (5,), uint8
    control (3, 2, 2, 2)); returns its shards and, per file, the global row number of each row group's first row."""
    from ray.data.extensions import ArrowTensorArray

    out = tmp_path_factory.mktemp("cache")
    row, files, starts = 0, [], []
    for groups in LAYOUT:
        path = out / f"part-{row:012d}.parquet"
        writer, first = None, []
        for n in groups:
            ids = np.arange(row, row + n)
            table = pa.table({
                "key": pa.array([f"k{j}" for j in ids]),
                "error": pa.array(["undecodable: x" if _failed(j) else "" for j in ids]),
                "latents": ArrowTensorArray.from_numpy(np.broadcast_to(ids[:, None, None, None], (n, 2, 3, 3))
                                                       .astype(np.float32).copy()),
                "input_ids": ArrowTensorArray.from_numpy(np.repeat(ids[:, None], 5, axis=1).astype(np.int64)),
                "control": ArrowTensorArray.from_numpy(np.broadcast_to((ids % 256)[:, None, None, None, None],
                                                                       (n, 3, 2, 2, 2)).astype(np.uint8).copy()),
            })  # fmt: skip
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table, row_group_size=n)
            first.append(row)
            row += n
        writer.close()
        files.append(str(path))
        starts.append(first)
    return CacheShards(tuple(files), ("latents", "input_ids", "control")), starts


ENCODED = [i for i in range(sum(map(sum, LAYOUT))) if not _failed(i)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("m", [2, 5])
def test_ranks_take_disjoint_equal_ranges_covering_the_encoded_rows_in_order(cache, world, m):
    shards, _ = cache
    index = read_index(shards)
    assert index.encoded == len(ENCODED)
    plans = [rank_plan(index, r, world, m) for r in range(world)]
    per_rank = (len(ENCODED) // world) // m * m
    assert {p.rows for p in plans} == {per_rank} and {p.micro_batches for p in plans} == {per_rank // m}
    trained = []
    for r in range(world):
        rows = [int(b["latents"][i, 0, 0, 0]) for b in RankReader(shards, rank=r, world=world,
                                                                  micro_batch_size=m).batches()
                for i in range(m)]  # fmt: skip
        assert rows == ENCODED[r * per_rank : (r + 1) * per_rank]
        trained += rows
    assert trained == ENCODED[: world * per_rank]  # disjoint, in order, the failed rows skipped


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_rank_reads_only_the_row_groups_its_range_overlaps_and_the_bytes_it_planned(cache, world):
    shards, starts = cache
    m = 2
    index = read_index(shards)
    for r in range(world):
        plan = rank_plan(index, r, world, m)
        mine = set(ENCODED[plan.first : plan.first + plan.rows])
        overlapping = {(f, g) for f, groups in enumerate(LAYOUT) for g, n in enumerate(groups)
                       if mine & set(range(starts[f][g], starts[f][g] + n))}  # fmt: skip
        assert {(x.file, x.group) for x in plan.reads} == overlapping
        reader = RankReader(shards, rank=r, world=world, micro_batch_size=m)
        indexed = reader.bytes_read
        assert indexed == index.index_bytes  # footers and error columns, nothing else
        assert sum(1 for _ in reader.batches()) == plan.micro_batches
        assert reader.bytes_read == plan.bytes  # measured: exactly the planned column chunks, once each
        assert plan.data_bytes == sum(index.files[f].group_bytes[g] for f, g in overlapping)
        if world > 1:
            assert plan.bytes < index.whole_bytes
    assert rank_plan(index, 0, 1, m).bytes == index.whole_bytes  # one rank of micro-batches of 2 reads it all


def test_micro_batches_are_torch_tensors_of_the_columns_dtypes_and_shapes(cache):
    import torch

    shards, _ = cache
    (batch, *_) = RankReader(shards, rank=1, world=2, micro_batch_size=4).batches()
    assert set(batch) == {"latents", "input_ids", "control"}
    assert (batch["latents"].dtype, tuple(batch["latents"].shape)) == (torch.float32, (4, 2, 3, 3))
    assert (batch["input_ids"].dtype, tuple(batch["input_ids"].shape)) == (torch.int64, (4, 5))
    assert (batch["control"].dtype, tuple(batch["control"].shape)) == (torch.uint8, (4, 3, 2, 2, 2))
    batch["latents"].add_(1.0)  # writable, owned memory


def test_too_few_encoded_rows_for_a_micro_batch_per_rank_plan_nothing(cache):
    shards, _ = cache
    plan = rank_plan(read_index(shards), 2, 3, 40)  # 74 encoded rows: 24 per rank, under one micro-batch of 40
    assert (plan.rows, plan.reads, plan.data_bytes) == (0, (), 0)
    assert list(RankReader(shards, rank=2, world=3, micro_batch_size=40).batches()) == []


def test_a_tensor_column_reads_alike_with_and_without_rays_extension_type():
    from ray.data.extensions import ArrowTensorArray

    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ext = ArrowTensorArray.from_numpy(values)
    plain = pa.field("t", ext.storage.type, metadata={b"ARROW:extension:metadata": json.dumps([3, 4]).encode()})
    np.testing.assert_array_equal(tensor_numpy(ext, pa.field("t", ext.type)), values)
    np.testing.assert_array_equal(tensor_numpy(ext.storage, plain), values)
    np.testing.assert_array_equal(tensor_numpy(ext.storage.slice(1), plain), values[1:])
    native = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    np.testing.assert_array_equal(tensor_numpy(native, pa.field("t", native.type)), values)


def test_shards_refuse_relative_paths():
    with pytest.raises(ValueError, match="relative"):
        CacheShards(("data/part-000000000000.parquet",), ("latents",))
