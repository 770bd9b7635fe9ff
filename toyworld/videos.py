"""Text-video clips of one moving shape, with labels, as mp4 files, a webdataset shard and a labels table.

A clip is ``frames`` frames (16 by default) of ``size`` x ``size`` pixels: one shape (from the image world's
vocabulary) moving left, right, up or down across a textured background, or growing or shrinking in place. The
caption reads "a red circle moving right on a black background" or "a red circle growing on a black background".

Decisions worth knowing:

- Frames are rendered with the image world's primitives (supersampled masks, the same background texture), so a
  frame of a clip looks like a toy image; object centres and radii are continuous, so motion is smooth.
- Moving shapes travel 40-60% of the frame from a start that keeps them in frame; growing/shrinking goes between
  radius 0.06 and 0.20 of the frame. The object's colour, rotation and the background are fixed per clip.
- Encoding is H.264 (libx264, yuv420p, CRF 18, 8 fps) by default, ``mpeg4`` as the alternative. One encoder thread
  and the bitexact flags make the bytes a function of the frames (and the FFmpeg build), so a seed reproduces the
  same files. Each mp4 is encoded once, in memory, and the same bytes go to ``mp4/`` and to the tar shard.
- Randomness: clip i uses ``default_rng([seed, 2, i])`` (stream 2 of a world seed).
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toyworld.images import write_tar
from toyworld.scenes import BACKGROUNDS, COLOURS, SHAPES, composite, object_colour, render_background, shape_mask

logger = logging.getLogger(__name__)

DIRECTIONS = ("left", "right", "up", "down", "growing", "shrinking")
"""Motions of a clip; the first four move the shape, the last two scale it in place."""

VIDEO_CODECS = ("libx264", "mpeg4")
"""Encoders ``encode_mp4`` can use (both ship with PyAV's wheels)."""

FPS = 8
"""Frame rate of the encoded clips."""

LABEL_COLUMNS = ("key", "caption", "shape", "colour", "direction", "background", "frames", "width", "height", "fps")
"""Columns of ``labels.parquet``."""

_STREAM = 2


def video_caption(shape: str, colour: str, direction: str, background: str) -> str:
    """The caption of a clip, e.g. "a red circle moving right on a black background"."""
    if direction in ("left", "right", "up", "down"):
        motion = f"moving {direction}"
    elif direction in ("growing", "shrinking"):
        motion = direction
    else:
        raise ValueError(f"direction={direction!r}: choose one of {DIRECTIONS}")
    return f"a {colour} {shape} {motion} on a {background} background"


def _trajectory(direction: str, rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre x, centre y and radius, as fractions of the frame."""
    t = np.linspace(0.0, 1.0, frames)
    if direction in ("left", "right", "up", "down"):
        radius = np.full(frames, rng.uniform(0.10, 0.15))
        travel = rng.uniform(0.4, 0.6)
        start = rng.uniform(radius[0] + 0.02, 1.0 - radius[0] - 0.02 - travel)
        across = rng.uniform(0.3, 0.7)
        if direction == "right":
            x, y = start + travel * t, np.full(frames, across)
        elif direction == "left":
            x, y = 1.0 - start - travel * t, np.full(frames, across)
        elif direction == "down":
            x, y = np.full(frames, across), start + travel * t
        else:
            x, y = np.full(frames, across), 1.0 - start - travel * t
        return x, y, radius
    elif direction in ("growing", "shrinking"):
        small, large = rng.uniform(0.05, 0.08), rng.uniform(0.18, 0.22)
        radius = small + (large - small) * (t if direction == "growing" else 1.0 - t)
        x = np.full(frames, rng.uniform(0.35, 0.65))
        y = np.full(frames, rng.uniform(0.35, 0.65))
        return x, y, radius
    else:
        raise ValueError(f"direction={direction!r}: choose one of {DIRECTIONS}")


def render_clip(
    shape: str, colour: str, direction: str, background: str, rng: np.random.Generator, *, frames: int, size: int
) -> np.ndarray:
    """Render a (frames, size, size, 3) uint8 clip of one shape in motion."""
    x, y, radius = _trajectory(direction, rng, frames)
    canvas = render_background(background, rng, size)
    rgb = object_colour(colour, rng)
    angle = rng.uniform(-15.0, 15.0)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        mask = shape_mask(shape, x[t] * size, y[t] * size, radius[t] * size, angle, size)
        out[t] = np.clip(np.rint(composite(canvas, mask, rgb)), 0, 255).astype(np.uint8)
    return out


def generate_video_records(seed: int, n: int, *, frames: int = 16, size: int = 64) -> list[dict]:
    """Generate ``n`` clips: key, caption, frames (uint8 array (T, H, W, 3)), shape, colour, direction, background."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    if frames < 2:
        raise ValueError(f"frames={frames}: a clip needs at least 2 frames")
    if size < 16 or size % 2:
        raise ValueError(f"size={size}: must be an even number >= 16 (yuv420p needs even sides)")
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAM, i])
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        records.append(
            {
                "key": f"vid-{seed}-{i:06d}",
                "caption": video_caption(shape, colour, direction, background),
                "frames": render_clip(shape, colour, direction, background, rng, frames=frames, size=size),
                "shape": shape,
                "colour": colour,
                "direction": direction,
                "background": background,
            }
        )
    logger.info("generated %d video records (seed %d)", n, seed)
    return records


def encode_mp4(frames: np.ndarray, *, fps: int = FPS, codec: str = "libx264") -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames as an mp4 (yuv420p) in memory; deterministic for a given build."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f"codec={codec!r}: choose one of {VIDEO_CODECS}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames {frames.shape} {frames.dtype}: expected uint8 (T, H, W, 3)")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec == "libx264":
            # Constant quantiser, not crf: crf's rate control is floating point, and its decisions changed with
            # the process's floating-point state (measured: importing torch changed the bytes of some clips).
            stream.options = {"qp": "18", "preset": "medium"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
        else:
            raise ValueError(f"codec={codec!r}: choose one of {VIDEO_CODECS}")
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode mp4 bytes to (T, H, W, 3) uint8 RGB frames."""
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames)


def write_video_dataset(
    out_dir: Path, records: list[dict], *, codec: str = "libx264", rows_per_shard: int = 500
) -> dict:
    """Write clips as ``mp4/KEY.mp4`` + ``mp4/KEY.txt``, ``wds/shard-NNNNN.tar`` (KEY.mp4, KEY.txt, KEY.json) and
    ``labels.parquet``; return a summary (row count, shard paths, direction counts)."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard={rows_per_shard}: must be >= 1")
    out_dir = Path(out_dir)
    (out_dir / "mp4").mkdir(parents=True, exist_ok=True)
    (out_dir / "wds").mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    label_rows = []
    for record in records:
        key = record["key"]
        frames = record["frames"]
        data = encode_mp4(frames, codec=codec)
        caption = record["caption"].encode("utf-8")
        (out_dir / "mp4" / f"{key}.mp4").write_bytes(data)
        (out_dir / "mp4" / f"{key}.txt").write_bytes(caption)
        meta = {
            "key": key,
            "frames": int(frames.shape[0]),
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
            "fps": FPS,
        }
        members.append((f"{key}.mp4", data))
        members.append((f"{key}.txt", caption))
        members.append((f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8")))
        labels = {name: record[name] for name in ("caption", "shape", "colour", "direction", "background")}
        label_rows.append({**meta, **labels})
    per_shard = 3 * rows_per_shard
    shards = []
    for shard, start in enumerate(range(0, len(members), per_shard)):
        path = out_dir / "wds" / f"shard-{shard:05d}.tar"
        write_tar(path, members[start : start + per_shard])
        shards.append(path.relative_to(out_dir).as_posix())
    schema = pa.schema(
        [(name, pa.string()) for name in LABEL_COLUMNS[:6]] + [(name, pa.int32()) for name in LABEL_COLUMNS[6:]]
    )
    table = pa.table({name: [row[name] for row in label_rows] for name in LABEL_COLUMNS}, schema=schema)
    pq.write_table(table, out_dir / "labels.parquet")
    logger.info("wrote %d clips to %s", len(records), out_dir)
    return {
        "rows": len(records),
        "wds": shards,
        "labels": "labels.parquet",
        "direction_counts": dict(sorted(Counter(r["direction"] for r in records).items())),
    }
