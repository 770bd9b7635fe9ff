"""Generate the whole toy world (images, videos, dancers) from one seed, with a manifest of what was written.

Layout of ``out``::

    images/   parquet/part-NNNNN.parquet, wds/shard-NNNNN.tar, labels.parquet   (toyworld.images)
    videos/   mp4/KEY.mp4 + KEY.txt, wds/shard-NNNNN.tar, labels.parquet        (toyworld.videos)
    dancers/  SEQ/images/NNNN.png, SEQ/pose/NNNN.json, labels.parquet          (toyworld.dancers)
    world.json

``world.json`` holds the seed, counts, per-label counts (image labels and expected decisions, video kinds and
directions, dancer patterns), :data:`GENERATOR_VERSION`, the versions of the libraries whose encoders shape the
bytes (Pillow, PyAV, pyarrow, numpy), and the sha256 of every other file, so two worlds can be compared by their
manifests alone. It contains no timestamps: the same seed and library versions give a byte-identical world,
manifest included.

Decisions worth knowing:

- Images, videos and dancers use separate random streams of the one seed (``default_rng([seed, stream, ...])``
  with streams 1, 2, 3), so changing the number of videos does not change any image.
- ``image_size`` applies to all three parts (videos and dancers are square frames of the same side).
- The world is written into a temporary sibling folder and renamed into place, so a crash never leaves a
  half-written world at ``out``; ``out`` must not exist yet (or be an empty folder).
- Run it as ``python -m toyworld.generate --out DIR --seed 0 --images 2000 --videos 50 --dancers 10``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import PIL
import pyarrow as pa

from toyworld.dancers import generate_dancer_sequences, write_dancers
from toyworld.images import generate_image_records, write_image_dataset
from toyworld.videos import generate_video_records, write_video_dataset

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "toyworld-1.2"  # 1.2: video clips get labelled defect kinds; 1.1: mp4s at constant QP (byte-stable)
"""Bump when any generator's output for a given seed changes."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its POSIX path relative to ``root``, in sorted order."""
    return {
        path.relative_to(root).as_posix(): _sha256(path)
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
        if path.is_file()
    }


def _write_world(tmp: Path, *, seed: int, images: int, videos: int, dancers: int, image_size: int) -> dict:
    started = time.perf_counter()
    image_records = generate_image_records(seed, images, image_size=image_size)
    image_summary = write_image_dataset(tmp / "images", image_records)
    del image_records
    logger.info("images: %d rows in %.1f s", images, time.perf_counter() - started)

    started = time.perf_counter()
    video_records = generate_video_records(seed, videos, size=image_size)
    video_summary = write_video_dataset(tmp / "videos", video_records)
    del video_records
    logger.info("videos: %d clips in %.1f s", videos, time.perf_counter() - started)

    started = time.perf_counter()
    dancer_summary = write_dancers(tmp / "dancers", generate_dancer_sequences(seed, dancers, size=image_size))
    logger.info("dancers: %d sequences in %.1f s", dancers, time.perf_counter() - started)

    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "counts": {"images": images, "videos": videos, "dancers": dancers},
        "image_label_counts": image_summary["label_counts"],
        "image_expected_decision_counts": image_summary["expected_decision_counts"],
        "video_direction_counts": video_summary["direction_counts"],
        "video_kind_counts": video_summary["kind_counts"],
        "dancer_pattern_counts": dancer_summary["pattern_counts"],
        "libraries": {
            "pillow": PIL.__version__,
            "av": av.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
        },  # fmt: skip
        "files": file_digests(tmp),
    }


def generate_world(out: Path, *, seed: int, images: int, videos: int, dancers: int, image_size: int = 64) -> dict:
    """Write the toy world to ``out`` (images/, videos/, dancers/, world.json) and return the world.json summary."""
    out = Path(out)
    for name, value in (("images", images), ("videos", videos), ("dancers", dancers)):
        if value < 0:
            raise ValueError(f"{name}={value}: must be >= 0")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"toy world output {out} already exists and is not an empty folder; choose a new path")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = _write_world(tmp, seed=seed, images=images, videos=videos, dancers=dancers, image_size=image_size)
        (tmp / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("toy world (seed %d) written to %s in %.1f s: %d files", seed, out, time.perf_counter() - started,
                len(summary["files"]))  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m toyworld.generate --out DIR --seed 0 --images 2000 --videos 50 --dancers 10``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist yet)")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--images", type=int, default=2000, help="number of image-text rows")
    parser.add_argument("--videos", type=int, default=50, help="number of text-video clips")
    parser.add_argument("--dancers", type=int, default=10, help="number of dancer sequences")
    parser.add_argument("--image-size", type=int, default=64, help="side of images, video frames and dancer frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    generate_world(
        args.out, seed=args.seed, images=args.images, videos=args.videos, dancers=args.dancers,
        image_size=args.image_size,
    )  # fmt: skip


if __name__ == "__main__":
    main()
