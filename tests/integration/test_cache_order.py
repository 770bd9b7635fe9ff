"""A latent cache keeps its dataset's row order, and its bytes, whatever order the encode actors finish in and however
many there are: the actors write one file per fixed range of input rows, named by its offset
(``pipelines.cache_write``); the order of a cache is the order the stages train in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.digests import sha256_file
from pipelines.cache_write import write_cache
from pipelines.latent_cache import cache_files, cached_dataset


def _jittery():
    """An encoder class whose batches take uneven times (the slow ones first), so that actors finish out of order;
    row ``i`` fails when ``i % 7 == 0``. Defined in a function, so that Ray ships it by value to the actors."""

    class Jittery:
        def __call__(self, batch: pa.Table) -> dict:
            import time

            ids = np.asarray(batch.column("id").to_pylist())
            time.sleep(0.3 if int(ids[0]) % 96 == 0 else 0.02)
            return {"id": ids, "error": np.array(["" if i % 7 else "undecodable: x" for i in ids], dtype=object),
                    "latents": ids.reshape(-1, 1, 1).repeat(4, axis=1).astype("float32")}  # fmt: skip

    return Jittery


Jittery = _jittery()


def _input(tmp_path):
    """Two input shards (as a curated dataset has) of 285 and 355 rows in row groups of 40."""
    shards = tmp_path / "input"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 285), (285, 640)]):
        pq.write_table(pa.table({"id": list(range(lo, hi))}), shards / f"shard-{i}.parquet", row_group_size=40)
    return sorted(shards.glob("*.parquet"))


def test_a_cache_has_the_same_files_in_the_input_order_whatever_the_actors(ray_local, tmp_path):
    files = _input(tmp_path)
    digests = []
    for actors in (2, 1, 2):
        out = tmp_path / f"cache-{len(digests)}"
        written = write_cache(Jittery, files, out, columns=["id"], batch_size=32, actors=actors, rows_per_file=96)
        assert [w["file"] for w in written] == [f"part-{o:012d}.parquet" for o in range(0, 640, 96)]
        assert sum(w["rows"] for w in written) == 640
        assert sum(w["reasons"].get("undecodable", 0) for w in written) == len(range(0, 640, 7))
        got = cache_files(out)
        assert [f.name for f in got] == [w["file"] for w in written] and not list(out.glob(".*"))
        assert [w["sha256"] for w in written] == [sha256_file(f) for f in got]
        ids = [i for f in got for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        assert ids == list(range(640))
        # one row group per encode batch: the batches are input rows [32·j, 32·(j+1)), whatever the unit cut
        assert [pq.read_metadata(f).row_group(g).num_rows for f in got[:1] for g in range(3)] == [32, 32, 32]
        assert pq.read_metadata(got[-1]).num_rows == 640 - 6 * 96
        digests.append([w["sha256"] for w in written])
        # What a Ray Dataset reader of the cache gets: the encoded rows only, in the cache's order.
        rows = cached_dataset(out, ["latents"]).take_all()
        assert [int(r["latents"][0, 0]) for r in rows] == [i for i in range(640) if i % 7]
    assert digests[0] == digests[1] == digests[2]  # 2 actors, 1 actor, 2 again: the same bytes


def test_the_files_follow_the_unit_size_and_read_back_in_name_order(ray_local, tmp_path):
    files = _input(tmp_path)
    written = write_cache(Jittery, files, tmp_path / "c", columns=["id"], batch_size=100, actors=2)
    assert [w["rows"] for w in written] == [640]  # the default: 16 batches per file
    small = write_cache(Jittery, files, tmp_path / "d", columns=["id"], batch_size=50, actors=2, rows_per_file=300)
    assert [(w["offset"], w["rows"]) for w in small] == [(0, 300), (300, 300), (600, 40)]
    assert [r["id"] for r in cached_dataset(tmp_path / "d", ["id"]).take_all()] == [i for i in range(640) if i % 7]
