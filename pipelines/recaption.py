"""Recaptioning on Ray Data: video clips (TikTok-style sequences, video files, webdataset tars) → BLIP captions.

Stages and where they run:

1. **read + ingest** (Ray tasks, one per source chunk): raw rows (:mod:`pipelines.video_sources`) → sampled clips
   with PNG frames and, for TikTok-style sequences with ``pose/`` JSON, OpenPose-style control frames
   (:mod:`pipelines.video_ingest`). Unreadable inputs are quarantined with their reason; inputs shorter than a clip
   are rejected as ``too_short`` (longer than ``video.max_decode_frames``: ``too_long``).
2. **caption** (Ray Data actor pool; the captioner, and the CLIP model when aggregating by CLIP score, loaded once
   per actor): a candidate caption for each frame at ``recaption.frames_at`` of the sampled clip, then one caption
   chosen by ``recaption.aggregation``.
3. **write**: ``captioned/*.parquet`` (captioned clips: frames, control frames, caption, every candidate with its
   frame index and CLIP score, the model id and the generation settings), ``audit/*.parquet`` (every clip, no
   frame bytes: decision, reasons, error), then ``manifest.json``; all into a staging directory renamed into
   place at the end.

The input and the output may be object-store URIs (``s3://bucket/prefix``): sources are discovered from a listing
and each read task copies its one source to a temporary directory (:mod:`pipelines.video_ingest`); the tables are
written under the output's attempt prefix and committed by writing its manifest last (:mod:`contracts.publish`).

Every input row is accounted for: each appears in the audit (as one clip, or one per scene-cut segment when the
input was split), and captioned + rejected + quarantined clips = audit rows (checked before publishing).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import ray

from contracts import storage
from contracts.digests import rows_digest
from contracts.manifest import Manifest, code_version, files_map
from contracts.publish import staged_output
from contracts.reasons import KEPT, QUARANTINED, REJECTED, check_accounting
from models.captioner_config import CaptionerConfig
from models.scorer_config import ScorersConfig
from models.video_io import decode_png
from pipelines import runtime
from pipelines.config import to_dict
from pipelines.data_config import RayConfig
from pipelines.runtime import JobResult
from pipelines.safe_read import ReadLimits
from pipelines.stages import RecaptionSettings
from pipelines.video_ingest import (
    CutPolicy,
    discover_inputs,
    ingest_dataset,
    inputs_with_digests,
    meta_json,
    read_table,
)

log = logging.getLogger(__name__)

JOB = "recaption"
LIGHT_CPUS = 0.25
CAPTION_FIELDS = [
    ("decision", pa.string()),
    ("caption_candidates", pa.list_(pa.string())),
    ("caption_scores", pa.list_(pa.float32())),
    ("caption_frames", pa.list_(pa.int32())),
    ("caption_model", pa.string()),
    ("generation", pa.string()),
    ("source_caption", pa.string()),
]
"""Columns the captioning stage adds; ``caption`` itself is replaced by the chosen candidate."""


def candidate_positions(n: int, frames_at: tuple[float, ...]) -> list[int]:
    """Positions (0..n-1) in a sampled clip of ``n`` frames for fractions ``frames_at`` (duplicates removed)."""
    out: list[int] = []
    for f in frames_at:
        pos = int(round(f * (n - 1)))
        if pos not in out:
            out.append(pos)
    return out


def aggregate(candidates: list[str], positions: list[int], n: int, scores: list[float] | None, method: str) -> int:
    """Index of the chosen candidate (see ``RecaptionConfig.aggregation``)."""
    if not candidates:
        raise ValueError("aggregate: no candidates")
    middle = (n - 1) / 2
    nearest = sorted(range(len(candidates)), key=lambda i: (abs(positions[i] - middle), i))
    if method == "first":
        return 0
    elif method == "clip_best":
        if scores is None:
            raise ValueError("aggregation clip_best needs CLIP scores")
        best = max(scores)
        return next(i for i in nearest if scores[i] == best)
    elif method == "most_common":
        counts = Counter(candidates)
        top = max(counts.values())
        return next(i for i in nearest if counts[candidates[i]] == top)
    else:
        raise ValueError(f"aggregation {method!r}: choose clip_best, first or most_common")


class CaptionActor:
    """Ray Data actor: loads the captioner (and CLIP for ``clip_best``) once, captions each batch of clips."""

    def __init__(self, captioner: CaptionerConfig, scorers: ScorersConfig, frames_at, aggregation: str) -> None:
        from models.captioner import build_captioner

        self.captioner = build_captioner(captioner)
        self.frames_at = tuple(frames_at)
        self.aggregation = aggregation
        self.generation = meta_json(to_dict(captioner.generation))
        self.clip = None
        if aggregation == "clip_best":
            from models.scorers import ClipScorer

            self.clip = ClipScorer(scorers)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        todo = [r for r in rows if r["quarantine"] is None and not r["reasons"]]
        images, owners, positions = [], [], {}
        for r in todo:
            pos = candidate_positions(len(r["frames"]), self.frames_at)
            positions[r["id"]] = pos
            for p in pos:
                images.append(decode_png(r["frames"][p]))
                owners.append(r["id"])
        captions = self.captioner.generate(images) if images else []
        by_id: dict[str, list[str]] = {}
        for owner, caption in zip(owners, captions, strict=True):
            by_id.setdefault(owner, []).append(caption)
        for r in rows:
            r["source_caption"] = r["caption"]
            if r["quarantine"] is not None:
                r["decision"], r["reasons"] = QUARANTINED, [r["quarantine"]]
                continue
            if r["reasons"]:
                r["decision"] = REJECTED
                continue
            cands, pos = by_id[r["id"]], positions[r["id"]]
            scores = None
            if self.clip is not None:
                middle = decode_png(r["frames"][len(r["frames"]) // 2])
                image = self.clip.image_embeddings([middle])[0]
                # Identical candidates must get identical scores: embed each distinct text once.
                distinct = sorted(set(cands))
                by_text = dict(zip(distinct, self.clip.text_embeddings(distinct) @ image, strict=True))
                scores = [float(100.0 * by_text[c]) for c in cands]
            choice = aggregate(cands, pos, len(r["frames"]), scores, self.aggregation)
            r.update(
                decision=KEPT,
                caption=cands[choice],
                caption_candidates=cands,
                caption_scores=scores,
                caption_frames=[r["frame_indices"][p] for p in pos],
                caption_model=self.captioner.model_id,
                generation=self.generation,
            )
        schema = pa.schema(list(table.schema) + [pa.field(n, t) for n, t in CAPTION_FIELDS])
        return pa.Table.from_pylist(rows, schema=schema)


CAPTIONED_COLUMNS = [
    "key",
    "caption",
    "caption_candidates",
    "caption_scores",
    "caption_frames",
    "caption_model",
    "generation",
    "source_caption",
    "frames",
    "frame_indices",
    "control",
    "control_kind",
    "fps",
    "width",
    "height",
    "n_frames",
    "motion_score",
    "source",
    "id",
    "parent_id",
]
"""Columns of ``captioned/*.parquet``."""


def run(cfg: RecaptionSettings, input_dir: str | Path, output_dir: str | Path, *,
        ray_config: RayConfig | None = None, overwrite: bool = False) -> JobResult:  # fmt: skip
    """Recaption the clips under ``input_dir`` into ``output_dir`` (see the module docstring). ``ray_config``: how to
    reach Ray (default: a local Ray)."""
    t0 = time.monotonic()
    input_dir, output_dir = runtime.input_location(input_dir), runtime.input_location(output_dir)
    root, sources, ignored = discover_inputs(input_dir, cfg.video)
    with staged_output(output_dir, overwrite=overwrite) as out:
        return _run(cfg, ray_config or RayConfig(), input_dir, root, output_dir, out, sources, ignored, t0)


def _run(cfg: RecaptionSettings, ray_cfg: RayConfig, input_dir, root, output_dir, out, sources, ignored,
         t0) -> JobResult:  # fmt: skip
    staging = out.location  # written where every node can write: the object-store attempt prefix, or the staging dir
    rc = cfg.recaption
    timings: dict[str, float] = {}
    log.info("recaptioning %d sources under %s with %s (%s)", len(sources), input_dir, cfg.captioner.name,
             cfg.captioner.backend)  # fmt: skip
    runtime.connect(ray_cfg)
    ds = ingest_dataset(
        root,
        sources,
        cfg.video,
        cuts=CutPolicy(split=False, threshold=None),
        pose=cfg.pose,
        chunk=rc.batch_size,
        limits=ReadLimits.of(cfg.decode),
        num_cpus=rc.ingest_cpus,
    )
    ds = ds.map_batches(
        CaptionActor,
        fn_constructor_kwargs={
            "captioner": cfg.captioner,
            "scorers": cfg.scorers,
            "frames_at": rc.frames_at,
            "aggregation": rc.aggregation,
        },
        batch_size=rc.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=rc.actors),
        num_cpus=rc.actor_cpus,
        num_gpus=rc.actor_gpus,
    )
    ds = ds.materialize()
    timings["ingest_caption_s"] = time.monotonic() - t0
    t = time.monotonic()
    light = {"num_cpus": LIGHT_CPUS}
    kept = ds.filter(expr=f"decision == '{KEPT}'", num_cpus=LIGHT_CPUS).select_columns(
        CAPTIONED_COLUMNS, num_cpus=LIGHT_CPUS
    )
    kept.write_parquet(out.path("captioned"), max_rows_per_file=rc.rows_per_file, ray_remote_args=light)
    audit = ds.drop_columns(["frames", "control"], num_cpus=LIGHT_CPUS)
    audit.write_parquet(out.path("audit"), max_rows_per_file=rc.rows_per_file, ray_remote_args=light)
    timings["write_s"] = time.monotonic() - t
    manifest = _manifest(cfg, input_dir, root, staging, sources, ignored, timings=timings, t0=t0)
    manifest.files = files_map(staging, ("captioned", "audit"))
    out.commit(manifest)
    counts = manifest.counts
    log.info("recaptioned %d inputs (%d clips) → %s: %s", counts["input"], counts["clips"], output_dir,
             counts["by_decision"])  # fmt: skip
    return JobResult(output=output_dir, manifest=manifest.to_dict())


def _manifest(cfg: RecaptionSettings, input_dir, root, staging, sources, ignored, *, timings, t0) -> Manifest:
    audit = read_table(storage.join(staging, "audit"), ["id", "parent_id", "key", "decision", "reasons"])
    kept = read_table(storage.join(staging, "captioned"), ["key", "caption", "frame_indices", "parent_id"])
    decisions = check_accounting(audit.column("id").to_pylist(), audit.column("decision").to_pylist(),
                                 kept.column("key").to_pylist())  # fmt: skip
    reasons = Counter(r for rs in audit.column("reasons").to_pylist() for r in rs)
    parents = set(audit.column("parent_id").to_pylist())
    captions = Counter(kept.column("caption").to_pylist())
    digest = rows_digest(zip(*(kept.column(c).to_pylist() for c in ["key", "caption", "frame_indices"]), strict=True))
    timings["total_s"] = time.monotonic() - t0
    return Manifest.from_dict({
        "kind": "captioned-video-dataset",
        "job": JOB,
        "stage": JOB,
        "profile": cfg.profile,
        "name": cfg.recaption.dataset_name,
        "version": digest.split(":")[1][:12],
        "digest": digest,
        "counts": {
            "input": len(parents),
            "clips": audit.num_rows,
            "by_decision": {d: decisions.get(d, 0) for d in (KEPT, REJECTED, QUARANTINED)},
            "by_reason": dict(sorted(reasons.items())),
            "distinct_captions": len(captions),
        },
        "captioner": {
            "backend": cfg.captioner.backend,
            "name": cfg.captioner.name,
            "generation": to_dict(cfg.captioner.generation),
            "frames_at": list(cfg.recaption.frames_at),
            "aggregation": cfg.recaption.aggregation,
        },
        "input_root": str(input_dir),
        "inputs": inputs_with_digests(root, sources),
        "ignored_files": ignored,
        "outputs": {"captioned": "captioned/", "audit": "audit/"},
        "config": to_dict(cfg),
        "code_version": code_version(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.recaption --input DIR --output DIR [--config PROFILE|JSON] [--set k=v ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.recaption",
        doc=__doc__,
        input_help="directory of videos/tars/TikTok sequences",
        output_help="new directory for captioned/, audit/, manifest",
    )


if __name__ == "__main__":
    raise SystemExit(main())
