"""Text-video curation on Ray Data: read → ingest (sample, split at scene cuts) → score → decide → write + audit.

Stages and where they run:

1. **read + ingest** (Ray tasks, one per source chunk; :mod:`pipelines.video_ingest`): every input becomes one
   clip, or one per cut-free segment when ``curate_videos.filters.scene_cut`` is ``split``; frames sampled per
   ``video.*``, motion score and scene cuts computed on the way. Unreadable inputs are quarantined with their reason;
   segments or inputs shorter than a clip are rejected as ``too_short``, inputs past ``video.max_decode_frames``
   as ``too_long``.
2. **score + decide** (Ray Data actor pool, scorers loaded once per actor): watermark probability (max) and
   aesthetic score (mean) over the sampled frames at ``curate_videos.score_frames_at``, CLIP score of the middle
   sampled frame against the caption; then the video rule filters (:mod:`filters.video_rules`) list every failing
   reason: resolution, duration, caption, motion band, scene cut, watermark, aesthetic, CLIP.
3. **global** (driver): a key read again later is quarantined as ``duplicate_key``.
4. **write**: ``kept/*.parquet`` (kept clips with frame bytes and scores), ``audit/*.parquet`` (every clip, no
   frame bytes), then ``manifest.json``, all into a staging directory renamed into place at the end.

The input and the output may be object-store URIs (``s3://bucket/prefix``): sources are discovered from a listing
and each read task copies its one source to a temporary directory (:mod:`pipelines.video_ingest`); the tables are
written under the output's attempt prefix and committed by writing its manifest last (:mod:`contracts.publish`).

Invariant (checked before publishing): every input appears in the audit (``parent_id``), every clip once, and
kept + rejected + quarantined = clips.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from contracts import storage
from contracts.digests import rows_digest
from contracts.manifest import Manifest, code_version, files_map
from contracts.publish import staged_output
from contracts.reasons import KEPT, QUARANTINED, REJECTED, check_accounting
from filters.video_rules import VideoFilterConfig, apply_video_filters, video_filter_versions
from models.scorer_config import ScorersConfig
from models.video_io import decode_png
from pipelines import runtime
from pipelines.config import to_dict
from pipelines.data_config import RayConfig
from pipelines.recaption import candidate_positions
from pipelines.runtime import JobResult
from pipelines.safe_read import ReadLimits
from pipelines.stages import CurateVideosSettings
from pipelines.video_ingest import (
    CutPolicy,
    discover_inputs,
    ingest_dataset,
    inputs_with_digests,
    read_table,
)

log = logging.getLogger(__name__)

JOB = "curate_videos"
LIGHT_CPUS = 0.25
SCORE_COLUMNS = ("clip_score", "aesthetic_score", "watermark_prob")
SCORE_FIELDS = [
    ("decision", pa.string()),
    ("clip_score", pa.float32()),
    ("aesthetic_score", pa.float32()),
    ("watermark_prob", pa.float32()),
    ("duplicate_of", pa.string()),
]


def cut_policy(filters: VideoFilterConfig) -> CutPolicy:
    """Ingest's scene-cut handling for a filter config."""
    if filters.scene_cut == "split":
        return CutPolicy(split=True, threshold=filters.cut_threshold)
    elif filters.scene_cut == "reject":
        return CutPolicy(split=False, threshold=filters.cut_threshold)
    elif filters.scene_cut == "ignore":
        return CutPolicy(split=False, threshold=None)
    else:
        raise ValueError(f"scene_cut={filters.scene_cut!r}: choose split, reject or ignore")


class _VideoScoreActor:
    """Ray Data actor: loads the scorers once; scores the sampled frames of each clip, then applies the filters."""

    def __init__(self, scorers: ScorersConfig, filters: VideoFilterConfig, score_frames_at) -> None:
        from models.scorers import ImageTextScorer

        self.scorer = ImageTextScorer(scorers)
        self.filters = filters
        self.score_frames_at = tuple(score_frames_at)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        for r in rows:
            r.update({c: None for c in SCORE_COLUMNS}, duplicate_of=None)
        judged = [r for r in rows if r["quarantine"] is None and not r["reasons"]]
        images, captions, owners = [], [], []
        for j, r in enumerate(judged):
            n = len(r["frames"])
            for p in [*candidate_positions(n, self.score_frames_at), n // 2]:
                images.append(decode_png(r["frames"][p]))
                captions.append(r["caption"] or "")
                owners.append(j)
        if images:
            scores = self.scorer.score(images, captions)
            owners_arr = np.asarray(owners)
            for j, r in enumerate(judged):
                at = np.flatnonzero(owners_arr == j)
                r["watermark_prob"] = float(scores["watermark_prob"][at[:-1]].max())
                r["aesthetic_score"] = float(scores["aesthetic_score"][at[:-1]].mean())
                r["clip_score"] = float(scores["clip_score"][at[-1]])
        if judged:
            batch = {
                "caption": np.array([r["caption"] for r in judged], dtype=object),
                "width": np.array([r["width"] for r in judged], dtype=np.int64),
                "height": np.array([r["height"] for r in judged], dtype=np.int64),
                "scene_cuts": np.array([r["scene_cuts"] or 0 for r in judged], dtype=np.int64),
            }
            for c in ("duration_s", "motion_score", *SCORE_COLUMNS):
                batch[c] = np.array([np.nan if r[c] is None else r[c] for r in judged], dtype=np.float64)
            for r, reasons in zip(judged, apply_video_filters(batch, self.filters), strict=True):
                r["reasons"] = reasons
        for r in rows:
            if r["quarantine"] is not None:
                r["decision"], r["reasons"] = QUARANTINED, [r["quarantine"]]
            else:
                r["decision"] = REJECTED if r["reasons"] else KEPT
        schema = pa.schema(list(table.schema) + [pa.field(n, t) for n, t in SCORE_FIELDS])
        return pa.Table.from_pylist(rows, schema=schema)


def duplicate_key_updates(meta: list[dict]) -> dict[str, str]:
    """id → error for every judged clip whose key was already read by an earlier clip (in id order)."""
    first: dict[str, str] = {}
    updates = {}
    for row in sorted(meta, key=lambda r: r["id"]):
        if row["decision"] == QUARANTINED:
            continue
        if row["key"] in first:
            updates[row["id"]] = f"key {row['key']!r} already read as {first[row['key']]}"
        else:
            first[row["key"]] = row["id"]
    return updates


def _apply_duplicate_keys(table: pa.Table, *, updates: dict[str, str]) -> pa.Table:
    if not updates:
        return table
    ids = table.column("id").to_pylist()
    cols = {name: table.column(name).to_pylist() for name in ("decision", "reasons", "error")}
    for i, rid in enumerate(ids):
        if rid in updates:
            cols["decision"][i], cols["reasons"][i], cols["error"][i] = QUARANTINED, ["duplicate_key"], updates[rid]
    for name, values in cols.items():
        table = table.set_column(
            table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type)
        )
    return table


KEPT_COLUMNS = [
    "key",
    "caption",
    "frames",
    "frame_indices",
    "control",
    "control_kind",
    "fps",
    "width",
    "height",
    "n_frames",
    "duration_s",
    "segment",
    "motion_score",
    *SCORE_COLUMNS,
    "source",
    "id",
    "parent_id",
]
"""Columns of ``kept/*.parquet``."""


def run(cfg: CurateVideosSettings, input_dir: str | Path, output_dir: str | Path, *,
        ray_config: RayConfig | None = None, overwrite: bool = False) -> JobResult:  # fmt: skip
    """Curate the text-video inputs under ``input_dir`` into ``output_dir`` (see the module docstring).
    ``ray_config``: how to reach Ray (default: a local Ray)."""
    t0 = time.monotonic()
    input_dir, output_dir = runtime.input_location(input_dir), runtime.input_location(output_dir)
    root, sources, ignored = discover_inputs(input_dir, cfg.video)
    with staged_output(output_dir, overwrite=overwrite) as out:
        return _run(cfg, ray_config or RayConfig(), input_dir, root, output_dir, out, sources, ignored, t0)


def _run(cfg: CurateVideosSettings, ray_cfg: RayConfig, input_dir, root, output_dir, out, sources, ignored,
         t0) -> JobResult:  # fmt: skip
    staging = out.location  # written where every node can write: the object-store attempt prefix, or the staging dir
    vc = cfg.curate_videos
    timings: dict[str, float] = {}
    log.info("curating videos: %d sources under %s (%d other files ignored)", len(sources), input_dir, len(ignored))
    runtime.connect(ray_cfg)
    ds = ingest_dataset(
        root,
        sources,
        cfg.video,
        cuts=cut_policy(vc.filters),
        pose=cfg.pose,
        chunk=vc.batch_size,
        limits=ReadLimits.of(cfg.decode),
        num_cpus=vc.ingest_cpus,
    )
    ds = ds.map_batches(
        _VideoScoreActor,
        fn_constructor_kwargs={"scorers": cfg.scorers, "filters": vc.filters, "score_frames_at": vc.score_frames_at},
        batch_size=vc.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=vc.scorer_actors),
        num_cpus=vc.scorer_cpus,
        num_gpus=vc.scorer_gpus,
    )
    ds = ds.materialize()
    timings["ingest_score_decide_s"] = time.monotonic() - t0
    t = time.monotonic()
    meta = ds.select_columns(["id", "key", "decision"], num_cpus=LIGHT_CPUS).take_all()
    updates = duplicate_key_updates(meta)
    ds = ds.map_batches(_apply_duplicate_keys, fn_kwargs={"updates": updates}, batch_format="pyarrow",
                        num_cpus=LIGHT_CPUS)  # fmt: skip
    light = {"num_cpus": LIGHT_CPUS}
    kept = ds.filter(expr=f"decision == '{KEPT}'", num_cpus=LIGHT_CPUS).select_columns(
        KEPT_COLUMNS, num_cpus=LIGHT_CPUS
    )
    kept.write_parquet(out.path("kept"), max_rows_per_file=vc.rows_per_file, ray_remote_args=light)
    audit = ds.drop_columns(["frames", "control"], num_cpus=LIGHT_CPUS)
    audit.write_parquet(out.path("audit"), max_rows_per_file=vc.rows_per_file, ray_remote_args=light)
    timings["write_s"] = time.monotonic() - t
    manifest = _manifest(cfg, input_dir, root, staging, sources, ignored, timings=timings, t0=t0)
    manifest.files = files_map(staging, ("kept", "audit"))
    out.commit(manifest)
    counts = manifest.counts
    log.info("curated %d inputs (%d clips) → %s: %s", counts["input"], counts["clips"], output_dir,
             counts["by_decision"])  # fmt: skip
    for reason, count in sorted(counts["by_reason"].items()):
        log.info("  %-22s %d", reason, count)
    return JobResult(output=output_dir, manifest=manifest.to_dict())


def _manifest(cfg: CurateVideosSettings, input_dir, root, staging, sources, ignored, *, timings, t0) -> Manifest:
    audit = read_table(storage.join(staging, "audit"), ["id", "parent_id", "key", "decision", "reasons"])
    kept = read_table(storage.join(staging, "kept"), ["key", "caption", "frame_indices"])
    decisions = check_accounting(audit.column("id").to_pylist(), audit.column("decision").to_pylist(),
                                 kept.column("key").to_pylist())  # fmt: skip
    reasons = Counter(r for rs in audit.column("reasons").to_pylist() for r in rs)
    digest = rows_digest(zip(*(kept.column(c).to_pylist() for c in ["key", "caption", "frame_indices"]), strict=True))
    timings["total_s"] = time.monotonic() - t0
    return Manifest.from_dict({
        "kind": "text-video-dataset",
        "job": JOB,
        "stage": JOB,
        "profile": cfg.profile,
        "name": cfg.curate_videos.dataset_name,
        "version": digest.split(":")[1][:12],
        "digest": digest,
        "counts": {
            "input": len(set(audit.column("parent_id").to_pylist())),
            "clips": audit.num_rows,
            "by_decision": {d: decisions.get(d, 0) for d in (KEPT, REJECTED, QUARANTINED)},
            "by_reason": dict(sorted(reasons.items())),
        },
        "input_root": str(input_dir),
        "inputs": inputs_with_digests(root, sources),
        "ignored_files": ignored,
        "outputs": {"kept": "kept/", "audit": "audit/"},
        "filters": video_filter_versions(),
        "config": to_dict(cfg),
        "code_version": code_version(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.curate_videos --input DIR --output DIR [--config PROFILE|JSON] [--set k=v ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.curate_videos",
        doc=__doc__,
        input_help="directory of videos, tars or frame sequences",
        output_help="new directory for kept/, audit/, manifest.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
