"""Few-step text-to-video: the distilled AnimateLCM model against its ablations and the teacher with DDIM and
DPM-Solver++ at 1/2/4/8 steps.

Held-out toy clip prompts (``toyworld.motion_teacher.validation_prompts`` with ``--seed``; the motion teacher was
validated on seed 0), ``--seeds`` noise seeds per prompt; every sampler starts each video from the same generator
seed. The reference is the teacher (the image teacher inflated with the motion teacher, diffusers'
``AnimateDiffPipeline``) sampled with 50 trailing DDIM steps and CFG from the same noise. Methods:

- ``animatelcm``: ``--model``, a stage-2 output's ``pipeline/`` (LCMScheduler, LCM-LoRA fused), guidance_scale 1;
- each ``--ablation NAME=DIR`` (e.g. the ``init: both`` / ``init: none`` / ``decoupled: false`` runs), the same way;
- ``ddim``: the teacher, ``DDIMScheduler`` with trailing spacing, CFG;
- ``dpmsolver++``: the teacher, 2nd-order DPM-Solver++ with trailing spacing, CFG;
- ``lcm-base`` (control): the teacher WITHOUT any distillation under ``LCMScheduler``, guidance_scale 1 — what the
  sampler alone gives.

CFG for the teacher uses guidance_scale 1 + w at the middle of the distillation's w range (the guidance the student
learned to reproduce). Per method and step count:

- ``latent_mse``: per-video MSE to the reference's latents (B, C, F, h, w). Meaningful at 1 step only: multistep
  consistency sampling injects fresh noise at every step and leaves the ODE path the reference follows.
- ``fvd``: a toy stand-in for FVD (no I3D network here): the Fréchet distance between the set of videos and the set
  of references, a video's feature being the toy-CLIP image embeddings of its frames averaged over time,
  concatenated with (last-frame embedding − first-frame embedding) so that motion counts as well as content.
  **The comparison of record.** Set-level, like the paper's FVD; with few videos it is a noisy estimate (raise
  ``--prompts``/``--seeds`` before trusting small gaps).
- ``fd_frames``: the Fréchet distance of the per-frame embeddings (an FID over all frames).
- ``clipsim``: toy-CLIP similarity ×100 of every frame to its prompt, averaged over frames and videos.
- ``temporal``: mean cosine similarity of consecutive frames' embeddings (1 = static; the reference shows how much
  a moving object lowers it).
- ``direction`` / ``colour``: :func:`toyworld.motion_teacher.motion_fidelity` (direction of motion and colour of
  frame 0, read back from pixels).
- ``latency_s``: wall time per video of the pipeline call including the VAE decode (one video at a time, after one
  untimed warm-up call per pipeline), with ``--threads`` torch threads; the median over the videos, so that a burst
  of load from another process on a shared machine moves it less than a mean.

The reference's own figures are reported too, with ``fvd_real`` (reference against ground-truth renders of the
prompts) and the renders' figures (the ceiling of the pixel read-outs). ``speedup_4_vs_50`` is the teacher's
DDIM-50 CFG latency over the AnimateLCM model's 4-step latency (target ≥ 20×).

Verdict, at 1, 2 and 4 steps: ``animatelcm`` beats ``ddim`` and ``dpmsolver++`` when its ``fvd`` is lower (and at 1
step its ``latent_mse`` too), and beats each ablation when its ``fvd`` is lower; every comparison prints PASS or FAIL.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_json
from models.evaluation import clip_video_features, decode_latents, frechet_distance, with_scheduler
from pipelines.stages import BY_NAME

STEPS = (1, 2, 4, 8)
VERDICT_STEPS = (1, 2, 4)
TEACHER_METHODS = ("ddim", "dpmsolver++", "lcm-base")
BASELINES = ("ddim", "dpmsolver++")
REFERENCE_STEPS = 50
SPEEDUP_TARGET = 20.0
DEFAULT_MODEL = DEMO / BY_NAME["distill_video"].output


def parse_ablation(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` → (name, dir)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--ablation {text!r}: expected NAME=DIR, e.g. both=data/ablation-both")
    return name, Path(path)


def stage2_settings(out_dir: Path) -> dict:
    """A stage-2 output's ``export.init`` / ``export.decoupled`` (from its manifest.json); raises when the directory
    is not a stage-2 output."""
    if not (out_dir / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"{out_dir}: no pipeline/model_index.json; expected a stage-2 output (`alcm distill video "
                         "--output DIR`, or `make demo`)")  # fmt: skip
    manifest = out_dir / "manifest.json"
    export = json.loads(manifest.read_text()).get("export", {}) if manifest.is_file() else {}
    return {"init": export.get("init"), "decoupled": export.get("decoupled")}


def scheduler_variant(pipe, name: str):
    """``pipe`` (sharing its modules) with the named scheduler: trailing DDIM, 2nd-order DPM-Solver++ with
    trailing spacing, or LCM (``lcm-base``)."""
    if name not in TEACHER_METHODS:
        raise ValueError(f"scheduler variant {name!r}: choose one of {', '.join(TEACHER_METHODS)}")
    return with_scheduler(pipe, "lcm" if name == "lcm-base" else name)


def sample_videos(
    pipe, captions: list[str], seeds: list[int], *, steps: int, guidance: float, frames: int, size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """One video per (caption, seed), each from ``torch.Generator().manual_seed(seed)``: latents (N, C, F, h, w),
    uint8 videos (N, F, H, W, 3) and the median wall time per video (pipeline call + VAE decode)."""
    import torch

    latents, videos, seconds = [], [], []
    for caption, seed in zip(captions, seeds, strict=True):
        t0 = time.perf_counter()
        with torch.no_grad():
            lat = pipe(
                caption, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, height=size,
                width=size, generator=torch.Generator().manual_seed(int(seed)), output_type="latent",
            ).frames  # fmt: skip
        videos.append(decode_latents(pipe.vae, lat))
        seconds.append(time.perf_counter() - t0)
        latents.append(lat[0].float().numpy())
    return np.stack(latents), np.stack(videos), float(np.median(seconds))


def frame_embeddings(scorer, videos: np.ndarray) -> np.ndarray:
    """Toy-CLIP embeddings (L2-normalised) of every frame: (N, F, D)."""
    n, f = videos.shape[:2]
    return scorer.image_embeddings(list(videos.reshape(n * f, *videos.shape[2:]))).reshape(n, f, -1)


def video_figures(videos: np.ndarray, emb: np.ndarray, text: np.ndarray, prompts: list[dict]) -> dict[str, float]:
    """clipsim, temporal, direction and colour of a set of videos (``text``: each video's prompt embedding)."""
    from toyworld.motion_teacher import motion_fidelity

    fid = motion_fidelity(list(videos), prompts)
    return {
        "clipsim": float(100.0 * np.mean(np.sum(emb * text[:, None, :], axis=-1))),
        "temporal": float(np.mean(np.sum(emb[:, 1:] * emb[:, :-1], axis=-1))),
        "direction": fid["direction_accuracy"],
        "colour": fid["colour_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stage-2 output directory (the full method)")
    parser.add_argument(
        "--ablation",
        type=parse_ablation,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another stage-2 output to compare, repeatable: both=DIR none=DIR coupled=DIR",
    )
    parser.add_argument("--profile", default="toy")
    parser.add_argument(
        "--motion-teacher",
        type=Path,
        default=None,
        help="the teacher's MotionAdapter directory (default: distill_video.motion_adapter_dir)",
    )
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds per prompt")
    parser.add_argument("--seed", type=int, default=1, help="prompt seed (the motion teacher validated on seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.seeds < 1 or args.prompts * args.seeds < 2:
        raise SystemExit("--prompts × --seeds must be ≥ 2 (a Fréchet distance needs at least 2 videos)")
    models = {"animatelcm": args.model, **dict(args.ablation)}
    if len(models) != 1 + len(args.ablation) or set(models) & {*TEACHER_METHODS, "reference"}:
        raise SystemExit(f"--ablation names must be distinct and not one of animatelcm, reference, "
                         f"{', '.join(TEACHER_METHODS)}: got {[n for n, _ in args.ablation]}")  # fmt: skip
    settings = {name: stage2_settings(path) for name, path in models.items()}
    import torch

    from models.export import load_animatelcm_pipeline
    from models.video_unet import load_motion_adapter
    from pipelines.config import load_config
    from toyworld.image_teacher import toy_clip_scorer
    from toyworld.motion_teacher import VAL_STREAM, animatediff_pipeline, render_prompt_clip, validation_prompts

    torch.set_num_threads(args.threads)
    cfg = load_config(args.profile)
    teacher_dir = Path(cfg.teacher.pretrained_dir)
    motion_dir = args.motion_teacher or Path(cfg.distill_video.motion_adapter_dir)
    if not (motion_dir / "config.json").is_file():
        raise SystemExit(f"motion teacher {motion_dir}: no config.json; train it (`alcm toy train-zoo --only "
                         "motion-teacher`) or pass --motion-teacher DIR")  # fmt: skip
    frames, size = cfg.distill_video.frames, cfg.distill_video.resolution
    guidance = cfg.consistency.teacher_guidance_scale
    prompt_set = validation_prompts(args.seed, args.prompts)
    prompts = [p for p in prompt_set for _ in range(args.seeds)]
    captions = [p["caption"] for p in prompts]
    seeds = [args.seed * 1_000_003 + i for i in range(len(prompts))]
    scorer = toy_clip_scorer()
    text = scorer.text_embeddings(captions)

    teacher = animatediff_pipeline(teacher_dir, load_motion_adapter(motion_dir), scheduler="ddim")
    pipes = {name: load_animatelcm_pipeline(path / "pipeline") for name, path in models.items()}
    pipes.update({name: scheduler_variant(teacher, name) for name in TEACHER_METHODS})
    methods = list(pipes)
    kw = {"frames": frames, "size": size}
    for pipe in [teacher, *pipes.values()]:  # warm-up (allocations, first-call overheads), untimed
        sample_videos(pipe, captions[:1], seeds[:1], steps=1, guidance=1.0, **kw)

    t0 = time.monotonic()
    ref_lat, ref_videos, ref_latency = sample_videos(teacher, captions, seeds, steps=REFERENCE_STEPS,
                                                     guidance=guidance, **kw)  # fmt: skip
    ref_emb = frame_embeddings(scorer, ref_videos)
    ref_feats, ref_frames = clip_video_features(ref_emb), ref_emb.reshape(-1, ref_emb.shape[-1])
    truth_rng = np.random.default_rng([args.seed, VAL_STREAM, 1])
    truth = np.stack([render_prompt_clip(p, truth_rng, frames=frames, stride=1) for p in prompts])
    truth_emb = frame_embeddings(scorer, truth)
    reference = {
        **video_figures(ref_videos, ref_emb, text, prompts),
        "fvd_real": frechet_distance(ref_feats, clip_video_features(truth_emb)),
        "latency_s": ref_latency,
        "unet_evals": 2 * REFERENCE_STEPS,
    }
    ground_truth = video_figures(truth, truth_emb, text, prompts)
    print(f"reference: teacher DDIM {REFERENCE_STEPS} steps, guidance_scale {guidance:g}: "
          f"clipsim {reference['clipsim']:.1f}, temporal {reference['temporal']:.3f}, "
          f"direction {reference['direction']:.2f}, colour {reference['colour']:.2f}, "
          f"fvd_real {reference['fvd_real']:.3f}, {reference['latency_s']:.2f} s/video "
          f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
    print(f"ground-truth renders: clipsim {ground_truth['clipsim']:.1f}, temporal {ground_truth['temporal']:.3f}, "
          f"direction {ground_truth['direction']:.2f}, colour {ground_truth['colour']:.2f}")  # fmt: skip

    results: dict[str, dict[int, dict]] = {}
    for method in methods:
        g = guidance if method in BASELINES else 1.0
        results[method] = {}
        for steps in STEPS:
            lat, videos, latency = sample_videos(pipes[method], captions, seeds, steps=steps, guidance=g, **kw)
            emb = frame_embeddings(scorer, videos)
            results[method][steps] = {
                "latent_mse": float(np.mean((lat - ref_lat) ** 2)),
                "fvd": frechet_distance(clip_video_features(emb), ref_feats),
                "fd_frames": frechet_distance(emb.reshape(-1, emb.shape[-1]), ref_frames),
                **video_figures(videos, emb, text, prompts),
                "latency_s": latency,
                "unet_evals": steps * (1 if g == 1.0 else 2),
            }
        print(f"{method}: done ({time.monotonic() - t0:.0f} s)")

    print(f"\n{len(prompt_set)} held-out prompts × {args.seeds} noise seeds (seed {args.seed}), {frames} frames at "
          f"{size}×{size}, teacher {teacher_dir} + {motion_dir}")  # fmt: skip
    for name, path in models.items():
        print(f"  {name}: {path} (init {settings[name]['init']}, decoupled {settings[name]['decoupled']})")
    width = max(12, *(len(m) + 2 for m in methods))
    table = (
        ("fvd", "{:.3f}"),
        ("fd_frames", "{:.3f}"),
        ("latent_mse", "{:.3f}"),
        ("clipsim", "{:.1f}"),
        ("temporal", "{:.3f}"),
        ("direction", "{:.2f}"),
        ("colour", "{:.2f}"),
        ("latency_s", "{:.3f}"),
    )
    for metric, fmt in table:
        print(f"\n{metric:<{width}}" + "".join(f"{s:>9}" for s in STEPS))
        for method in methods:
            print(f"{method:<{width}}" + "".join(f"{fmt.format(results[method][s][metric]):>9}" for s in STEPS))

    speedup = reference["latency_s"] / results["animatelcm"][4]["latency_s"]
    verdict: dict[int, dict[str, bool]] = {}
    print("\nverdict (lower is better; animatelcm against each):")
    for steps in VERDICT_STEPS:
        ours = results["animatelcm"][steps]
        checks = [(b, "fvd") for b in BASELINES]
        checks += [(b, "latent_mse") for b in BASELINES] if steps == 1 else []
        checks += [(name, "fvd") for name in models if name != "animatelcm"]
        verdict[steps] = {}
        for other, metric in checks:
            ok = ours[metric] < results[other][steps][metric]
            verdict[steps][f"{other}/{metric}"] = ok
            theirs = results[other][steps][metric]
            print(f"  {steps} step{'s' if steps > 1 else ' '} {metric:<10} vs {other:<{width}} "
                  f"{ours[metric]:9.3f} vs {theirs:9.3f}  {'PASS' if ok else 'FAIL'}")  # fmt: skip
    print(f"  speedup teacher DDIM-{REFERENCE_STEPS} CFG / animatelcm 4 steps: {speedup:.1f}× (target ≥ "
          f"{SPEEDUP_TARGET:g}×)  {'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'}")  # fmt: skip
    failed = sum(not ok for v in verdict.values() for ok in v.values()) + (speedup < SPEEDUP_TARGET)
    print(f"{failed} FAIL — {time.monotonic() - t0:.0f} s" if failed else f"all PASS — {time.monotonic() - t0:.0f} s")
    write_json(args.out, {
        "reference": reference, "ground_truth": ground_truth, "guidance_scale": guidance, "results": results,
        "verdict": verdict, "speedup_4_vs_50": speedup, "speedup_target": SPEEDUP_TARGET,
        "models": {name: {"path": str(path), **settings[name]} for name, path in models.items()},
        "teacher": str(teacher_dir), "motion_teacher": str(motion_dir), "prompts": len(prompt_set),
        "seeds_per_prompt": args.seeds, "seed": args.seed, "frames": frames, "size": size, "threads": args.threads,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
