"""The sd15 profile's training steps at full size without a GPU: every stage's real Task on a fake ``cuda`` device.

Usage::

    python -m bench.sd15_fake_gpu                 # full size: SD v1-5 + AnimateDiff v1-5-2, 16 frames, 512²
    python -m bench.sd15_fake_gpu --arch small    # the same code path at a reduced width (what the test runs)
    python -m bench.sd15_fake_gpu --json out.json

Per stage (1: image LCM-LoRA; 2: motion layers; 3: control and image-to-video adapters) it builds the Task the
stage job builds, with the sd15 profile's settings (``configs/sd15.yaml``: LoRA, consistency, EMA, init, schedule,
gradient checkpointing) and architecture (SD v1-5's UNet, VAE and CLIP ViT-L/14 text encoder; AnimateDiff v1-5-2's
motion modules at 16 frames; a full-width ControlNet and image-to-video adapter), random weights in the profile's
dtype (bf16, the student cast as the training loop casts it for DeepSpeed), and runs:

1. on fake ``cuda`` (:mod:`bench.fake_device`): construction, the loss (the teacher's CFG-augmented DDIM step,
   student and target forwards) and the EMA update, where every operator checks devices and dtypes;
2. on fake ``cpu``: the complete step (loss, backward, AdamW step, EMA update), with peak memory measured by torch's
   ``MemTracker`` with and without gradient checkpointing, and FLOPs by ``FlopCounterMode``;
3. one 4-step sampling call of the exported AnimateDiff pipeline (LCM scheduler on the distillation's schedule).

Memory per GPU under the profile's ZeRO stage over ``num_workers`` workers (DeepSpeed bf16 mixed precision):
measured peak (all weights, EMA masters, activations, bf16 gradients) + the rank's optimizer partition (fp32
master weights, Adam's two moments and the fp32 gradient partition, 16 bytes per trainable parameter ÷ workers) +
DeepSpeed's reduce and all-gather buckets (5·10⁸ elements each in bf16, its defaults). Throughput: FLOPs per sample
per step (with checkpointing's recompute when it is on) against 40% of an H100 SXM's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench.common  # noqa: F401  (offline environment)

H100_BF16_FLOPS = 989.4e12
"""H100 SXM dense bf16 peak (FLOP/s)."""
MFU = 0.40
GPU_BYTES = 80e9
"""An 80 GB GPU (the memory target)."""
DS_BUCKET_BYTES = 2 * 5e8 * 2
"""DeepSpeed's reduce and all-gather buckets at their defaults (5·10⁸ elements each, bf16)."""
TOKENIZER = Path("toyworld/zoo/image_teacher/tokenizer")
"""A CLIP tokenizer on disk (the toy teacher's; SD's needs a download). Only token ids' shapes matter here."""
STAGES = ("distill_image", "distill_video", "adapt_control", "adapt_image_to_video")
KEEP: list[Any] = []
"""Every fake model built in this process, kept alive until it exits: freeing the video models' fake tensors
crashed the interpreter (torch 2.14), so a part runs in its own process and leaves with ``os._exit``."""


@dataclass(frozen=True)
class Arch:
    """Network configurations and sizes of one run."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    frames: int
    resolution: int
    micro_batch: dict[str, int] = field(default_factory=dict)


def sd15_arch(cfg) -> Arch:
    """SD v1-5 (UNet, VAE, CLIP ViT-L/14 text encoder) at the profile's frames, resolution and micro-batches."""
    from models.factory import sd15_unet_config

    vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}  # fmt: skip
    text = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 768}  # fmt: skip
    return Arch("sd15", sd15_unet_config(), vae, text, frames=cfg.distill_video.frames,
                resolution=cfg.distill_video.resolution, micro_batch=_micro_batches(cfg))  # fmt: skip


def small_arch(cfg) -> Arch:
    """The same block structure at a reduced width (32–64 channels, 64² frames, 4 frames): the test's size."""
    from models.factory import sd15_unet_config

    unet = {**sd15_unet_config(), "block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32,
            "norm_num_groups": 8, "sample_size": 8}  # fmt: skip
    vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 16, 16, 16],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64, "scaling_factor": 0.18215}  # fmt: skip
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32}  # fmt: skip
    return Arch("small", unet, vae, text, frames=4, resolution=64,
                micro_batch={stage: 2 if stage == "distill_image" else 1 for stage in STAGES})  # fmt: skip


def _micro_batches(cfg) -> dict[str, int]:
    return {"distill_image": cfg.distill_image.train.micro_batch_size,
            "distill_video": cfg.distill_video.train.micro_batch_size,
            "adapt_control": cfg.adapt.train.micro_batch_size,
            "adapt_image_to_video": cfg.adapt.train.micro_batch_size}  # fmt: skip


# ------------------------------------------------------------------------------------------------ building


def teacher_parts(arch: Arch, cfg, scheduler_config: dict[str, Any], alphas_cumprod, *, device):
    """The frozen teacher parts at ``arch``, random weights in ``teacher.dtype``, built on ``device`` (a
    ``torch.device``)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from models.factory import TeacherParts

    dtype = getattr(torch, cfg.teacher.dtype)
    with device:  # the worker loads the teacher onto its device
        vae = AutoencoderKL(**arch.vae).to(dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text)).to(dtype)
        unet = UNet2DConditionModel(**arch.unet).to(dtype)
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False).eval()
    return TeacherParts(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer(),
                        unet=unet, scheduler_config=scheduler_config, alphas_cumprod=alphas_cumprod,
                        prediction_type="epsilon")  # fmt: skip


@functools.cache
def tokenizer():
    """The CLIP tokenizer, loaded once (outside any fake mode: it builds no tensors)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER))


def sd_schedule() -> tuple[dict[str, Any], Any]:
    """SD v1-5's training schedule (its scheduler config) and ᾱ_t, real tensors on the CPU as the jobs hold them."""
    from models.factory import alphas_cumprod_from

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1,
              "clip_sample": False}  # fmt: skip
    return config, alphas_cumprod_from(config)


def motion_adapter(arch: Arch, dtype, *, device):
    """A MotionAdapter in AnimateDiff v1-5-2's layout for ``arch``'s UNet (random weights, as if pretrained), built on
    ``device``."""
    from diffusers import MotionAdapter

    from models.video_unet import motion_adapter_config

    with device:
        return MotionAdapter(**motion_adapter_config(arch.unet)).to(dtype)


def build_task(stage: str, arch: Arch, cfg, schedule, *, checkpointing: bool, device):
    """The stage's Task as its job builds it (the profile's settings), on the current (fake) device, the student
    cast to bf16 as the training loop casts it before ``deepspeed.initialize``."""
    import torch

    from models.factory import with_schedule
    from models.lora import add_lora, lora_state_dict
    from models.video_unet import inflate, motion_schedule

    parts = teacher_parts(arch, cfg, *schedule, device=device)
    dtype = getattr(torch, cfg.teacher.dtype)
    if stage == "distill_image":
        from models.stage1 import ImageConsistencyTask

        d = cfg.distill_image
        task = ImageConsistencyTask(parts, cfg.teacher.lora, cfg.consistency, target=d.target, ema_decay=d.ema_decay,
                                    gradient_checkpointing=checkpointing)  # fmt: skip
    elif stage == "distill_video":
        from models.stage2 import VideoConsistencyTask

        v = cfg.distill_video
        stage1 = lora_state_dict(add_lora(copy.deepcopy(parts.unet), cfg.teacher.lora))  # stage 1's LoRA, its shapes
        parts = with_schedule(parts, motion_schedule(v.motion_adapter_dir, v.beta_schedule))
        task = VideoConsistencyTask(
            parts, motion_adapter(arch, dtype, device=device), cfg.consistency, stage1_lora=stage1,
            lora=cfg.teacher.lora,
            init=v.init, decoupled=v.decoupled, lora_ema=v.lora_ema, motion_init=v.motion_init,
            ema_decay=v.ema_decay, gradient_checkpointing=checkpointing,
        )  # fmt: skip
    else:
        from models.stage3 import AdapterConsistencyTask

        a = cfg.adapt
        v = cfg.distill_video  # stage 3 trains on the schedule stage 2's pipeline carries
        parts = with_schedule(parts, motion_schedule(v.motion_adapter_dir, v.beta_schedule))
        # stage 2's video model (its LoRA fused: the same shapes)
        base = inflate(parts.unet, motion_adapter(arch, dtype, device=device))
        # control_init_dir (the openpose ControlNet) has the architecture ControlNetModel.from_unet builds
        task = AdapterConsistencyTask(
            parts, base, cfg.consistency, adapter=stage.removeprefix("adapt_"), control_init_dir=None,
            control_scale=a.control_scale, motion_scale=a.motion_scale,
            tune_lora=cfg.teacher.lora if a.tune_lora else None, ema_decay=a.ema_decay,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
    task.student.to(torch.bfloat16)
    task.configure(seed=0, rank=0, world_size=section(cfg, stage).train.num_workers)
    return task


def section(cfg, stage: str):
    return getattr(cfg, "adapt" if stage.startswith("adapt") else stage)


def make_batch(stage: str, arch: Arch, cfg) -> dict[str, Any]:
    """One micro-batch as the loop hands it over (precomputed latents, token ids; control frames for control)."""
    import torch

    b, f, px = arch.micro_batch[stage], arch.frames, arch.resolution
    h = px // 8
    ids = torch.randint(0, 49408, (b, arch.text["max_position_embeddings"]))
    if stage == "distill_image":
        return {"latents": torch.randn(b, 4, h, h), "input_ids": ids}
    batch = {"latents": torch.randn(b, 4, f, h, h), "input_ids": ids}
    if stage == "adapt_control":
        batch["control"] = torch.randint(0, 256, (b, 3, f, px, px), dtype=torch.uint8)
    return batch


# ------------------------------------------------------------------------------------------------ the runs


def device_check(stage: str, arch: Arch, cfg) -> dict[str, Any]:
    """Build the Task, run its loss and the EMA update on fake ``cuda``: any CPU/CUDA mix raises."""
    from bench.fake_device import fake_device

    schedule, _ = sd_schedule(), tokenizer()
    with fake_device("cuda") as mode:
        task = build_task(stage, arch, cfg, schedule, checkpointing=section(cfg, stage).gradient_checkpointing,
                          device=mode.on_device())  # fmt: skip
        with mode.on_device():  # the loop moves every batch to the worker's device
            batch = make_batch(stage, arch, cfg)
        loss, metrics = task.loss(batch, 0)
        if loss.device.type != "cuda" or loss.ndim != 0:
            raise AssertionError(f"{stage}: the loss is {loss.device} with shape {tuple(loss.shape)}")
        task.after_step(0)
        KEEP.append(task)
        masters = {str(m.dtype) for m in task.ema_masters.values()}
        return {"loss_device": str(loss.device), "ema_master_dtypes": sorted(masters), "metrics": sorted(metrics)}


def step_measure(stage: str, arch: Arch, cfg, *, checkpointing: bool) -> dict[str, Any]:
    """One complete step on fake ``cpu``: loss, backward (measured: peak memory, FLOPs), AdamW step, EMA update."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.fake_device import PeakMemory, fake_device, modules_of, parameter_counts

    schedule, _ = sd_schedule(), tokenizer()
    with fake_device("cpu") as mode:
        task = build_task(stage, arch, cfg, schedule, checkpointing=checkpointing, device=mode.on_device())
        batch = make_batch(stage, arch, cfg)
        tracker = PeakMemory()
        tracker.track(*(p for m in modules_of(task) for p in (*m.parameters(), *m.buffers())), *batch.values(),
                      *task.ema_masters.values())  # fmt: skip
        if getattr(task, "uncond", None) is not None:
            tracker.track(task.uncond)
        counter = FlopCounterMode(display=False)
        with counter, tracker:
            loss, _ = task.loss(batch, 0)
            loss.backward()
        trainable = task.trainable_parameters()
        if any(p.grad is None for p in trainable):
            raise AssertionError(f"{stage}: a trainable parameter got no gradient")
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
        optimizer.step()
        task.after_step(0)
        KEEP.extend((task, optimizer, batch, loss))
        n_trainable, n_total = parameter_counts(task)
    return {"peak_bytes": tracker.peak, "flops": int(counter.get_total_flops()), "trainable": n_trainable,
            "total": n_total, "micro_batch": arch.micro_batch[stage]}  # fmt: skip


def sample_check(arch: Arch, cfg, steps: int = 4) -> dict[str, Any]:
    """One ``steps``-step call of the exported AnimateDiff pipeline on fake ``cuda``: the distilled UNet, the LCM
    scheduler on the distillation's schedule (:func:`models.export.lcm_scheduler`), no CFG, decoded frames."""
    import torch
    from diffusers import AnimateDiffPipeline
    from torch.utils.flop_counter import FlopCounterMode

    from bench.fake_device import fake_device, fake_safe_scheduler
    from models.export import lcm_scheduler
    from models.factory import with_schedule
    from models.video_unet import inflate, motion_schedule

    schedule, _ = sd_schedule(), tokenizer()
    v = cfg.distill_video
    with fake_device("cuda") as mode:
        parts = teacher_parts(arch, cfg, *schedule, device=mode.on_device())
        parts = with_schedule(parts, motion_schedule(v.motion_adapter_dir, v.beta_schedule))
        adapter = motion_adapter(arch, getattr(torch, cfg.teacher.dtype), device=mode.on_device())
        with mode.on_device():  # the exported pipeline, loaded onto the GPU
            unet = inflate(parts.unet, adapter)
        pipe = AnimateDiffPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=unet, motion_adapter=adapter,
                                   scheduler=fake_safe_scheduler(lcm_scheduler(parts.scheduler_config)))  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        counter = FlopCounterMode(display=False)
        with counter:
            frames = pipe("a person dancing", num_inference_steps=steps, guidance_scale=1.0, num_frames=arch.frames,
                          height=arch.resolution, width=arch.resolution, output_type="pt").frames  # fmt: skip
        shape = tuple(frames.shape)
        KEEP.extend((pipe, frames))
        if shape != (1, arch.frames, 3, arch.resolution, arch.resolution) or frames.device.type != "cuda":
            raise AssertionError(f"sampling returned {shape} on {frames.device}")
    return {"frames_shape": list(shape), "flops": int(counter.get_total_flops()),
            "beta_schedule": pipe.scheduler.config.beta_schedule}  # fmt: skip


def budget(m: dict[str, Any], cfg, stage: str) -> dict[str, float]:
    """Bytes per GPU under ZeRO with the profile's workers (see the module docstring)."""
    train = section(cfg, stage).train
    share = train.num_workers if train.zero_stage >= 1 else 1
    optimizer = 16 * m["trainable"] / share
    return {"measured": m["peak_bytes"], "optimizer_partition": optimizer, "buckets": DS_BUCKET_BYTES,
            "total": m["peak_bytes"] + optimizer + DS_BUCKET_BYTES}  # fmt: skip


def stage_row(stage: str, arch: Arch, cfg) -> dict[str, Any]:
    """The device check and both measured steps of one stage (see the module docstring)."""
    t = time.monotonic()
    row: dict[str, Any] = {"device_check": device_check(stage, arch, cfg)}
    for ckpt in (False, True):
        m = step_measure(stage, arch, cfg, checkpointing=ckpt)
        row["checkpointing" if ckpt else "no_checkpointing"] = {**m, "budget": budget(m, cfg, stage)}
    sec = section(cfg, stage)
    on = row["checkpointing" if sec.gradient_checkpointing else "no_checkpointing"]
    row["profile"] = {"gradient_checkpointing": sec.gradient_checkpointing, "zero_stage": sec.train.zero_stage,
                      "num_workers": sec.train.num_workers, "fits_80gb": on["budget"]["total"] <= GPU_BYTES,
                      "margin_gb": round((GPU_BYTES - on["budget"]["total"]) / 1e9, 2),
                      "h100_samples_per_s": MFU * H100_BF16_FLOPS / (on["flops"] / on["micro_batch"])}  # fmt: skip
    row["seconds"] = round(time.monotonic() - t, 1)
    return row


def run_one(arch_name: str, part: str) -> dict[str, Any]:
    """One stage (or ``sampling``) in this process."""
    from pipelines.config import load_config

    cfg = load_config("sd15")
    arch = sd15_arch(cfg) if arch_name == "sd15" else small_arch(cfg)
    return sample_check(arch, cfg) if part == "sampling" else stage_row(part, arch, cfg)


def check_devices(arch_name: str = "small") -> dict[str, Any]:
    """The fake-``cuda`` checks alone, in this process: every stage's construction, loss and EMA update, and the
    pipeline's sampling call (what ``make test`` runs; it would have caught CPU timesteps meeting CUDA weights)."""
    from pipelines.config import load_config

    cfg = load_config("sd15")
    arch = sd15_arch(cfg) if arch_name == "sd15" else small_arch(cfg)
    out: dict[str, Any] = {stage: device_check(stage, arch, cfg) for stage in STAGES}
    out["sampling"] = sample_check(arch, cfg)
    return out


def run(arch_name: str = "sd15", stages: tuple[str, ...] = STAGES, *, sample: bool = True) -> dict[str, Any]:
    """Every check and measurement for ``stages`` at ``arch_name`` (``sd15`` or ``small``), each stage in its own
    process: torch's fake tensors leave state behind that crashed a later mode in the same process."""
    import subprocess
    import tempfile

    from pipelines.config import load_config

    cfg = load_config("sd15")
    arch = sd15_arch(cfg) if arch_name == "sd15" else small_arch(cfg)
    results: dict[str, Any] = {"arch": arch.name, "frames": arch.frames, "resolution": arch.resolution, "stages": {}}
    for part in (*stages, *(("sampling",) if sample else ())):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "part.json"
            cmd = [sys.executable, "-m", "bench.sd15_fake_gpu", "--arch", arch_name, "--part", part, "--json", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not out.is_file():
                raise RuntimeError(f"{part} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            value = json.loads(out.read_text())
        if part == "sampling":
            results["sampling"] = value
        else:
            results["stages"][part] = value
        print(f"{part}: done", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    """The Markdown table of :func:`run`'s results."""
    gb = 1e9
    lines = [f"Architecture: {results['arch']} ({results['frames']} frames, {results['resolution']}²); memory per "
             "GPU = measured peak + ZeRO optimizer partition + DeepSpeed buckets.", "",
             "| stage | micro-batch | params trainable / total | peak GB/GPU no ckpt | peak GB/GPU ckpt | "
             "profile fits 80 GB (margin) | TFLOPs/step no ckpt / ckpt | H100 samples/s @40% MFU (profile) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for stage, row in results["stages"].items():
        off, on, prof = row["no_checkpointing"], row["checkpointing"], row["profile"]
        lines.append(
            f"| {stage} | {on['micro_batch']} | {on['trainable'] / 1e6:.1f} M / {on['total'] / 1e6:.0f} M | "
            f"{off['budget']['total'] / gb:.1f} | {on['budget']['total'] / gb:.1f} | "
            f"{'yes' if prof['fits_80gb'] else 'NO'} ({prof['margin_gb']:+.1f} GB) | "
            f"{off['flops'] / 1e12:.1f} / {on['flops'] / 1e12:.1f} | {prof['h100_samples_per_s']:.2f} |"
        )
    if "sampling" in results:
        s = results["sampling"]
        lines += ["", f"Sampling: 4 LCM steps, no CFG, frames {s['frames_shape']}, {s['flops'] / 1e12:.1f} TFLOPs per "
                      f"video, schedule {s['beta_schedule']}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("sd15", "small"), default="sd15")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--no-sample", action="store_true", help="skip the pipeline's sampling call")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--check-devices", action="store_true", help="only the fake-cuda checks (no measurements)")
    parser.add_argument("--part", choices=(*STAGES, "sampling"), help=argparse.SUPPRESS)  # one part, in-process
    args = parser.parse_args(argv)
    if args.part or args.check_devices:
        found = check_devices(args.arch) if args.check_devices else run_one(args.arch, args.part)
        text = json.dumps(found, indent=2) + "\n"
        args.json.write_text(text) if args.json else print(text)
        sys.stdout.flush()
        os._exit(0)  # see KEEP
    results = run(args.arch, tuple(args.stages), sample=not args.no_sample)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["profile"]["fits_80gb"] for r in results["stages"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
