"""Video ingest shared by recaptioning and video curation: raw rows → sampled clips (frames, control, statistics).

For each raw row of :mod:`pipelines.video_sources` (a video file's bytes, or a TikTok sequence's frame files):

1. **Pass 1** decodes every frame (PyAV for videos, PIL for frame files) into a small grey *analysis* thumbnail
   only, so memory stays flat whatever the resolution; it yields the frame count, fps, size and duration. Decoding
   stops with ``too_long`` past ``video.max_decode_frames`` frames.
2. **Scene cuts** (:func:`filters.video_rules.detect_cuts`) on the analysis frames. With ``split`` each cut-free
   segment becomes its own clip (``<id>~<k>``, key ``<key>~<k>``; the audit keeps ``parent_id``); otherwise the
   row stays one clip and ``scene_cuts`` counts the cuts inside its sampled window (a filter may reject it).
3. **Sampling**: ``video.frames`` frames ``video.stride`` apart, centred in the clip (segment); a segment shorter
   than that span is a ``too_short`` clip without frames.
4. **Pass 2** decodes again and keeps only the sampled frames, resized (short side ``video.short_side``, optionally
   centre-cropped square) and stored as PNG bytes in the row; the motion score is computed on their analysis frames.
5. **Control** (TikTok layout with ``pose/`` JSON): OpenPose-style pose maps of the sampled frames, drawn with
   the same resize/crop as the frames, stored with the clip (``control``), or from a pluggable pose annotator.

Bad data never raises: a row that cannot be read becomes a quarantined clip with its reason and error text.

Inputs and outputs may be object-store URIs (``s3://...``, :mod:`contracts.storage`): sources are discovered from a
listing, each read task copies the files of its one source into a temporary directory
(:func:`pipelines.video_sources.localize`) and reads them there with the local readers; the jobs write their tables
to the staged output's location (the attempt prefix on an object store) and read them back with :func:`read_table`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from contracts import storage
from contracts.digests import file_digest
from filters.video_rules import detect_cuts, motion_score, split_segments
from models.pose import PoseConfig, build_pose_annotator, default_limb_width, parse_pose_json, render_pose
from models.video_io import (
    VideoDecodeError,
    analysis_frame,
    encode_png,
    frame_transform,
    iter_video_frames,
    read_image_frame,
    resize_frame,
    sample_indices,
    video_info,
)
from pipelines.config import ClipConfig
from pipelines.safe_read import ReadLimits
from pipelines.sources import input_root
from pipelines.video_sources import VideoSource, discover_videos, localize, read_video_source

log = logging.getLogger(__name__)


CLIP_FIELDS = [
    ("id", pa.string()),
    ("parent_id", pa.string()),
    ("key", pa.string()),
    ("source", pa.string()),
    ("kind", pa.string()),
    ("caption", pa.string()),
    ("quarantine", pa.string()),
    ("reasons", pa.list_(pa.string())),
    ("error", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("fps", pa.float32()),
    ("n_frames", pa.int32()),
    ("duration_s", pa.float32()),
    ("segment", pa.int32()),
    ("segment_start", pa.int32()),
    ("segment_end", pa.int32()),
    ("scene_cuts", pa.int32()),
    ("motion_score", pa.float32()),
    ("frame_indices", pa.list_(pa.int32())),
    ("frames", pa.list_(pa.binary())),
    ("control", pa.list_(pa.binary())),
    ("control_kind", pa.string()),
    ("meta", pa.string()),
]
"""Columns of an ingested clip row; ``reasons`` holds reject reasons decided at ingest (``too_short``,
``too_long``), ``quarantine`` the reason a row could not be read."""
CLIP_SCHEMA = pa.schema(CLIP_FIELDS)


@dataclass(frozen=True)
class CutPolicy:
    """What ingest does with scene cuts: ``split`` into segments, count them (``reject``/``ignore``), or skip
    detection (``threshold`` None)."""

    split: bool = False
    threshold: float | None = None


def _base(raw: dict) -> dict:
    row = {name: None for name, _ in CLIP_FIELDS}
    row.update(
        id=raw["id"],
        parent_id=raw["id"],
        key=raw["key"],
        source=raw["source"],
        kind=raw["kind"],
        caption=raw.get("caption"),
        meta=raw.get("meta"),
        quarantine=raw.get("quarantine"),
        error=raw.get("error"),
        reasons=[],
    )
    return row


class _Frames:
    """Random access to an input's frames by two sequential passes (videos) or by file (frame folders)."""

    def __init__(self, root: Path, raw: dict, cfg: ClipConfig) -> None:
        self.root, self.raw, self.cfg = root, raw, cfg
        if raw["kind"] == "tiktok":
            self.files = list(raw["frame_files"] or [])
            self.fps = cfg.frame_folder_fps
        else:
            info = video_info(raw["video"], name=raw["id"])
            self.files = None
            self.fps = float(info.fps)

    def iterate(self) -> Iterator[np.ndarray]:
        cfg = self.cfg
        if self.files is not None:
            if len(self.files) > cfg.max_decode_frames:
                raise VideoDecodeError("too_long", f"{len(self.files)} frames > video.max_decode_frames")
            for rel in self.files:
                yield read_image_frame(self.root / rel, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes)
        else:
            yield from iter_video_frames(
                self.raw["video"], max_frames=cfg.max_decode_frames, max_pixels=cfg.max_pixels, name=self.raw["id"]
            )

    def pick(self, indices: list[int]) -> dict[int, np.ndarray]:
        wanted = set(indices)
        if self.files is not None:
            return {
                i: read_image_frame(
                    self.root / self.files[i], max_pixels=self.cfg.max_pixels, max_bytes=self.cfg.max_bytes
                )
                for i in sorted(wanted)
            }
        out: dict[int, np.ndarray] = {}
        last = max(wanted)
        for i, frame in enumerate(self.iterate()):
            if i in wanted:
                out[i] = frame
            if i >= last:
                break
        return out


def _control(
    root: Path, raw: dict, indices: list[int], frames: dict[int, np.ndarray], transform, pose: PoseConfig, annotator
) -> tuple[list[bytes] | None, str | None]:
    """Pose maps of the sampled frames, or (None, None) when the input has no pose source."""
    width, height = transform.out_width, transform.out_height
    # OpenPose draws 4-px limbs on ~512-px frames; small (toy) maps keep the thicker default so limbs stay visible.
    limb = default_limb_width(width, height) if min(width, height) <= 128 else max(4, round(min(width, height) / 64))

    def draw(people: list[np.ndarray]) -> bytes:
        return encode_png(render_pose(people, width, height, transform=transform, limb_width=limb))

    if pose.source == "none":
        return None, None
    elif pose.source == "keypoints":
        pose_files = raw.get("pose_files")
        if not pose_files:
            return None, None
        maps = []
        for i in indices:
            rel = pose_files[i]
            try:
                people = parse_pose_json((root / rel).read_text(encoding="utf-8")) if rel else []
            except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                raise ValueError(f"pose file {rel}: {exc}") from exc
            maps.append(draw(people))
        return maps, "openpose"
    elif pose.source == "annotator":
        people_per_frame = annotator([frames[i] for i in indices])
        return [draw(people) for people in people_per_frame], "openpose"
    else:
        raise ValueError(f"pose source {pose.source!r}: choose keypoints, annotator or none")


def ingest_row(root: Path, raw: dict, cfg: ClipConfig, cuts: CutPolicy, pose: PoseConfig, annotator=None) -> list[dict]:
    """The clip rows of one raw row (one, or one per segment when splitting at scene cuts)."""
    base = _base(raw)
    if base["quarantine"] is not None:
        return [base]
    try:
        source = _Frames(root, raw, cfg)
        analysis = []
        width = height = None
        for frame in source.iterate():
            if width is None:
                height, width = frame.shape[:2]
            elif frame.shape[:2] != (height, width):
                # One resize/crop serves the whole clip (and its pose maps): frames of another size are a broken record.
                base["quarantine"] = "bad_schema"
                base["error"] = (
                    f"frame {len(analysis)} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is {width}x{height}"
                )
                return [base]
            analysis.append(analysis_frame(frame, size=cfg.analysis_size))
    except VideoDecodeError as exc:
        if exc.reason == "too_long":
            base["reasons"] = ["too_long"]
            base["error"] = str(exc)
            return [base]
        base["quarantine"], base["error"] = exc.reason, str(exc)
        return [base]
    n = len(analysis)
    if n == 0:
        base["quarantine"], base["error"] = "undecodable", "no frames decoded"
        return [base]
    grey = np.stack(analysis)
    base.update(width=width, height=height, fps=source.fps, n_frames=n, duration_s=n / source.fps)
    found = detect_cuts(grey, threshold=cuts.threshold) if cuts.threshold is not None and n > 1 else []
    segments = split_segments(n, found) if cuts.split else [(0, n)]
    rows = []
    transform = frame_transform(width, height, short_side=cfg.short_side, square=cfg.square)
    for k, (start, end) in enumerate(segments):
        row = dict(base, reasons=[], segment=k, segment_start=start, segment_end=end)
        if len(segments) > 1:
            row["id"], row["key"] = f"{raw['id']}~{k}", f"{raw['key']}~{k}"
        indices = sample_indices(end - start, frames=cfg.frames, stride=cfg.stride, start=start)
        if indices is None:
            row["reasons"] = ["too_short"]
            row["error"] = f"{end - start} frames in [{start}, {end}); a clip needs {cfg.span}"
            rows.append(row)
            continue
        row["scene_cuts"] = sum(1 for c in found if indices[0] < c <= indices[-1])
        row["frame_indices"] = indices
        row["motion_score"] = motion_score(grey[indices])
        rows.append(row)
    wanted = sorted({i for row in rows for i in (row["frame_indices"] or [])})
    if not wanted:
        return rows
    try:
        picked = source.pick(wanted)
        for row in rows:
            if row["frame_indices"]:
                row["frames"] = [encode_png(resize_frame(picked[i], transform)) for i in row["frame_indices"]]
                row["control"], row["control_kind"] = _control(
                    root, raw, row["frame_indices"], picked, transform, pose, annotator
                )
    except VideoDecodeError as exc:
        return [dict(base, quarantine=exc.reason, error=str(exc))]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        # A pose file that is missing or malformed: the record is broken, not the job.
        return [dict(base, quarantine="bad_schema", error=f"control for {raw['key']}: {exc}")]
    return rows


def to_table(rows: list[dict]) -> pa.Table:
    """Clip rows → an Arrow table with :data:`CLIP_SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def read_ingest(
    items: pa.Table, *, root: str, cfg: ClipConfig, cuts: CutPolicy, pose: PoseConfig, chunk: int,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen
) -> Iterator[pa.Table]:
    """Ray Data task: read each source of ``items`` and ingest its rows, yielding tables of up to ``chunk`` clips.
    ``root``: the input root, a directory or an object-store prefix (each source is then copied to a temporary
    directory first: one task, one source; the clip rows carry bytes, never paths into it)."""
    annotator = build_pose_annotator(pose) if pose.source == "annotator" else None
    rows: list[dict] = []
    for item in items.to_pylist():
        source = VideoSource(kind=item["kind"], path=item["path"], items=tuple(item["items"] or ()))
        with tempfile.TemporaryDirectory(prefix="alcm-video-source-") as tmp:
            local = localize(root, source, Path(tmp)) if storage.is_uri(root) else Path(root)
            for raw in read_video_source(local, source, max_bytes=cfg.max_bytes, limits=limits):
                rows.extend(ingest_row(local, raw, cfg, cuts, pose, annotator))
                if len(rows) >= chunk:
                    yield to_table(rows)
                    rows = []
    if rows:
        yield to_table(rows)


def discover_inputs(input_dir: str | Path, cfg: ClipConfig) -> tuple[str | Path, list[VideoSource], list[str]]:
    """The video sources under ``input_dir`` (a directory, a video file or a tar; or an object-store prefix or
    object) with the root they are read from and the files that are not inputs; raises naming the location when
    there is nothing to read."""
    sources, ignored = discover_videos(input_dir, chunk=cfg.chunk)
    if not sources:
        raise FileNotFoundError(f"input {input_dir}: no videos, tars or TikTok-style frame sequences found")
    return input_root(input_dir), sources, ignored


def source_items(sources: list[VideoSource]) -> list[dict]:
    """Sources as Ray Data items (what :func:`read_ingest` reads)."""
    return [{"kind": s.kind, "path": s.path, "items": list(s.items)} for s in sources]


def ingest_dataset(
    root: str | Path,
    sources: list[VideoSource],
    cfg: ClipConfig,
    *,
    cuts: CutPolicy,
    pose: PoseConfig,
    chunk: int,
    num_cpus: float,
    limits: ReadLimits = ReadLimits(),  # noqa: B008 - frozen
) -> ray.data.Dataset:
    """The clips of ``sources`` as a Ray dataset: one read+ingest task per source, yielding ``chunk`` clips a block
    (the calling job's batch size, so blocks stream to its actor pool while large sources are still read)."""
    items = source_items(sources)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(
        read_ingest,
        fn_kwargs={"root": str(root), "cfg": cfg, "cuts": cuts, "pose": pose, "chunk": chunk, "limits": limits},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )


def meta_json(value: dict) -> str:
    """Compact JSON for the ``meta``/``generation`` string columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def read_table(location: str | Path, columns: list[str]) -> pa.Table:
    """``columns`` of the Parquet files under ``location`` (a directory or an object-store prefix); an empty table
    of those columns when it holds none (a job that kept no clip writes no file)."""
    if not any(rel.endswith(".parquet") for rel, _ in storage.list_files(str(location))):
        return pa.table({c: [] for c in columns})
    fs, path = storage.filesystem(str(location))
    return pq.read_table(path, columns=columns, filesystem=fs)


def inputs_with_digests(root: str | Path, sources) -> list[dict]:
    """Manifest ``inputs``: each source with a content digest of what it read (the same for a directory and for an
    object-store prefix holding the same files)."""
    out = []
    for s in sources:
        if s.kind == "tar":
            out.append({"path": s.path, "kind": s.kind, "digest": _digest(root, s.path)})
        elif s.kind in ("video", "tiktok"):
            h = hashlib.sha256()
            for rel in _item_files(root, s.kind, s.items):
                try:  # a name that is not UTF-8 is hashed as its own bytes (surrogateescape)
                    h.update(f"{rel}\0{_digest(root, rel)}\n".encode("utf-8", "surrogateescape"))
                except OSError:
                    h.update(f"{rel}\0unreadable\n".encode("utf-8", "surrogateescape"))
            out.append({"path": s.path, "kind": s.kind, "items": len(s.items), "digest": "sha256:" + h.hexdigest()})
        else:
            out.append({"path": s.path, "kind": s.kind, "digest": None})
    return out


def _item_files(root: str | Path, kind: str, items: tuple[str, ...]) -> Iterator[str]:
    """The files of each item (a video file; every file under a sequence directory), relative to ``root``, in the
    order of a sorted local walk."""
    for rel in items:
        if not storage.is_uri(root):
            p = Path(root) / rel
            files = sorted(q for q in p.rglob("*") if q.is_file() and not q.is_symlink()) if p.is_dir() else [p]
            yield from (f.relative_to(root).as_posix() for f in files)
        elif kind == "tiktok":
            prefix = root if rel == "." else storage.join(root, rel)
            under = [PurePosixPath(rel, f).as_posix() for f, _ in storage.list_files(prefix)]
            yield from sorted(under, key=lambda f: PurePosixPath(f).parts)
        else:
            yield rel


def _digest(root: str | Path, rel: str) -> str:
    """``sha256:`` of the input file ``rel`` under ``root`` (a directory or an object-store prefix; a source's
    absolute local path as it is)."""
    if storage.is_uri(root):
        return "sha256:" + storage.sha256(storage.join(root, rel))
    return file_digest(Path(root) / rel)
