"""A cache written by the encode actors, read by rank (``pipelines.rank_data``): the same tensors Ray Data's
``iter_torch_batches`` gave the workers before, and the same files and reads on an object store (moto's S3 server)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts import storage
from pipelines.cache_write import CacheWriter, plan_units, write_cache
from pipelines.latent_cache import cache_files, cache_shards, cached_dataset
from pipelines.rank_data import RankReader

COLUMNS = ["latents", "input_ids", "control"]


def _fake_encoder():
    """An encoder class (shipped by value to the actors) writing row ``i``'s id into its tensors, in the dtypes and
    ranks of the real cache's columns; rows with ``i % 9 == 4`` fail."""

    class Fake:
        def __call__(self, batch: pa.Table) -> dict:
            ids = np.asarray(batch.column("id").to_pylist())
            n = len(ids)
            return {"key": np.array([f"k{i}" for i in ids], dtype=object),
                    "error": np.array(["undecodable: x" if i % 9 == 4 else "" for i in ids], dtype=object),
                    "latents": (ids[:, None, None, None] + np.zeros((n, 2, 3, 3))).astype(np.float32),
                    "input_ids": np.repeat(ids[:, None], 5, axis=1).astype(np.int64),
                    "control": ((ids % 256)[:, None, None, None, None] + np.zeros((n, 3, 2, 2, 2))).astype(np.uint8)}

    return Fake


Fake = _fake_encoder()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("input")
    for i, (lo, hi) in enumerate([(0, 150), (150, 330)]):
        pq.write_table(pa.table({"id": list(range(lo, hi))}), out / f"shard-{i}.parquet", row_group_size=35)
    return sorted(out.glob("*.parquet"))


@pytest.fixture(scope="module")
def local_cache(inputs, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "data"
    written = write_cache(Fake, inputs, out, columns=["id"], batch_size=20, actors=2, rows_per_file=100)
    return out, written


def test_rank_batches_equal_ray_datas_torch_batches_of_the_same_rows(local_cache):
    out, _ = local_cache
    shards = cache_shards(out, COLUMNS)
    world, m = 2, 4
    mine = [b for r in range(world) for b in RankReader(shards, rank=r, world=world, micro_batch_size=m).batches()]
    rows = len(mine) * m
    (ray_batch,) = cached_dataset(out, COLUMNS).limit(rows).iter_torch_batches(batch_size=rows)
    for c in COLUMNS:
        ours = np.concatenate([b[c].numpy() for b in mine])
        assert mine[0][c].dtype == ray_batch[c].dtype and tuple(mine[0][c].shape[1:]) == tuple(ray_batch[c].shape[1:])
        np.testing.assert_array_equal(ours, ray_batch[c].numpy())
    assert [int(v) for v in np.concatenate([b["input_ids"][:, 0].numpy() for b in mine])] == \
        [i for i in range(330) if i % 9 != 4][:rows]  # fmt: skip


def test_on_an_object_store_the_files_and_every_ranks_reads_are_the_same_as_locally(local_cache, inputs, s3_server):
    # The actors' upload path run in this process (Ray's workers were started before this test's S3 environment).
    out, written = local_cache
    s3_server.create_bucket(Bucket="rank-data")
    prefix = "s3://rank-data/cache/k/data"
    writer = CacheWriter(Fake, ("id",), prefix, 20)
    remote = [writer.write(unit) for unit in plan_units(inputs, 100)]
    assert [(w["file"], w["sha256"]) for w in remote] == [(w["file"], w["sha256"]) for w in written]
    assert [storage.basename(f) for f in cache_files(prefix)] == [w["file"] for w in written]
    assert [storage.sha256(f) for f in cache_files(prefix)] == [w["sha256"] for w in written]
    here, there = cache_shards(out, COLUMNS), cache_shards(prefix, COLUMNS)
    for rank in range(3):
        a = RankReader(here, rank=rank, world=3, micro_batch_size=5)
        b = RankReader(there, rank=rank, world=3, micro_batch_size=5)
        for x, y in zip(a.batches(), b.batches(), strict=True):
            for c in COLUMNS:
                np.testing.assert_array_equal(x[c].numpy(), y[c].numpy())
        assert a.bytes_read == b.bytes_read == a.plan.bytes
