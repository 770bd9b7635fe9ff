"""Curation throughput: the Ray Data job vs a single-process loop over the same stages and scorers.

Both paths run the same read → decode → score → decide → deduplicate → write work on the same toy input
(≥ 5,000 rows): the baseline calls the job's own stage functions one batch at a time in this process, with the
scorers loaded once and torch allowed ``--baseline-threads`` threads (default: all cores, the strongest
single-process setting). The Ray job runs with the profile's actor pool. Ray's own start-up is excluded (a
cluster is already up in production); actor start-up and model loading are included. Prints rows/s of both and
their ratio (target ≥ 1.7× on 2 cores).

    python bench/curation_throughput.py [--rows 5000] [--seed 777] [--baseline-threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import bench.common as common


def single_process(cfg, input_dir: Path, out: Path) -> int:
    """The curation work without Ray: the job's stage functions in one loop. Returns rows processed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import curate_images as job
    from pipelines.sources import discover, read_source

    cur = cfg.curation
    sources, _ = discover(input_dir, folder_chunk=cur.folder_chunk)
    scorer = job._ScoreActor(cfg.scorers)
    tables = []
    for source in sources:
        rows = list(read_source(input_dir, source, max_bytes=cur.decode.max_bytes))
        for start in range(0, len(rows), cur.batch_size):
            table = job._decode(pa.Table.from_pylist(rows[start : start + cur.batch_size]), cfg=cur.decode)
            table = scorer(table)
            tables.append(job._decide(table, cfg=cur.filters))
    table = pa.concat_tables(tables)
    meta = table.select(["id", "key", "decision", "sha256", "phash", "width", "height"]).to_pandas()
    table = job._apply_global(table, updates=job._global_decisions(meta, cfg))
    table = table.drop_columns(["decodable", "quarantine"])
    out.mkdir(parents=True)
    kept = table.filter(pa.compute.equal(table.column("decision"), "kept"))
    pq.write_table(kept, out / "kept.parquet")
    pq.write_table(table.drop_columns(["image"]), out / "audit.parquet")
    return table.num_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--baseline-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    from pipelines import runtime
    from pipelines.config import load_config
    from pipelines.curate_images import run

    cfg = load_config(args.profile, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        world = common.toy_image_world(Path(tmp) / "world", seed=args.seed, rows=args.rows)
        src = world / "parquet"

        base_cfg = dataclasses.replace(
            cfg, scorers=dataclasses.replace(cfg.scorers, torch_threads=args.baseline_threads)
        )
        t = time.monotonic()
        n_base = single_process(base_cfg, src, Path(tmp) / "baseline")
        base_s = time.monotonic() - t

        runtime.connect(cfg.ray)
        t = time.monotonic()
        result = run(cfg, src, Path(tmp) / "ray")
        ray_s = time.monotonic() - t
        ray.shutdown()
    n_ray = result.manifest["counts"]["input"]
    assert n_ray == n_base, (n_ray, n_base)
    base_rate, ray_rate = n_base / base_s, n_ray / ray_s
    print(f"curation throughput, {n_ray} toy rows, {os.cpu_count()} cores, profile {args.profile}")
    print(f"  single process ({args.baseline_threads} torch threads): {base_s:7.1f} s  {base_rate:8.1f} rows/s")
    print(f"  Ray Data job ({cfg.curation.scorer_actors} scorer actors):      {ray_s:7.1f} s  {ray_rate:8.1f} rows/s")
    print(f"  ratio Ray / single process: {ray_rate / base_rate:.2f}x (target ≥ 1.7x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
