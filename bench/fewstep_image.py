"""Few-step image generation: the distilled LCM-LoRA against the teacher with DDIM and DPM-Solver++ at 1/2/4/8 steps.

Held-out toy prompts (one-object scenes, ``toyworld.image_teacher.validation_prompts`` with ``--seed``), one fixed
noise seed per prompt shared by every sampler. The reference is the teacher's 50-step DDIM sample with CFG from the
same noise. Methods (``models.sampling``):

- ``lcm-lora``: the stage-1 LoRA with ``LCMScheduler``, no CFG (guidance_scale 1), as the paper reports;
- ``ddim``: the teacher, ``DDIMScheduler`` with trailing spacing (the stronger few-step schedule), CFG;
- ``ddim-leading``: the same with SD's default leading spacing (a 1-step leading schedule starts at t=1);
- ``dpmsolver++``: the teacher, 2nd-order DPM-Solver++ with trailing spacing, CFG;
- ``lcm-base`` (control): the teacher WITHOUT the LoRA under ``LCMScheduler`` — what the sampler alone gives.

CFG for the teacher uses guidance_scale 1 + w at the middle of the distillation's w range (the guidance the LoRA
learned to reproduce). Per method and step count:

- ``latent_mse``: per-sample MSE to the reference's latents. Meaningful at 1 step only: multistep consistency
  sampling injects fresh noise at every step and leaves the ODE path the reference follows.
- ``fd``: Fréchet distance between the set of samples and the set of references in toy-CLIP image-feature space
  (the toy stand-in for FID/FVD: set-level, like the paper's metrics). **The comparison of record.**
- ``fd_real``: the same against ground-truth renders of the prompts' scenes (what FID/FVD compare with: real data;
  the reference itself is scored too).
- ``clip``: mean toy-CLIP score (×100) of each sample against its prompt; ``colour``: how often the object's colour
  read back from pixels is the prompted one.

Verdict: the LoRA "beats" the baselines at a step count when its ``fd`` is lower than every DDIM and DPM-Solver++
variant's; the target is to beat them at 1, 2 and 4 steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_json
from models.evaluation import frechet_distance
from pipelines.stages import BY_NAME

STEPS = (1, 2, 4, 8)
METHODS = ("lcm-lora", "ddim", "ddim-leading", "dpmsolver++", "lcm-base")
BASELINES = ("ddim", "ddim-leading", "dpmsolver++")
DEFAULT_LORA = DEMO / BY_NAME["distill_image"].output / "lora"


def decode(pipe, latents: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = pipe.vae.decode(torch.from_numpy(latents) / pipe.vae.config.scaling_factor).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", type=Path, default=DEFAULT_LORA, help="stage-1 export directory (lora/)")
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="prompt/noise seed (the teacher validated on seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not (args.lora / "pytorch_lora_weights.safetensors").is_file():
        raise SystemExit(f"--lora {args.lora}: no pytorch_lora_weights.safetensors; run `make demo` or "
                         "`alcm distill image` first, or point --lora at a stage-1 output's lora/")  # fmt: skip
    import torch

    from models.sampling import load_pipeline, sample
    from pipelines.config import load_config
    from toyworld.image_teacher import prompt_fidelity, render_prompt, toy_clip_scorer, validation_prompts

    torch.set_num_threads(args.threads)
    cfg = load_config(args.profile)
    teacher_dir = cfg.teacher.pretrained_dir
    guidance = cfg.consistency.teacher_guidance_scale
    prompts = validation_prompts(args.seed, args.prompts)
    captions = [p["caption"] for p in prompts]
    seeds = [args.seed * 1_000_003 + i for i in range(len(prompts))]
    scorer = toy_clip_scorer()
    pipes = {
        "ddim": load_pipeline(teacher_dir, scheduler="ddim"),
        "ddim-leading": load_pipeline(teacher_dir, scheduler="ddim_leading"),
        "dpmsolver++": load_pipeline(teacher_dir, scheduler="dpmsolver++"),
        "lcm-base": load_pipeline(teacher_dir, scheduler="lcm"),
        "lcm-lora": load_pipeline(teacher_dir, scheduler="lcm", lora_dir=args.lora),
    }
    t0 = time.monotonic()
    ref_latents = sample(pipes["ddim"], captions, steps=50, guidance_scale=guidance, seeds=seeds, output_type="latent")
    ref_images = decode(pipes["ddim"], ref_latents)
    ref_features = scorer.image_embeddings(list(ref_images))
    real_features = scorer.image_embeddings([render_prompt(p, seed) for p, seed in zip(prompts, seeds, strict=True)])
    reference = prompt_fidelity(list(ref_images), prompts, scorer)
    reference["fd_real"] = frechet_distance(ref_features, real_features)
    print(f"reference: teacher DDIM 50 steps, guidance_scale {guidance:g}: clip {reference['clip_score']:.1f}, "
          f"colour {reference['pixel_colour_accuracy']:.2f}, fd_real {reference['fd_real']:.3f} "
          f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
    results: dict[str, dict[int, dict]] = {}
    for method in METHODS:
        g = 1.0 if method.startswith("lcm") else guidance
        results[method] = {}
        for steps in STEPS:
            lat = sample(pipes[method], captions, steps=steps, guidance_scale=g, seeds=seeds, output_type="latent")
            images = decode(pipes[method], lat)
            feats = scorer.image_embeddings(list(images))
            fid = prompt_fidelity(list(images), prompts, scorer)
            results[method][steps] = {
                "latent_mse": float(np.mean((lat - ref_latents) ** 2)),
                "fd": frechet_distance(feats, ref_features),
                "fd_real": frechet_distance(feats, real_features),
                "clip": fid["clip_score"],
                "colour": fid["pixel_colour_accuracy"],
                "unet_evals": steps * (1 if g == 1.0 else 2),
            }
    print(f"\n{len(prompts)} held-out prompts (seed {args.seed}), teacher {teacher_dir}, LoRA {args.lora}")
    table = (
        ("fd", "{:.3f}"),
        ("fd_real", "{:.3f}"),
        ("latent_mse", "{:.3f}"),
        ("clip", "{:.1f}"),
        ("colour", "{:.2f}"),
    )
    for metric, fmt in table:
        print(f"\n{metric:<12}" + "".join(f"{s:>9}" for s in STEPS))
        for method in METHODS:
            print(f"{method:<12}" + "".join(f"{fmt.format(results[method][s][metric]):>9}" for s in STEPS))
    verdict = {s: all(results["lcm-lora"][s]["fd"] < results[b][s]["fd"] for b in BASELINES) for s in STEPS}
    print("\nLCM-LoRA beats every DDIM and DPM-Solver++ variant on fd at: "
          + ", ".join(f"{s} steps: {'yes' if verdict[s] else 'NO'}" for s in STEPS)
          + f" (target: 1, 2, 4 steps) — {time.monotonic() - t0:.0f} s")  # fmt: skip
    write_json(args.out, {"reference": reference, "guidance_scale": guidance, "results": results,
                          "beats_at": verdict, "prompts": len(prompts), "seed": args.seed})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
