"""Per-worker optimizer-state memory: ZeRO-2 against plain data parallel (ZeRO stage 0), measured in one run.

Both runs train the same module (a linear probe with ``--params`` weights, so AdamW's moments are large enough to
read) for a few steps under the shared loop (``pipelines.train_loop``) with 2 Ray Train workers on CPU, and report the
bytes of optimizer moments rank 0 holds (``optimizer_state_bytes``). With 2 workers, ZeRO-2 should hold about half.
The DeepSpeed runtime's other buffers (gradient buckets, fp32 master partitions) are not counted here.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000, help="weights of the probe (its input width)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    import ray

    from models.task import LinearProbeTask
    from pipelines.train_loop import TrainConfig, train

    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    rows = [{"x": rng.normal(size=args.params).astype(np.float32), "y": np.float32(0.0)} for _ in range(16)]
    data = ray.data.from_items(rows)
    make = partial(LinearProbeTask, dim=args.params, ema_decay=0.9)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (0, 2):
            cfg = TrainConfig(name=f"zero{stage}", storage_path=str(Path(tmp) / "runs"), num_workers=args.workers,
                              steps=2, micro_batch_size=2, zero_stage=stage, checkpoint_every=2, lr=1e-3,
                              cpus_per_worker=1.0)  # fmt: skip
            results[stage] = train(make, data, cfg).metrics["optimizer_state_bytes"]
    ray.shutdown()
    print(f"per-worker optimizer moments, {args.params + 1:,} trainable parameters, {args.workers} workers:")
    for stage, nbytes in results.items():
        print(f"  ZeRO stage {stage}{' (plain data parallel)' if stage == 0 else ''}: {nbytes / 2**20:8.2f} MiB")
    print(f"  ratio ZeRO-2 / plain: {results[2] / results[0]:.3f} (ideal 1/{args.workers} = {1 / args.workers:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
