"""Training I/O per worker per pass over a latent cache: every worker reading the whole cache (the loop before issue
23) against each worker reading its own rank's rows (``pipelines.rank_data``), measured in one run.

    python -m bench.train_io [--images 600] [--workers 2] [--encode-batch 32] [--keep DIR] [--out FILE.json]

A toy image world is curated (toy profile) and stage 1 runs on it for real with ``--workers`` Ray Train workers:
the encode actors write the latent cache, then the workers train one pass over it (and a step more, replayed).
Figures, all compressed Parquet bytes from the cache's own metadata:

- before: what every worker fetched per pass when each read the whole cache through Ray Data (``read_parquet`` of
  the ``error`` and tensor columns, every row group of every file): the footers plus those column chunks of every
  row group (``CacheIndex.whole_bytes``; key and caption were never read). The cache's file sizes are shown too.
- after, planned: :func:`pipelines.rank_data.rank_plan` per rank: the index every worker reads (footers and every
  file's ``error`` column) plus the tensor column chunks of the row groups its range overlaps.
- after, measured: the training run's rank-0 metrics, ``shard_bytes`` (its plan) and ``shard_bytes_read`` (the
  bytes its reader actually fetched from the files, counted under pyarrow).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import bench.common as common


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600, help="toy image-text rows before curation")
    ap.add_argument("--seed", type=int, default=2323)
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    ap.add_argument("--encode-batch", type=int, default=32, help="rows per encode batch (one cache row group)")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import pyarrow.parquet as pq
    import ray

    from pipelines.config import load_config
    from pipelines.latent_cache import cache_shards
    from pipelines.rank_data import rank_plan, read_index
    from pipelines.runtime import run_job

    t0 = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    place = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="alcm-train-io-")
    with place as tmp:
        tmp = Path(tmp).resolve()
        tmp.mkdir(parents=True, exist_ok=True)
        images = common.toy_image_world(tmp / "images", seed=args.seed, rows=args.images) / "parquet"
        curated = run_job("curate_images", load_config("toy"), images, tmp / "curated", overwrite=True)
        kept = curated.manifest["counts"]["by_decision"]["kept"]
        m = load_config("toy").distill_image.train.micro_batch_size
        steps = kept // (m * args.workers) + 1  # a whole pass (N ≤ kept encoded rows), then a replayed step
        cfg = load_config("toy", [
            f"distill_image.cache_dir={tmp / 'cache'}", f"distill_image.train.storage_path={tmp / 'runs'}",
            f"distill_image.train.num_workers={args.workers}", f"distill_image.train.steps={steps}",
            f"distill_image.train.checkpoint_every={steps}", f"distill_image.encode_batch_size={args.encode_batch}",
            "distill_image.preview_prompts=[]",
        ])  # fmt: skip
        t = time.monotonic()
        job = run_job("distill_image", cfg, curated.output, tmp / "stage1", overwrite=True)
        job_s = time.monotonic() - t
        manifest = job.manifest
        cache = manifest["latent_cache"]["path"]
        columns = json.loads((Path(cache) / "cache.json").read_text())["columns"]
        shards = cache_shards(Path(cache) / "data", columns)
        index = read_index(shards)
        plans = [rank_plan(index, r, args.workers, m) for r in range(args.workers)]
        file_bytes = sum(Path(f).stat().st_size for f in shards.files)
        groups = sum(pq.read_metadata(f).num_row_groups for f in shards.files)
    ray.shutdown()

    metrics = manifest["metrics"]
    before = index.whole_bytes
    report = {
        "images": args.images, "kept": kept, "encoded": index.encoded, "workers": args.workers,
        "micro_batch_size": m, "encode_batch_size": args.encode_batch, "files": len(shards.files),
        "row_groups": groups, "file_bytes": file_bytes, "before_bytes_per_worker": before,
        "plans": [p.describe() for p in plans],
        "run": {"steps": metrics["step"], "shard_bytes": metrics.get("shard_bytes"),
                "shard_bytes_read": metrics.get("shard_bytes_read"), "shard_reads": metrics.get("shard_reads")},
        "job_s": round(job_s, 1), "total_s": round(time.monotonic() - t0, 1),
    }  # fmt: skip
    common.write_json(args.out, report)
    print(f"latent cache: {index.encoded} encoded rows of {kept} kept, {len(shards.files)} file(s), {groups} row "
          f"groups, {file_bytes:,} bytes on disk; {args.workers} workers, micro-batch {m}")  # fmt: skip
    print(f"before (every worker reads the whole cache): {before:,} bytes per worker per pass")
    print("| rank | encoded rows | micro-batches | row groups read | index bytes | data bytes | bytes per pass | "
          "vs before |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for p in plans:
        print(f"| {p.rank} | [{p.first}, {p.first + p.rows}) | {p.micro_batches} | {len(p.reads)} / {groups} | "
              f"{p.index_bytes:,} | {p.data_bytes:,} | {p.bytes:,} | {p.bytes / before:.3f} |")  # fmt: skip
    total = sum(p.bytes for p in plans)
    print(f"all workers per pass: {total:,} bytes after vs {before * args.workers:,} before "
          f"(ratio {total / (before * args.workers):.3f}; ideal 1/{args.workers} = {1 / args.workers:.3f})")
    read, planned = metrics.get("shard_bytes_read"), metrics.get("shard_bytes")
    print(f"training run ({metrics['step']} steps, {job_s:.0f} s): rank 0 reported shard_bytes {planned:,}, "
          f"shard_bytes_read {read:,} (plan {plans[0].bytes:,}; "
          f"{'equal' if read == planned == plans[0].bytes else 'DIFFERENT'}), shard_reads {metrics['shard_reads']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
