"""Recaption throughput: clips/s of the Ray Data recaption job per captioner backend, and its actor-pool scaling.

Input: a fresh toy world (seed 779) of TikTok-style dancers (default 48; ``--videos N`` adds N mp4 clips of moving
shapes, some of them defective on purpose), written to a temporary directory that is removed at the end.

Measured, for each backend (transformers, lavis) and each caption-actor pool size (default: the profile's
``recaption.actors``, 2 for toy, then 1), one :func:`pipelines.recaption.run` of the whole job (read + ingest with
pose control frames, caption with CLIP-best aggregation, write) with the profile's settings (``recaption.batch_size``
clips per caption batch). Reported per run: wall time around ``run`` and the job manifest's ``ingest_caption_s`` and
``total_s``, the number of clips, clips/s on each, and the ratio of the largest pool to 1 actor.

Ray is started once, before any run, and its start-up is not counted (a cluster is already up in production). Each
run still starts its own caption actors (worker process, imports, model load; for lavis also the LAVIS worker
process in ``.venv-lavis``), and that is included in every figure: with a few dozen clips it dominates, which is why
the 2-actor/1-actor ratio stays far below 2 at this size. An unreported warm-up run comes first, so that the first
measured run does not also pay for starting Ray's task workers.

Steady state, separately: the caption stage's own class (``pipelines.recaption.CaptionActor``) run in this process
without Ray on the same clips, ingested beforehand; its construction (model load) and one warm-up batch are timed
apart from the batches. That gives clips/s of one caption actor once loaded, the pool's ideal (× actors), and the
bound the machine's cores set when ingest's CPU time (measured the same way, single process) is added per clip.

    python bench/recaption_throughput.py [--dancers 48] [--videos 0] [--seed 779] [--backends transformers lavis]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bench.common as common


def run_job(cfg, src: Path, out: Path) -> dict:
    """One recaption run: wall seconds around ``run``, the manifest's timings and counts (output removed after)."""
    from pipelines.runtime import run_job

    t = time.monotonic()
    result = run_job("recaption", cfg, src, out)
    wall = time.monotonic() - t
    shutil.rmtree(out, ignore_errors=True)
    counts = result.manifest["counts"]
    return {
        "wall_s": wall,
        "ingest_caption_s": result.manifest["timings"]["ingest_caption_s"],
        "total_s": result.manifest["timings"]["total_s"],
        "clips": counts["clips"],
        "kept": counts["by_decision"]["kept"],
    }


def ingest(cfg, src: Path) -> tuple[list, float]:
    """The job's read + ingest stage in this process: tables of ``recaption.batch_size`` clips, and the seconds."""
    import pyarrow as pa

    from pipelines.video_ingest import CutPolicy, read_ingest, source_items
    from pipelines.video_sources import discover_videos

    t = time.monotonic()
    sources, _ = discover_videos(src, chunk=cfg.video.chunk)
    rc = cfg.recaption
    tables = [
        table
        for item in source_items(sources)
        for table in read_ingest(
            pa.Table.from_pylist([item]),
            root=str(src),
            cfg=cfg.video,
            cuts=CutPolicy(split=False, threshold=None),
            pose=rc.control,
            chunk=rc.batch_size,
        )
    ]
    whole = pa.concat_tables(tables)
    batches = [whole.slice(i, rc.batch_size) for i in range(0, whole.num_rows, rc.batch_size)]
    return batches, time.monotonic() - t


def steady_state(cfg, batches: list) -> dict:
    """One caption actor in this process: load seconds, first-batch seconds, then seconds for every batch."""
    from contracts.reasons import KEPT
    from pipelines.recaption import CaptionActor

    rc = cfg.recaption
    t = time.monotonic()
    actor = CaptionActor(cfg.captioner, cfg.scorers, rc.frames_at, rc.aggregation)
    load_s = time.monotonic() - t
    try:
        t = time.monotonic()
        actor(batches[0])
        first_s = time.monotonic() - t
        t = time.monotonic()
        kept = sum(actor(b).column("decision").to_pylist().count(KEPT) for b in batches)
        caption_s = time.monotonic() - t
    finally:
        actor.captioner.close()
    return {"load_s": load_s, "first_batch_s": first_s, "caption_s": caption_s, "kept": kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dancers", type=int, default=48, help="TikTok-style dancer sequences in the toy world")
    parser.add_argument("--videos", type=int, default=0, help="mp4 clips of moving shapes in the toy world")
    parser.add_argument("--seed", type=int, default=779, help="toy world seed")
    parser.add_argument("--backends", nargs="+", default=["transformers", "lavis"], choices=["transformers", "lavis"])
    parser.add_argument("--actors", nargs="+", type=int, default=None, help="pool sizes (default: profile's, then 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (the median is reported)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True, help="unreported first run")
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    from pipelines import runtime
    from pipelines.config import load_config

    base = load_config(args.profile, args.overrides)
    actors = args.actors or list(dict.fromkeys([base.recaption.actors, 1]))
    cfgs = {
        (backend, n): load_config(
            args.profile, [*args.overrides, f"captioner.backend={backend}", f"recaption.actors={n}"]
        )
        for backend in args.backends
        for n in actors
    }
    rc = base.recaption
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t = time.monotonic()
        src = common.toy_dancer_world(tmp, seed=args.seed, dancers=args.dancers, videos=args.videos)
        gen_s = time.monotonic() - t

        batches, ingest_s = ingest(base, src)
        clips_in = sum(b.num_rows for b in batches)
        steady: dict[str, dict] = {}
        unavailable: dict[str, str] = {}
        for backend in args.backends:
            try:
                steady[backend] = steady_state(cfgs[backend, actors[0]], batches)
            except Exception as exc:  # noqa: BLE001 - a missing LAVIS environment is reported, not fatal
                if backend == "transformers":
                    raise
                unavailable[backend] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        backends = [b for b in args.backends if b not in unavailable]

        t = time.monotonic()
        runtime.connect(base.ray)
        ray_start_s = time.monotonic() - t
        warm = None
        if args.warmup and backends:
            warm = run_job(cfgs[backends[0], actors[0]], src, tmp / "warmup")
        runs: dict[tuple[str, int], list[dict]] = {}
        for i in range(args.repeats):
            for backend in backends:
                for n in actors:
                    runs.setdefault((backend, n), []).append(run_job(cfgs[backend, n], src, tmp / f"{backend}-{n}-{i}"))
        ray.shutdown()

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rs)

    print(
        f"recaption throughput: toy world seed {args.seed}, {args.dancers} dancers + {args.videos} videos -> "
        f"{clips_in} clips; {os.cpu_count()} cores, profile {args.profile}, batch {rc.batch_size} clips, "
        f"{len(rc.frames_at)} frames captioned per clip ({base.captioner.generation.num_beams} beams), "
        f"{rc.aggregation}; {args.repeats} run(s) per setting, median (generate {gen_s:.1f} s)"
    )
    print(
        f"Ray started once before the runs ({ray_start_s:.1f} s, not counted). Every run starts its own caption "
        "actors (process, imports, model load), which every figure below includes."
    )
    if warm is not None:
        print(
            f"  warm-up run ({backends[0]}, {actors[0]} actors; not counted): wall {warm['wall_s']:.1f} s, "
            f"total_s {warm['total_s']:.1f} s"
        )
    print(
        f"  {'backend':<14}{'actors':>6}{'clips':>7}{'kept':>6}{'wall s':>9}{'clips/s':>9}"
        f"{'ingest+caption s':>18}{'clips/s':>9}{'total_s':>9}{'clips/s':>9}"
    )
    for (backend, n), rs in runs.items():
        clips, wall, ic, total = med(rs, "clips"), med(rs, "wall_s"), med(rs, "ingest_caption_s"), med(rs, "total_s")
        print(
            f"  {backend:<14}{n:>6}{clips:>7.0f}{med(rs, 'kept'):>6.0f}{wall:>9.1f}{clips / wall:>9.2f}"
            f"{ic:>18.1f}{clips / ic:>9.2f}{total:>9.1f}{clips / total:>9.2f}"
        )
    if len(actors) > 1 and 1 in actors:
        big = max(actors)
        for backend in backends:
            one, many = runs[backend, 1], runs[backend, big]
            ratios = [med(one, key) / med(many, key) for key in ("wall_s", "ingest_caption_s", "total_s")]
            print(
                f"  {backend}: {big}-actor / 1-actor clips/s: wall {ratios[0]:.2f}x, ingest+caption {ratios[1]:.2f}x, "
                f"total_s {ratios[2]:.2f}x"
            )
    print(
        f"steady state (no Ray, this process, one caption actor on the same {clips_in} clips ingested beforehand: "
        f"single-process ingest {ingest_s:.1f} s = {clips_in / ingest_s:.1f} clips/s)"
    )
    cores = os.cpu_count() or 1
    for backend, s in steady.items():
        rate = s["kept"] / s["caption_s"]
        bound = cores / (ingest_s / clips_in + s["caption_s"] / s["kept"])
        print(
            f"  {backend:<14} model load {s['load_s']:5.1f} s, first batch {s['first_batch_s']:5.2f} s, then "
            f"{s['kept']} clips in {s['caption_s']:5.1f} s = {rate:6.2f} clips/s per actor; "
            f"{max(actors)} actors x that = {rate * max(actors):6.2f} clips/s; {cores}-core bound with ingest's CPU "
            f"time = {bound:6.2f} clips/s"
        )
    for backend, err in unavailable.items():
        print(f"  {backend}: unavailable, not run ({err})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
