"""A latent cache keeps its dataset's row order, whatever order the encode actors finish in: the order of a cache is
the order the stages train in (``pipelines.latent_cache.write_in_order``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.latent_cache import cache_files, cached_dataset, write_in_order


def test_a_cache_written_from_jittery_actors_keeps_the_row_order_across_its_files(ray_local, tmp_path):
    import ray

    class Jittery:
        """An encoder whose batches take uneven times (the slow ones first), so two actors finish out of order."""

        def __call__(self, batch):
            import time

            time.sleep(0.3 if int(batch["id"][0]) % 96 == 0 else 0.02)
            return {"id": batch["id"], "error": ["" if i % 7 else "undecodable: x" for i in batch["id"]],
                    "latents": batch["id"].reshape(-1, 1, 1).repeat(4, axis=1).astype("float32")}  # fmt: skip

    # Two input shards (as a curated dataset has), read in parallel: the setting in which Ray Data's own
    # write_parquet moved a block in 1 run of 4 (Ray 2.60), preserve_order notwithstanding.
    shards = tmp_path / "input"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 285), (285, 640)]):
        pq.write_table(pa.table({"id": list(range(lo, hi))}), shards / f"shard-{i}.parquet", row_group_size=40)
    for attempt in range(4):
        ds = ray.data.read_parquet(sorted(str(f) for f in shards.glob("*.parquet")))
        ds.context.execution_options.preserve_order = True
        encoded = ds.map_batches(Jittery, batch_size=32, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
        out = tmp_path / f"cache{attempt}"
        assert write_in_order(encoded, out) == 640
        files = cache_files(out)
        ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        assert ids == list(range(640)), f"attempt {attempt}: rows out of order"
        # What training reads: the encoded rows only, in the cache's order.
        rows = cached_dataset(out, ["latents"]).take_all()
        assert [int(r["latents"][0, 0]) for r in rows] == [i for i in range(640) if i % 7]


def test_a_cache_rolls_to_the_next_file_by_size_and_reads_back_in_file_order(ray_local, tmp_path):
    import ray

    blocks = [pa.table({"id": list(range(i * 10, i * 10 + 10)), "error": [""] * 10}) for i in range(3)]
    assert write_in_order(ray.data.from_arrow(blocks), tmp_path / "c", max_file_bytes=1) == 30
    files = cache_files(tmp_path / "c")
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    ids = [pq.read_table(f).column("id").to_pylist() for f in files]
    assert ids == [list(range(i * 10, i * 10 + 10)) for i in range(3)]
    assert [r["id"] for r in cached_dataset(tmp_path / "c", ["id"]).take_all()] == list(range(30))
