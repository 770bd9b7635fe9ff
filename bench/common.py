"""Helpers shared by the benchmarks: offline environment and fresh toy worlds (image-text rows, dancers)."""

from __future__ import annotations

import os
from pathlib import Path

DEMO = Path("data/demo")
"""Where ``make demo`` writes (the retrain flow's work directory: one link per stage output, named by the stage
graph)."""

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
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


def toy_dancer_world(out: Path, *, seed: int, dancers: int, videos: int = 0) -> Path:
    """Generate a toy world of ``dancers`` TikTok-style sequences (and ``videos`` mp4 clips) under ``out``; return
    the recaptioning input: ``out/world/dancers``, or with videos ``out/input`` holding ``dancers/`` and the mp4
    clips (``videos/``; the world's webdataset copy of the same clips is left out, so no clip is read twice)."""
    from toyworld.generate import generate_world

    world = out / "world"
    generate_world(world, seed=seed, images=0, videos=videos, dancers=dancers)
    if not videos:
        return world / "dancers"
    inputs = out / "input"
    inputs.mkdir(parents=True)
    (world / "dancers").rename(inputs / "dancers")
    (world / "videos" / "mp4").rename(inputs / "videos")
    return inputs


def write_json(path: Path | None, data: dict) -> None:
    """Write a benchmark's figures as JSON when ``--out`` was given."""
    if path is None:
        return
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_curves(out: Path, report: dict, md: str) -> None:
    """A budget bench's results: ``out/results.json`` (the report) and ``out/curves.md`` (its tables), printed."""
    write_json(out / "results.json", report)
    (out / "curves.md").write_text(md)
    print(md)
