"""The fault matrix: every fault scenario of :mod:`bench.faults` on the toy profile, as one table.

    python bench/fault_matrix.py [--images 1000] [--dancers 12] [--out bench/results/fault_matrix.json]

Faults (all real; see ``bench/faults.py``): SIGKILL to a scorer actor of image curation and to a captioner actor
of recaptioning (Ray restarts the actor and retries its batches); SIGKILL to a Ray Train worker of stage 1 once its
first checkpoint is committed (Ray Train restarts the group from the last committed checkpoint); SIGKILL to the
``alcm retrain`` process while it curates videos, then the same command again; a disk that fills while writing; an
output on a read-only mount; checkpoint storage URIs that name nothing; and (``bench/faults_integrity.py``) a byte
flipped in a cached stage output and in the latest training checkpoint, a LAVIS worker that hangs, two writers of
one output, the MLflow server down while a flow records, the Ray head gone between two attempts. Each row: the
fault, whether the work recovered (or, for faults nothing can recover from, failed cleanly before or without
publishing anything), whether the outputs equal a clean run's, and the time the fault cost (the faulted run's
extra wall time over the clean run's; the re-run's wall time for the killed flow; the time to the error for refused
work). The tmpfs mounts are made here as root (CI and these machines run as root); without root the disk-full row
runs in a user and mount namespace (``bench.faults.disk_full``) and the read-only row uses file permissions.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path

import bench.common as common
from bench import faults, faults_integrity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="toy image-text rows (the scorer-kill scenario)")
    ap.add_argument("--dancers", type=int, default=12, help="toy dance sequences (the captioner-kill scenario)")
    ap.add_argument("--seed", type=int, default=4747)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the rows whose name contains TEXT (repeatable; default: every row)")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="work in DIR and keep it (each row's logs and outputs) instead of a temporary folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from pipelines.config import load_config
    from pipelines.runtime import run_job
    from toyworld.generate import generate_world

    t_all = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: list[faults.FaultResult] = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    place = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="alcm-faults-")
    with place as tmp:
        tmp = Path(tmp).resolve()
        cfg = load_config("toy")
        images = common.toy_image_world(tmp / "images", seed=args.seed, rows=args.images) / "parquet"
        dancers = common.toy_dancer_world(tmp / "dancers", seed=args.seed, dancers=args.dancers)
        raw = tmp / "raw"
        generate_world(raw, seed=args.seed, images=120, videos=24, dancers=2)
        print(f"toy inputs ready: {args.images} image rows, {args.dancers} dancers, a 120/24/2 raw world", flush=True)

        def step(name, fn, *a, **kw):
            if args.only and not any(o.lower() in name.lower() for o in args.only):
                return None
            print(f"- {name} …", flush=True)
            r = fn(*a, **kw)
            results.append(r)
            print(f"  {'ok' if r.recovered else 'FAILED'}: {r.detail}", flush=True)
            return r

        step("kill a scorer actor", faults.kill_data_actor, cfg, images, tmp / "actor-images")
        step("kill a captioner actor", faults.kill_data_actor, cfg, dancers, tmp / "actor-captions", job="recaption")
        curated = run_job("curate_images", cfg, images, tmp / "curated").output

        step("kill a training worker", faults.kill_train_worker, faults.stage1_config, curated, tmp / "train")
        step("kill the flow process", faults.kill_flow, raw, tmp / "flow")
        step("disk full", faults.disk_full, cfg, images, tmp / "disk")
        step("read-only output", faults.unwritable_output, cfg, images, tmp / "ro")
        for uri in faults.MISSING_STORAGE:
            step(f"storage {uri}", faults.missing_storage, [], curated, tmp / f"storage-{len(results)}", uri)
        fi = faults_integrity
        step("corrupted cached stage output", fi.corrupted_cached_output, raw, tmp / "cache-corrupt")
        step("corrupted latest checkpoint", fi.corrupted_checkpoint, faults.stage1_config, curated, tmp / "ckpt")
        step("LAVIS worker hangs", fi.lavis_worker_hang, cfg, dancers, tmp / "lavis")
        step("two writers of one output", fi.concurrent_writers, images, tmp / "writers")
        step("MLflow down while recording", fi.mlflow_down, raw, tmp / "mlflow")
        step("Ray head gone", fi.ray_head_gone, tmp / "ray-head")
    ray.shutdown()

    print(f"\nfault matrix (toy profile, this machine; {time.monotonic() - t_all:.0f} s in all)\n")
    print(f"| {'fault':<52} | recovered?    | outputs identical? | time to recover |")
    print(f"|{'-' * 54}|---------------|--------------------|-----------------|")
    for r in results:
        same = "n/a" if r.identical is None else ("yes" if r.identical else "NO")
        rec = (r.label or ("yes" if r.identical is not None else "clean failure")) if r.recovered else "NO"
        print(f"| {r.fault:<52} | {rec:<13} | {same:<18} | {r.seconds:>13.1f} s |")
    print("\nDetails:")
    for r in results:
        print(f"- {r.fault}: {r.detail}")
    green = all(r.recovered and r.identical is not False for r in results)
    print(f"\nall green: {green}")
    common.write_json(args.out, {"green": green, "rows": [
        {"fault": r.fault, "recovered": r.recovered, "identical": r.identical, "seconds": r.seconds,
         "detail": r.detail} for r in results]})  # fmt: skip
    return 0 if green else 1


if __name__ == "__main__":
    raise SystemExit(main())
