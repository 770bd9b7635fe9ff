"""Few-step text-to-video: the distilled AnimateLCM model against its ablations and the teacher with DDIM and
DPM-Solver++ at 1/2/4/8 steps, judged against an unpaired reference with intervals.

Held-out toy clip prompts (``toyworld.motion_teacher.validation_prompts`` with ``--seed``; the motion teacher was
validated on seed 0), ``--seeds`` noise seeds per prompt; every sampler starts each video from the same generator
seed. Methods:

- ``animatelcm``: ``--model``, a stage-2 output's ``pipeline/`` (LCMScheduler, LCM-LoRA fused), guidance_scale 1;
- each ``--ablation NAME=DIR`` (e.g. the ``init: both`` / ``init: none`` / ``decoupled: false`` runs), the same way;
- ``ddim``: the teacher (the image teacher inflated with the motion teacher, diffusers' ``AnimateDiffPipeline``),
  ``DDIMScheduler`` with trailing spacing, CFG;
- ``dpmsolver++``: the teacher, 2nd-order DPM-Solver++ with trailing spacing, CFG;
- ``lcm-base`` (control): the teacher WITHOUT any distillation under ``LCMScheduler``, guidance_scale 1 — what the
  sampler alone gives;
- ``teacher-50`` (one row): the teacher's DDIM with 50 steps and CFG, what the student was distilled from.

CFG for the teacher uses guidance_scale 1 + w at the middle of the distillation's w range (the guidance the student
learned to reproduce). The reference of the set-level figures is unpaired from every method: ground-truth renders
of the same prompts (set A, ``[seed, 41, 1]``), never the teacher's output from the methods' own noise (DDIM at few
steps lands next to that, while a consistency sampler re-injects noise). Per method and step count:

- ``fvd``: a toy stand-in for FVD (no I3D network here): the Fréchet distance between the videos' features and set
  A's, a video's feature being the toy-CLIP image embeddings of its frames averaged over time, concatenated with
  (last-frame embedding − first-frame embedding) so that motion counts as well as content;
- ``kid``: the kernel inception distance of the same features (unbiased at small N, where a Fréchet distance is not);
- ``clipsim``: toy-CLIP similarity ×100 of every frame to its prompt; ``temporal``: mean cosine similarity of
  consecutive frames' embeddings;
- ``direction`` / ``colour`` / ``coherent``: per video, the direction of motion and the colour of frame 0 read back
  from pixels, and whether one object persists and moves smoothly (:mod:`toyworld.motion_teacher`), as rates;
- ``latent_mse``: per-video MSE to ``teacher-50``'s latents from the same noise: the one paired figure, meaningful
  at 1 step only (multistep consistency sampling injects fresh noise at every step and leaves the ODE path);
- ``latency_s``: median wall time per video of the pipeline call including the VAE decode (one video at a time,
  after one untimed warm-up call per pipeline), with ``--threads`` torch threads.

Every figure has a 95% interval (``ci95``; :mod:`models.eval_stats`: set distances by half-set subsampling, rates
and means by percentile bootstrap, ``--bootstrap`` replicates). ``floor``: set A against set B (other renders of the
same prompts, ``[seed, 41, 2]``), what two draws of the real distribution score at this N. ``speedup_4_vs_50``:
``teacher-50``'s latency over the AnimateLCM model's at 4 steps (target ≥ 15×), measured in the same run.

Verdict, at 1, 2 and 4 steps: ``animatelcm`` beats ``ddim`` and ``dpmsolver++`` on ``fvd`` and on ``kid`` when its
interval lies below theirs (:func:`contracts.gate.apart`); each ablation is beaten the same way; its direction
accuracy at 4 steps is at least 0.9 × ``teacher-50``'s. Every check prints PASS or FAIL with both intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_json
from contracts.gate import apart
from models.eval_stats import kid, mean_interval, subsample_interval
from models.evaluation import clip_video_features, decode_latents, frechet_distance, with_scheduler
from pipelines.stages import BY_NAME

STEPS = (1, 2, 4, 8)
VERDICT_STEPS = (1, 2, 4)
TEACHER_METHODS = ("ddim", "dpmsolver++", "lcm-base")
BASELINES = ("ddim", "dpmsolver++")
REFERENCE_STEPS = 50
SPEEDUP_TARGET = 15.0
DIRECTION_SHARE = 0.9
"""The student's direction accuracy at 4 steps must reach this share of the teacher's at 50 steps."""
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


def per_video(videos: np.ndarray, emb: np.ndarray, text: np.ndarray, prompts: list[dict]) -> dict[str, np.ndarray]:
    """Per video: clipsim, temporal, and direction / colour / coherent as 0 or 1 (``text``: each video's prompt
    embedding)."""
    from toyworld.image_teacher import read_object
    from toyworld.motion_teacher import coherent, read_motion

    return {
        "clipsim": 100.0 * np.mean(np.sum(emb * text[:, None, :], axis=-1), axis=1),
        "temporal": np.mean(np.sum(emb[:, 1:] * emb[:, :-1], axis=-1), axis=1),
        "direction": np.array([read_motion(v, p["background"])["direction"] == p["direction"]
                               for v, p in zip(videos, prompts, strict=True)], dtype=np.float64),
        "colour": np.array([read_object(v[0], p["background"])["colour"] == p["colour"]
                            for v, p in zip(videos, prompts, strict=True)], dtype=np.float64),
        "coherent": np.array([coherent(v, p["background"]) for v, p in zip(videos, prompts, strict=True)],
                             dtype=np.float64),
    }  # fmt: skip


def set_figures(feats: np.ndarray, reference: np.ndarray, values: dict[str, np.ndarray], *, n: int, seed: int) -> dict:
    """fvd and kid of ``feats`` against ``reference``, the means of the per-video ``values``, each with its 95%
    interval (``ci95``) and the number of videos (``n``)."""
    figures: dict = {"fvd": frechet_distance(feats, reference), "kid": kid(feats, reference),
                     **{k: float(np.mean(v)) for k, v in values.items()}}  # fmt: skip
    figures["ci95"] = {
        "fvd": subsample_interval(frechet_distance, feats, reference, n=n, seed=seed),
        "kid": subsample_interval(kid, feats, reference, n=n, seed=seed),
        **{k: mean_interval(v, n=n, seed=seed) for k, v in values.items()},
    }
    figures["n"] = len(feats)
    return figures


def check(ours: dict, theirs: dict, metric: str) -> bool:
    """Whether ``ours`` beats ``theirs`` on ``metric`` (lower is better) with separated intervals."""
    return apart(ours["ci95"][metric], theirs["ci95"][metric], "lower")


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
    parser.add_argument("--bootstrap", type=int, default=500, help="replicates of every interval")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.seeds < 1 or args.prompts * args.seeds < 4:
        raise SystemExit("--prompts × --seeds must be ≥ 4 (a half-set interval needs 2 videos per half)")
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
    truth_rng = np.random.default_rng([args.seed, VAL_STREAM, 1])
    truth = np.stack([render_prompt_clip(p, truth_rng, frames=frames, stride=1) for p in prompts])
    other_rng = np.random.default_rng([args.seed, VAL_STREAM, 2])
    truth_b = np.stack([render_prompt_clip(p, other_rng, frames=frames, stride=1) for p in prompts])
    truth_emb, truth_b_emb = frame_embeddings(scorer, truth), frame_embeddings(scorer, truth_b)
    real, real_b = clip_video_features(truth_emb), clip_video_features(truth_b_emb)
    stats = {"n": args.bootstrap, "seed": args.seed}
    ground_truth = set_figures(real_b, real, per_video(truth_b, truth_b_emb, text, prompts), **stats)
    floor = {k: ground_truth[k] for k in ("fvd", "kid", "n")} | {"ci95": {k: ground_truth["ci95"][k]
                                                                         for k in ("fvd", "kid")}}  # fmt: skip

    ref_lat, ref_videos, ref_latency = sample_videos(teacher, captions, seeds, steps=REFERENCE_STEPS,
                                                     guidance=guidance, **kw)  # fmt: skip
    ref_emb = frame_embeddings(scorer, ref_videos)
    reference = set_figures(clip_video_features(ref_emb), real, per_video(ref_videos, ref_emb, text, prompts), **stats)
    reference |= {"latency_s": ref_latency, "unet_evals": 2 * REFERENCE_STEPS}
    print(f"teacher-50 (DDIM {REFERENCE_STEPS} steps, guidance_scale {guidance:g}): {line(reference)}, "
          f"{ref_latency:.2f} s/video ({time.monotonic() - t0:.0f} s)")  # fmt: skip
    print(f"floor (renders B against A): fvd {interval(floor, 'fvd')}, kid {interval(floor, 'kid')}; renders B: "
          f"{line(ground_truth)}")  # fmt: skip

    results: dict[str, dict[int, dict]] = {}
    for method in methods:
        g = guidance if method in BASELINES else 1.0
        results[method] = {}
        for steps in STEPS:
            lat, videos, latency = sample_videos(pipes[method], captions, seeds, steps=steps, guidance=g, **kw)
            emb = frame_embeddings(scorer, videos)
            figures = set_figures(clip_video_features(emb), real, per_video(videos, emb, text, prompts), **stats)
            figures |= {"latent_mse": float(np.mean((lat - ref_lat) ** 2)), "latency_s": latency,
                        "unet_evals": steps * (1 if g == 1.0 else 2)}  # fmt: skip
            results[method][steps] = figures
        print(f"{method}: done ({time.monotonic() - t0:.0f} s)")

    print(f"\n{len(prompt_set)} held-out prompts × {args.seeds} noise seeds (seed {args.seed}) = N {len(prompts)}, "
          f"{frames} frames at {size}×{size}, teacher {teacher_dir} + {motion_dir}; [lo, hi]: 95% intervals "
          f"({args.bootstrap} replicates)")  # fmt: skip
    for name, path in models.items():
        print(f"  {name}: {path} (init {settings[name]['init']}, decoupled {settings[name]['decoupled']})")
    width = max(12, *(len(m) + 2 for m in methods))
    for metric in ("fvd", "kid", "direction", "colour", "coherent", "clipsim", "temporal", "latent_mse", "latency_s"):
        print(f"\n{metric:<{width}}" + "".join(f"{s:>24}" for s in STEPS))
        for method in methods:
            print(f"{method:<{width}}" + "".join(f"{interval(results[method][s], metric):>24}" for s in STEPS))

    speedup = ref_latency / results["animatelcm"][4]["latency_s"]
    verdict: dict[str, dict[str, bool]] = {}
    print("\nverdict (animatelcm against each; lower is better, intervals separated):")
    for steps in VERDICT_STEPS:
        ours = results["animatelcm"][steps]
        verdict[str(steps)] = {}
        for other in [*BASELINES, *(name for name in models if name != "animatelcm")]:
            for metric in ("fvd", "kid"):
                ok = check(ours, results[other][steps], metric)
                verdict[str(steps)][f"{other}/{metric}"] = ok
                print(f"  {steps} step{'s' if steps > 1 else ' '} {metric:<4} vs {other:<{width}} "
                      f"{interval(ours, metric):>24} vs {interval(results[other][steps], metric):>24}  "
                      f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    direction_ok = results["animatelcm"][4]["direction"] >= DIRECTION_SHARE * reference["direction"]
    verdict["4"]["direction_vs_teacher_50"] = direction_ok
    print(f"  direction at 4 steps {results['animatelcm'][4]['direction']:.2f} vs {DIRECTION_SHARE:g} × teacher-50's "
          f"{reference['direction']:.2f}  {'PASS' if direction_ok else 'FAIL'}")  # fmt: skip
    print(f"  speedup teacher DDIM-{REFERENCE_STEPS} CFG / animatelcm 4 steps: {speedup:.1f}× (target ≥ "
          f"{SPEEDUP_TARGET:g}×)  {'PASS' if speedup >= SPEEDUP_TARGET else 'FAIL'}")  # fmt: skip
    failed = sum(not ok for v in verdict.values() for ok in v.values()) + (speedup < SPEEDUP_TARGET)
    print(f"{failed} FAIL — {time.monotonic() - t0:.0f} s" if failed else f"all PASS — {time.monotonic() - t0:.0f} s")
    write_json(args.out, {
        "teacher_50": reference, "floor": floor, "renders_b": ground_truth, "guidance_scale": guidance,
        "results": results, "verdict": verdict, "speedup_4_vs_50": speedup, "speedup_target": SPEEDUP_TARGET,
        "models": {name: {"path": str(path), **settings[name]} for name, path in models.items()},
        "teacher": str(teacher_dir), "motion_teacher": str(motion_dir), "prompts": len(prompt_set),
        "seeds_per_prompt": args.seeds, "n": len(prompts), "seed": args.seed, "frames": frames, "size": size,
        "threads": args.threads, "bootstrap": args.bootstrap,
    })  # fmt: skip
    return 0


def interval(figures: dict, metric: str) -> str:
    """``value [lo, hi]`` of one figure (no interval for latency and latent_mse)."""
    value = figures[metric]
    digits = 4 if metric == "kid" else 1 if metric == "clipsim" else 3
    bounds = figures.get("ci95", {}).get(metric)
    return f"{value:.{digits}f}" + (f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else "")


def line(figures: dict) -> str:
    """One line of a row's set-level figures and rates with intervals."""
    return ", ".join(f"{m} {interval(figures, m)}" for m in ("fvd", "kid", "direction", "colour", "coherent"))


if __name__ == "__main__":
    raise SystemExit(main())
