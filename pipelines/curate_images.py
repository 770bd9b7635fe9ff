"""Image-text curation on Ray Data: read → decode → score → decide → deduplicate → write kept + audit + manifest.

Stages and where they run:

1. **read + decode** (Ray tasks, one per source, streaming chunks of ``batch_size`` rows): every input row becomes
   one raw row (:mod:`pipelines.sources`; rows that cannot be read are quarantined with their reason), then safe
   decoding (:mod:`filters.decode`) → width, height, format, mode, sha256, perceptual hash and a thumbnail for the
   scorers; undecodable/oversized rows are quarantined.
2. **score + decide** (Ray Data actor pool): CLIP image-text score, aesthetic score and watermark probability
   (:class:`models.scorers.ImageTextScorer`), the models loaded once per actor; then the rule filters
   (:mod:`filters.rules`) list every failing reason per row. Every decodable row is scored, so the audit holds
   every score of every row, including rows that a cheap filter rejects anyway.
3. **global decisions** (driver, over a few columns of every row, gathered once): duplicate keys (the later row in
   reading order is quarantined as ``duplicate_key``); then the top-percent filters, when
   ``curate_images.filters.clip_top_percent`` / ``aesthetic_top_percent`` are set (:mod:`filters.percentile`: the
   threshold is the k-th highest score, k = ceil(N · P / 100), over the N judged rows with a score, ties kept;
   rows below it get ``below_clip_percentile`` / ``below_aesthetic_percentile``; the manifest's ``percentiles``
   records percent, population and threshold); then exact and near duplicates among all judged rows
   (:mod:`filters.dedup`): in each group one representative (a row that passed every filter, percentiles
   included, if there is one) stays, every other member gets ``duplicate`` added to its reasons with the
   representative's key in ``duplicate_of`` — so a copy of a rejected row says so too.
4. **write**: ``kept/*.parquet`` (kept rows with image bytes and scores), ``audit/*.parquet`` (every input row,
   no image bytes), then ``manifest.json``; all into a staging directory renamed into place at the end, so a
   failed run leaves no partial dataset visible.

Invariant (checked before publishing, raising if broken): kept + rejected + quarantined = rows read; audit ids
are unique; kept keys are unique.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from contracts import storage
from contracts.digests import file_digest, rows_digest
from contracts.manifest import Manifest, code_version, files_map
from contracts.publish import staged_output
from contracts.reasons import KEPT, QUARANTINED, REJECTED
from filters.decode import DecodeConfig, decode_image, thumbnail_array
from filters.dedup import find_duplicates
from filters.percentile import PERCENTILE_FILTERS, PercentileCut, apply_percentiles, enabled, percentile_versions
from filters.rules import FilterConfig, apply_filters, filter_versions
from models.scorer_config import ScorersConfig
from pipelines import runtime
from pipelines.config import to_dict
from pipelines.data_config import RayConfig
from pipelines.runtime import JobResult
from pipelines.sources import ReadLimits, Source, discover, input_root, localize, read_source
from pipelines.stages import CurateImagesSettings

log = logging.getLogger(__name__)

JOB = "curate_images"
#: CPUs reserved by the light bookkeeping stages (projection, global updates, writes): they must not wait for the
#: scorer actors, which may still hold their CPUs while the pool shuts down.
LIGHT_CPUS = 0.5
SCORE_COLUMNS = ("clip_score", "aesthetic_score", "watermark_prob")

AUDIT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("decision", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("duplicate_of", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("clip_score", pa.float32()),
        ("aesthetic_score", pa.float32()),
        ("watermark_prob", pa.float32()),
    ]
)
#: Columns carried between stages but not in the audit.
_WORK_FIELDS = [
    ("image", pa.binary()),
    ("decodable", pa.bool_()),
    ("quarantine", pa.string()),
    ("_pixels", pa.binary()),
    ("_pixels_w", pa.int32()),
    ("_pixels_h", pa.int32()),
]


# ------------------------------------------------------------------------------------------------ stages


def read_decode(items: pa.Table, *, root: str, cfg: DecodeConfig, chunk: int) -> Iterator[pa.Table]:
    """Read each source of ``items`` and decode its rows, yielding decoded tables of up to ``chunk`` rows.

    Reading and decoding share one task so raw bytes are not shipped between processes twice; yielding chunks
    streams blocks to the scorers while the rest of a large shard is still being read.
    """
    for item in items.to_pylist():
        source = Source(kind=item["kind"], path=item["path"], files=tuple(item["files"] or ()))
        with tempfile.TemporaryDirectory(prefix="alcm-source-") as tmp:
            # An object-store source is copied here first (one task, one shard): the readers take local files.
            local = localize(root, source, Path(tmp)) if storage.is_uri(root) else Path(root)
            rows: list[dict] = []
            for row in read_source(local, source, max_bytes=cfg.max_bytes, limits=ReadLimits.of(cfg)):
                rows.append(row)
                if len(rows) == chunk:
                    yield decode_rows(pa.Table.from_pylist(rows), cfg=cfg)
                    rows = []
            if rows:
                yield decode_rows(pa.Table.from_pylist(rows), cfg=cfg)


def decode_rows(batch: pa.Table, *, cfg: DecodeConfig) -> pa.Table:
    rows = batch.to_pylist()
    n = len(rows)
    cols: dict[str, list] = {name: [None] * n for name in AUDIT_SCHEMA.names}
    work: dict[str, list] = {
        "image": [None] * n,
        "decodable": [False] * n,
        "quarantine": [None] * n,
        "_pixels": [None] * n,
        "_pixels_w": [None] * n,
        "_pixels_h": [None] * n,
    }
    for i, row in enumerate(rows):
        for name in ("id", "key", "source", "url", "caption", "error"):
            cols[name][i] = row.get(name)
        work["image"][i] = row.get("image")
        quarantine = row.get("quarantine")
        if quarantine is None:
            d = decode_image(row.get("image"), cfg)
            cols["width"][i], cols["height"][i] = (d.width or None), (d.height or None)
            cols["format"][i] = d.format
            if d.ok:
                cols["mode"][i], cols["sha256"][i], cols["phash"][i] = d.mode, d.sha256, f"{d.phash:016x}"
                work["decodable"][i] = True
                work["_pixels"][i] = d.thumbnail
                work["_pixels_w"][i], work["_pixels_h"][i] = d.thumbnail_size
            else:
                quarantine, cols["error"][i] = d.reason, d.error
        work["quarantine"][i] = quarantine
    arrays = [pa.array(cols[f.name], type=f.type) for f in AUDIT_SCHEMA] + [
        pa.array(work[name], type=tp) for name, tp in _WORK_FIELDS
    ]
    return pa.Table.from_arrays(
        arrays, schema=pa.schema(list(AUDIT_SCHEMA) + [pa.field(n, t) for n, t in _WORK_FIELDS])
    )


class ScoreActor:
    """Ray Data actor: loads the scorers once; scores the decodable rows of each batch, then applies the rules.

    The rule filters run here rather than in a task of their own: they cost microseconds a row, and a separate
    stage would ship every block through the object store once more.
    """

    def __init__(self, scorers: ScorersConfig, filters: FilterConfig) -> None:
        from models.scorers import ImageTextScorer

        self.scorer = ImageTextScorer(scorers)
        self.filters = filters

    def __call__(self, table: pa.Table) -> pa.Table:
        decodable = table.column("decodable").to_pylist()
        idx = [i for i, ok in enumerate(decodable) if ok]
        pixels = table.column("_pixels").to_pylist()
        widths, heights = table.column("_pixels_w").to_pylist(), table.column("_pixels_h").to_pylist()
        captions = table.column("caption").to_pylist()
        full = {c: np.full(table.num_rows, np.nan, dtype=np.float32) for c in SCORE_COLUMNS}
        if idx:
            images = [thumbnail_array(pixels[i], widths[i], heights[i]) for i in idx]
            scores = self.scorer.score(images, ["" if captions[i] is None else captions[i] for i in idx])
            for c in SCORE_COLUMNS:
                full[c][idx] = np.asarray(scores[c], dtype=np.float32)
        for c in SCORE_COLUMNS:
            pos = table.schema.get_field_index(c)
            arr = pa.array(full[c], type=pa.float32(), mask=np.isnan(full[c]))
            table = table.set_column(pos, c, arr)
        return decide(table.drop_columns(["_pixels", "_pixels_w", "_pixels_h"]), cfg=self.filters)


def decide(table: pa.Table, *, cfg: FilterConfig) -> pa.Table:
    batch = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in ("key", "caption", "width", "height", "decodable", *SCORE_COLUMNS)
    }
    for c in ("width", "height"):
        batch[c] = np.nan_to_num(batch[c].astype(np.float64), nan=0).astype(np.int64)
    for c in SCORE_COLUMNS:
        batch[c] = batch[c].astype(np.float64)
    reasons = apply_filters(batch, cfg)
    quarantine = table.column("quarantine").to_pylist()
    decisions = []
    for i, q in enumerate(quarantine):
        if q is not None:
            reasons[i] = [q]
            decisions.append(QUARANTINED)
        else:
            decisions.append(REJECTED if reasons[i] else KEPT)
    table = table.set_column(table.schema.get_field_index("decision"), "decision", pa.array(decisions, pa.string()))
    return table.set_column(
        table.schema.get_field_index("reasons"), "reasons", pa.array(reasons, pa.list_(pa.string()))
    )


class Update(NamedTuple):
    """One row's global decision: its new decision, the reasons it adds, and for duplicates the kept row's key."""

    decision: str
    reasons: tuple[str, ...]
    duplicate_of: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class GlobalDecisions:
    """What the driver's global step decided: per-row updates (by id) and each enabled percentile filter's cut."""

    updates: dict[str, Update]
    percentiles: dict[str, PercentileCut] = field(default_factory=dict)


#: Columns of every row the global step gathers on the driver (plus the score of each enabled percentile filter).
META_COLUMNS = ["id", "key", "decision", "sha256", "phash", "width", "height"]


def meta_columns(cfg: CurateImagesSettings) -> list[str]:
    """:data:`META_COLUMNS` and the score columns the enabled percentile filters rank."""
    return META_COLUMNS + [f.score for f in enabled(cfg.curate_images.filters)]


def apply_global(table: pa.Table, *, updates: dict[str, Update]) -> pa.Table:
    """Apply the driver's global decisions (id → :class:`Update`): a quarantine replaces the row's reasons, a
    rejection adds its reasons after the row's own."""
    if not updates:
        return table
    ids = table.column("id").to_pylist()
    decision = table.column("decision").to_pylist()
    reasons = table.column("reasons").to_pylist()
    dup = table.column("duplicate_of").to_pylist()
    error = table.column("error").to_pylist()
    for i, rid in enumerate(ids):
        u = updates.get(rid)
        if u is None:
            continue
        decision[i], dup[i] = u.decision, u.duplicate_of
        reasons[i] = list(u.reasons) if u.decision == QUARANTINED else [*reasons[i], *u.reasons]
        error[i] = u.error if u.error is not None else error[i]
    for name, values, tp in (
        ("decision", decision, pa.string()),
        ("reasons", reasons, pa.list_(pa.string())),
        ("duplicate_of", dup, pa.string()),
        ("error", error, pa.string()),
    ):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, tp))
    return table


def global_decisions(meta: pd.DataFrame, cfg: CurateImagesSettings) -> GlobalDecisions:
    """Duplicate keys, then the top-percent filters, then exact/near duplicates among judged rows (see the module
    docstring). ``meta`` holds :func:`meta_columns` of every row."""
    updates: dict[str, Update] = {}
    judged = meta[meta["decision"] != QUARANTINED].sort_values("id")
    first_id: dict[str, str] = {}
    for rid, key in zip(judged["id"], judged["key"], strict=True):
        if key in first_id:
            updates[rid] = Update(QUARANTINED, ("duplicate_key",), None, f"key {key!r} already read as {first_id[key]}")
        else:
            first_id[key] = rid
    rows = judged[~judged["id"].isin(updates.keys())]
    filters = cfg.curate_images.filters
    scores = {f.score: rows[f.score].to_numpy(np.float64) for f in enabled(filters)}
    below, cuts = apply_percentiles(scores, filters, rows=len(rows))
    for rid, reasons in zip(rows["id"], below, strict=True):
        if reasons:
            updates[rid] = Update(REJECTED, tuple(reasons))
    dups = find_duplicates(
        ids=rows["id"].tolist(),
        keys=rows["key"].tolist(),
        sha256=rows["sha256"].tolist(),
        phash=[int(h, 16) for h in rows["phash"]],
        pixels=(rows["width"].astype(np.int64) * rows["height"].astype(np.int64)).tolist(),
        cfg=cfg.curate_images.dedup,
        # A group's representative is a row that passed every filter, the percentile filters included, if it can be.
        preferred=[d == KEPT and not r for d, r in zip(rows["decision"], below, strict=True)],
    )
    for rid, kept_key in dups.items():
        earlier = updates[rid].reasons if rid in updates else ()
        updates[rid] = Update(REJECTED, (*earlier, "duplicate"), kept_key)
    for name, cut in cuts.items():
        log.info("%s: top %g%% of %d scored rows by %s: threshold %s; %d rows below it (%s)", name, cut.percent,
                 cut.population, cut.score, cut.threshold, cut.below, cut.reason)  # fmt: skip
    return GlobalDecisions(updates, cuts)


# ------------------------------------------------------------------------------------------------ job


def run(cfg: CurateImagesSettings, input_dir: Path, output_dir: Path, *,
        ray_config: RayConfig | None = None, overwrite: bool = False) -> JobResult:  # fmt: skip
    """Curate the image-text rows under ``input_dir`` into ``output_dir`` (see the module docstring).
    ``ray_config``: how to reach Ray (default: a local Ray)."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    input_dir, output_dir = _location(input_dir), _location(output_dir)
    cur = cfg.curate_images
    sources, ignored = discover(input_dir, folder_chunk=cur.folder_chunk)
    if not sources:
        raise FileNotFoundError(f"input {input_dir}: no .parquet, .tar or image files found")
    with staged_output(output_dir, overwrite=overwrite) as out:
        return _run(cfg, ray_config or RayConfig(), input_dir, output_dir, out, sources, ignored, timings, t0)


def _location(where: str | Path) -> str | Path:
    """A URI as given, a local path resolved (a URI never becomes a Path: ``contracts.storage``)."""
    return storage.normalize(where) if storage.is_uri(where) else Path(where).resolve()


def _run(cfg, ray_cfg, input_dir, output_dir, out, sources, ignored, timings, t0) -> JobResult:
    cur = cfg.curate_images
    root = input_root(input_dir)
    log.info("curating %d sources under %s (%d other files ignored)", len(sources), input_dir, len(ignored))
    runtime.connect(ray_cfg)
    items = [{"kind": s.kind, "path": s.path, "files": list(s.files)} for s in sources]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_decode,
        fn_kwargs={"root": str(root), "cfg": cfg.decode, "chunk": cur.batch_size},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cur.decode_cpus,
    )
    ds = ds.map_batches(
        ScoreActor,
        fn_constructor_kwargs={"scorers": cfg.scorers, "filters": cur.filters},
        batch_size=cur.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cur.scorer_actors),
        num_cpus=cur.scorer_cpus,
        num_gpus=cur.scorer_gpus,
    )
    ds = ds.materialize()
    timings["read_decode_score_decide_s"] = time.monotonic() - t0

    t = time.monotonic()
    # The one global pass: dedup's columns and the percentile filters' scores of every row, from the materialised
    # blocks (no second read of the input).
    meta = ds.select_columns(meta_columns(cfg), num_cpus=LIGHT_CPUS).to_pandas()
    timings["collect_dedup_columns_s"] = time.monotonic() - t
    t = time.monotonic()
    decided = global_decisions(meta, cfg)
    # Not materialised again: each of the two writes below applies the updates to the materialised blocks.
    ds = ds.map_batches(apply_global, fn_kwargs={"updates": decided.updates}, batch_format="pyarrow",
                        num_cpus=LIGHT_CPUS)  # fmt: skip
    ds = ds.drop_columns(["decodable", "quarantine"], num_cpus=LIGHT_CPUS)
    timings["deduplicate_s"] = time.monotonic() - t

    t = time.monotonic()
    kept_cols = [
        "key",
        "caption",
        "image",
        "format",
        "width",
        "height",
        "url",
        "sha256",
        "phash",
        *SCORE_COLUMNS,
        "source",
        "id",
    ]
    light = {"num_cpus": LIGHT_CPUS}
    kept = ds.filter(expr=f"decision == '{KEPT}'", num_cpus=LIGHT_CPUS).select_columns(kept_cols, num_cpus=LIGHT_CPUS)
    # Written where every node can write (the object-store attempt prefix, or the staging directory).
    kept.write_parquet(out.path("kept"), max_rows_per_file=cur.rows_per_file, ray_remote_args=light)
    audit = ds.drop_columns(["image"], num_cpus=LIGHT_CPUS)
    audit.write_parquet(out.path("audit"), max_rows_per_file=cur.rows_per_file, ray_remote_args=light)
    timings["write_s"] = time.monotonic() - t

    manifest = _manifest(cfg, input_dir, out.location, sources, ignored, rows_read=len(meta), timings=timings,
                         t0=t0, percentiles=decided.percentiles)  # fmt: skip
    out.commit(manifest)
    log.info("curated %d rows → %s: %s", manifest.counts["input"], output_dir, manifest.counts["by_decision"])
    for reason, count in sorted(manifest.counts["by_reason"].items()):
        log.info("  %-22s %d", reason, count)
    return JobResult(output=output_dir, manifest=manifest.to_dict())


def _read_table(location: str, columns: list[str]) -> pa.Table:
    fs, path = storage.filesystem(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


def _manifest(cfg, input_dir, staging: str, sources, ignored, *, rows_read, timings, t0, percentiles) -> Manifest:
    audit = _read_table(storage.join(staging, "audit"), ["id", "key", "decision", "reasons"])
    kept = (
        _read_table(storage.join(staging, "kept"), ["key", "sha256", "caption"])
        if any(rel.endswith(".parquet") for rel, _ in storage.list_files(storage.join(staging, "kept")))
        else pa.table({"key": [], "sha256": [], "caption": []})
    )
    ids = audit.column("id").to_pylist()
    decisions = Counter(audit.column("decision").to_pylist())
    reasons = Counter(r for rs in audit.column("reasons").to_pylist() for r in rs)
    kept_keys = kept.column("key").to_pylist()
    if len(ids) != rows_read or len(set(ids)) != len(ids):
        raise RuntimeError(f"row accounting broken: read {rows_read} rows, audit has {len(ids)} ({len(set(ids))} ids)")
    if (
        sum(decisions.values()) != rows_read
        or decisions[KEPT] != len(kept_keys)
        or len(set(kept_keys)) != len(kept_keys)
    ):
        raise RuntimeError(f"row accounting broken: {dict(decisions)} vs {rows_read} read, {len(kept_keys)} kept rows")
    digest = rows_digest(zip(kept_keys, kept.column("sha256").to_pylist(), kept.column("caption").to_pylist(),
                             strict=True))  # fmt: skip
    root = input_root(input_dir)
    inputs = []
    for s in sources:
        if s.kind in ("parquet", "tar"):
            inputs.append({"path": s.path, "kind": s.kind, "digest": _digest(root, s.path)})
        elif s.kind == "folder":
            inputs.append(
                {"path": s.path, "kind": "folder", "files": len(s.files), "digest": _files_digest(root, s.files)}
            )
        else:
            inputs.append({"path": s.path, "kind": s.kind, "digest": None})
    timings["total_s"] = time.monotonic() - t0
    return Manifest(
        name=cfg.curate_images.dataset_name,
        kind="image-text-dataset",
        job=JOB,
        stage=JOB,
        profile=cfg.profile,
        version=digest.split(":")[1][:12],
        digest=digest,
        counts={
            "input": rows_read,
            "by_decision": {d: decisions.get(d, 0) for d in (KEPT, REJECTED, QUARANTINED)},
            "by_reason": dict(sorted(reasons.items())),
        },
        inputs=inputs,
        config=to_dict(cfg),
        code_version=code_version(),
        timings={k: round(v, 3) for k, v in timings.items()},
        files=files_map(staging, ("kept", "audit")),
        extra={"input_root": str(input_dir), "ignored_files": ignored, "outputs": {"kept": "kept/", "audit": "audit/"},
               "filters": {**filter_versions(), **percentile_versions()},
               "percentiles": percentile_record(percentiles)},
    )  # fmt: skip


def percentile_record(cuts: dict[str, PercentileCut]) -> dict[str, dict]:
    """The manifest's ``percentiles``: for each enabled percentile filter, its config key, the percent asked, the
    population ranked, the resulting threshold and the rows at/above and below it (empty when none is set)."""
    fields = {f.name: f.percent_field for f in PERCENTILE_FILTERS}
    return {name: {"config_key": f"curate_images.filters.{fields[name]}", **cut.to_dict()}
            for name, cut in cuts.items()}  # fmt: skip


def _digest(root: str | Path, rel: str) -> str:
    """``sha256:`` of the input file ``rel`` under ``root`` (a directory or an object-store prefix; a source's
    absolute local path as it is)."""
    if storage.is_uri(root):
        return "sha256:" + storage.sha256(storage.join(root, rel))
    return file_digest(Path(root) / rel)


def _files_digest(root: str | Path, files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for rel in files:
        try:
            h.update(f"{rel}\0{_digest(root, rel)}\n".encode())
        except OSError:
            h.update(f"{rel}\0unreadable\n".encode())
    return "sha256:" + h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.curate_images --input DIR --output DIR [--config PROFILE|JSON] [--set k=v ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.curate_images",
        doc=__doc__,
        input_help="directory (or .parquet/.tar) to curate",
        output_help="new directory for kept/, audit/, manifest.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
