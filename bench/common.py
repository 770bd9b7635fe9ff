"""Helpers shared by the benchmarks: offline environment and a fresh toy world."""

from __future__ import annotations

import os
from pathlib import Path

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_k, _v)


def toy_image_world(out: Path, *, seed: int, rows: int, rows_per_shard: int = 500) -> Path:
    """Write ``rows`` toy image-text rows for ``seed`` under ``out`` (reused if already there); return the dir."""
    from toyworld.images import generate_image_records, write_image_dataset

    if not (out / "labels.parquet").is_file():
        write_image_dataset(out, generate_image_records(seed, rows), rows_per_shard=rows_per_shard)
    return out
