"""The sd15 training steps for real on a CUDA device: random weights at SD v1-5 + AnimateDiff size, bf16, one worker.

Usage (on a GPU machine; ``pytest tests/gpu`` runs it as an opt-in check)::

    python -m bench.gpu_smoke [--stages distill_image distill_video] [--steps 5] [--micro-batch N]

Per stage it builds the same Task as ``bench/sd15_fake_gpu.py`` (the sd15 profile's settings, gradient
checkpointing as the profile says), times ``--steps`` complete steps (loss, backward, AdamW step, EMA update) after
one warm-up step, and prints samples/s, peak memory (``torch.cuda.max_memory_allocated``) and model-FLOPs
utilisation against the card's bf16 peak (FLOPs counted once by ``FlopCounterMode``). It never runs in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bench.common  # noqa: F401  (offline environment)
from bench.sd15_fake_gpu import H100_BF16_FLOPS, STAGES, build_task, make_batch, sd15_arch, sd_schedule, section


def smoke(stage: str, *, steps: int, micro_batch: int | None) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipelines.config import load_config

    cfg = load_config("sd15")
    arch = sd15_arch(cfg)
    if micro_batch:
        arch.micro_batch[stage] = micro_batch
    torch.cuda.reset_peak_memory_stats()
    device = torch.device("cuda")
    checkpointing = section(cfg, stage).gradient_checkpointing
    task = build_task(stage, arch, cfg, sd_schedule(), device=device, checkpointing=checkpointing)
    optimizer = torch.optim.AdamW(task.trainable_parameters(), lr=1e-5)

    def step(i: int) -> None:
        with device:
            batch = make_batch(stage, arch, cfg)
        loss, _ = task.loss(batch, i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_step(i)

    counter = FlopCounterMode(display=False)
    with counter:
        step(0)  # warm-up, FLOPs counted
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / steps
    flops = counter.get_total_flops()
    return {"stage": stage, "card": torch.cuda.get_device_name(), "micro_batch": arch.micro_batch[stage],
            "samples_per_s": round(arch.micro_batch[stage] / seconds, 3),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "mfu_vs_h100_bf16": round(flops / seconds / H100_BF16_FLOPS, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=None, help="override the profile's micro-batch")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; it has not run", file=sys.stderr)
        return 2
    for stage in args.stages:
        print(json.dumps(smoke(stage, steps=args.steps, micro_batch=args.micro_batch)), flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
