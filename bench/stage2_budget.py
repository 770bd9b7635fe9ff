"""Stage 2 at a bench budget: quality against training step for the full method and its ablations, with the
relative change of what trains and the loss curve, on as many toy clips as asked.

The demo trains stage 2 for 100 steps on 25 clips (fast on purpose); at that budget the motion weights hardly move
and an ablation cannot separate. This bench trains each variant on a larger curated toy set and exports it at a
series of step counts: every export is the same run resumed with more steps (``train.steps`` is not part of a run's
name, :func:`pipelines.stage_job.run_name`), so one run gives the whole curve. Variants (``--variants``):

- ``full``: the paper's recipe (``init: online_only``, decoupled, the stage-1 LoRA in the online model only);
- ``both``: ``init: both`` (the stage-1 LoRA also in the EMA target);
- ``none``: ``init: none`` (no stage-1 LoRA: w/o initialisation);
- ``coupled``: ``decoupled: false`` (spatial LoRA and motion layers trained jointly from the raw teacher).

At each exported step, on held-out toy prompts (``toyworld.motion_teacher.validation_prompts(--eval-seed)``,
``--eval-prompts`` × ``--eval-seeds`` videos; sampled with LCM, no CFG, at 1, 2 and 4 steps): toy FVD and KID against
ground-truth renders of the prompts (unpaired), direction/colour/coherence rates, each with its 95% interval
(:func:`bench.fewstep_video.set_figures`); and the relative change ``‖θ − θ₀‖ / ‖θ₀‖`` of the motion module against
the teacher's (all of it, and its output projections), plus the norm of the exported LCM-LoRA. The loss curve
is each export's ``loss_history`` (every 5 steps), joined; each point records the step it resumed from. The
teacher's DDIM and DPM-Solver++ with CFG at the same step counts, and the floor (renders B against A), are measured
once for the same prompts.

Writes ``--out/results.json`` and ``--out/curves.md`` (a table per figure: rows = variant × seed, columns = step),
and prints them. Data: ``--clips`` toy clips (``alcm toy data --videos``) curated by ``alcm curate videos`` into
``--out/data`` (reused when there); stage 1: ``--stage1`` (default ``make demo``'s). Settings beyond the budget are
the toy profile's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_curves
from bench.fewstep_video import frame_embeddings, per_video, sample_videos, scheduler_variant, set_figures
from models.evaluation import clip_video_features

VARIANTS = {
    "full": ["distill_video.init=online_only"],
    "both": ["distill_video.init=both"],
    "none": ["distill_video.init=none"],
    "coupled": ["distill_video.init=none", "distill_video.decoupled=false"],
}
SAMPLE_STEPS = (1, 2, 4)
ALCM = Path(".venv/bin/alcm")


def run(cmd: list[str]) -> None:
    """Run one ``alcm`` command, its output streamed; a failure stops the bench naming the command."""
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def check_reuse(kind: str, recorded, wanted, where: Path) -> None:
    """Refuse to reuse what ``where`` holds when it was made with another ``kind`` than this run asks for."""
    if recorded != wanted:
        raise SystemExit(f"{where}: made with {kind} {recorded!r}, this run asks for {wanted!r}; pass another --out "
                         "(or delete it) instead of mixing the two")  # fmt: skip


def curated_data(out: Path, clips: int, seed: int) -> Path:
    """``clips`` toy clips curated by the video curation job (made once under ``out``; refused when made with
    another number of clips)."""
    curated = out / "curated"
    world = out / "raw" / "world.json"
    if world.is_file():
        check_reuse("--clips", json.loads(world.read_text()).get("counts", {}).get("videos"), clips, out)
    if not (curated / "manifest.json").is_file():
        run([str(ALCM), "toy", "data", "--out", str(out / "raw"), "--seed", str(seed), "--images", "0", "--videos",
             str(clips), "--dancers", "0"])  # fmt: skip
        run([str(ALCM), "curate", "videos", "--input", str(out / "raw" / "videos" / "wds"), "--output", str(curated),
             "--overwrite"])  # fmt: skip
    return curated


def relative_change(export: Path, teacher_motion: Path) -> dict[str, float]:
    """‖θ − θ₀‖ / ‖θ₀‖ of the exported motion module against the teacher's, over all its weights and over the
    temporal output projections (zero-started in a fresh module, the layers that carry a motion module's effect);
    and the Frobenius norm of the exported LCM-LoRA (0 when the variant has none)."""
    from safetensors.torch import load_file

    name = "diffusion_pytorch_model.safetensors"
    new, old = load_file(str(export / "motion_adapter" / name)), load_file(str(teacher_motion / name))
    out: dict[str, float] = {}
    for label, keep in (("motion", lambda k: True), ("motion_out", lambda k: "proj_out" in k)):
        keys = [k for k in old if keep(k)]
        diff = sum(float((new[k].float() - old[k].float()).pow(2).sum()) for k in keys)
        base = sum(float(old[k].float().pow(2).sum()) for k in keys)
        out[label] = float(np.sqrt(diff / base)) if base > 0 else float("nan")
    lora = export / "lcm_lora" / "pytorch_lora_weights.safetensors"
    out["lora_norm"] = float(np.sqrt(sum(float(v.float().pow(2).sum()) for v in load_file(str(lora)).values()))
                             ) if lora.is_file() else 0.0  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench/stage2-budget"))
    parser.add_argument("--clips", type=int, default=600, help="toy clips generated before curation")
    parser.add_argument("--stage1", type=Path, default=DEMO / "distilled-image")
    parser.add_argument("--variants", default="full,none", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--at", default="25,50,100,200,400", help="steps at which to export and measure")
    parser.add_argument("--micro-batch", type=int, default=4, help="per worker (2 workers)")
    parser.add_argument("--eval-prompts", type=int, default=12)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument("--eval-seed", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    seeds, at = [int(s) for s in args.seeds.split(",")], sorted(int(s) for s in args.at.split(","))
    if not (args.stage1 / "manifest.json").is_file() and any(v in ("full", "both") for v in variants):
        raise SystemExit(f"--stage1 {args.stage1}: no stage-1 output there (run `make demo`, or pass --stage1 DIR)")
    import torch

    from models.export import load_animatelcm_pipeline
    from models.video_unet import load_motion_adapter
    from pipelines.config import load_config
    from toyworld.image_teacher import toy_clip_scorer
    from toyworld.motion_teacher import VAL_STREAM, animatediff_pipeline, render_prompt_clip, validation_prompts

    torch.set_num_threads(args.threads)
    stage1_manifest = args.stage1 / "manifest.json"
    stage1_digest = json.loads(stage1_manifest.read_text()).get("digest") if stage1_manifest.is_file() else None
    t0 = time.monotonic()
    data = curated_data(args.out / "data", args.clips, seed=4321)
    rows = json.loads((data / "manifest.json").read_text()).get("counts", {})
    cfg = load_config("toy")
    motion_dir, teacher_dir = Path(cfg.distill_video.motion_adapter_dir), Path(cfg.teacher.pretrained_dir)
    frames, size = cfg.distill_video.frames, cfg.distill_video.resolution
    guidance = cfg.consistency.teacher_guidance_scale
    prompt_set = validation_prompts(args.eval_seed, args.eval_prompts)
    prompts = [p for p in prompt_set for _ in range(args.eval_seeds)]
    captions = [p["caption"] for p in prompts]
    seeds_noise = [args.eval_seed * 1_000_003 + i for i in range(len(prompts))]
    scorer = toy_clip_scorer()
    text = scorer.text_embeddings(captions)
    renders = {}
    for which in (1, 2):
        rng = np.random.default_rng([args.eval_seed, VAL_STREAM, which])
        videos = np.stack([render_prompt_clip(p, rng, frames=frames, stride=1) for p in prompts])
        renders[which] = (videos, frame_embeddings(scorer, videos))
    real = clip_video_features(renders[1][1])
    stats = {"n": args.bootstrap, "seed": args.eval_seed}

    def measure(pipe, steps: int, g: float) -> dict:
        _, videos, latency = sample_videos(pipe, captions, seeds_noise, steps=steps, guidance=g, frames=frames,
                                           size=size)  # fmt: skip
        emb = frame_embeddings(scorer, videos)
        return set_figures(clip_video_features(emb), real, per_video(videos, emb, text, prompts), **stats) | {
            "latency_s": latency}

    floor = set_figures(clip_video_features(renders[2][1]), real, per_video(*renders[2], text, prompts), **stats)
    teacher = animatediff_pipeline(teacher_dir, load_motion_adapter(motion_dir), scheduler="ddim")
    baselines = {m: {s: measure(scheduler_variant(teacher, m), s, guidance) for s in SAMPLE_STEPS}
                 for m in ("ddim", "dpmsolver++")}  # fmt: skip
    print(f"baselines measured ({time.monotonic() - t0:.0f} s)", flush=True)

    curves: dict[str, dict] = {}
    for variant in variants:
        for seed in seeds:
            key = f"{variant}/seed{seed}"
            curves[key] = {"steps": {}, "loss_history": []}
            for steps in at:
                # the output's name is the run's label: the same for every export, so each resumes the last
                out = args.out / "runs" / variant / f"seed{seed}" / f"step{steps:05d}" / "stage2"
                if not (out / "manifest.json").is_file():
                    cmd = [str(ALCM), "distill", "video", "--input", str(data), "--output", str(out), "--overwrite"]
                    cmd += ["--stage1", str(args.stage1)] if variant in ("full", "both") else []
                    for setting in [*VARIANTS[variant], f"distill_video.train.steps={steps}",
                                    f"distill_video.train.seed={seed}", "distill_video.preview_prompts=[]",
                                    f"distill_video.train.micro_batch_size={args.micro_batch}",
                                    f"distill_video.train.checkpoint_every={at[0]}", "distill_video.train.log_every=5",
                                    "distill_video.train.name=budget",
                                    f"distill_video.train.storage_path={args.out / 'ray'}",
                                    f"distill_video.cache_dir={args.out / 'cache'}"]:  # fmt: skip
                        cmd += ["--set", setting]
                    run(cmd)
                manifest = json.loads((out / "manifest.json").read_text())
                check_reuse("stage 1", (manifest.get("inputs", {}).get("stage1") or {}).get("digest"),
                            stage1_digest if variant in ("full", "both") else None, out)  # fmt: skip
                history = [h for points in (manifest.get("loss_history") or {}).values() for h in points]
                resumed = manifest.get("metrics", {}).get("resumed_from")
                curves[key]["loss_history"] += [h for h in history if h[0] not in {x[0] for x in
                                                                                     curves[key]["loss_history"]}]
                pipe = load_animatelcm_pipeline(out / "pipeline")
                curves[key]["steps"][steps] = {
                    "change": relative_change(out, motion_dir),
                    "samples": {s: measure(pipe, s, 1.0) for s in SAMPLE_STEPS},
                    "loss": manifest.get("metrics", {}).get("loss"),
                    "resumed_from": resumed,
                }
                point = curves[key]["steps"][steps]
                print(f"{key} step {steps}: motion change {point['change']['motion']:.4f} (out-proj "
                      f"{point['change']['motion_out']:.4f}), fvd@1/2/4 "
                      + " / ".join(f"{point['samples'][s]['fvd']:.3f}" for s in SAMPLE_STEPS)
                      + f" ({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip

    report = {"clips": args.clips, "curated_counts": rows, "micro_batch": args.micro_batch, "workers": 2,
              "at": at, "variants": variants, "seeds": seeds, "n": len(prompts), "bootstrap": args.bootstrap,
              "floor": floor, "baselines": baselines, "curves": curves,
              "wall_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    write_curves(args.out, report, markdown(report))
    return 0


def cell(figures: dict, metric: str) -> str:
    lo, hi = figures["ci95"][metric]
    digits = 4 if metric == "kid" else 3 if metric == "fvd" else 2
    return f"{figures[metric]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(report: dict) -> str:
    """Tables of the curves: per figure and sampling step count, rows = variant/seed (and the baselines), columns =
    training step."""
    at = report["at"]
    lines = [f"# Stage 2 at a bench budget: {report['clips']} toy clips generated, micro-batch "
             f"{report['micro_batch']} × {report['workers']} workers; N = {report['n']} videos per point, "
             f"95% intervals ({report['bootstrap']} replicates)", "",
             f"Floor (renders B against A): fvd {cell(report['floor'], 'fvd')}, kid {cell(report['floor'], 'kid')}", ""]
    for metric in ("fvd", "kid", "direction", "coherent"):
        for s in SAMPLE_STEPS:
            lines += [f"## {metric} at {s} step{'s' if s > 1 else ''}", "",
                      "| run | " + " | ".join(str(a) for a in at) + " |", "|---|" + "---|" * len(at)]
            for key, curve in report["curves"].items():
                lines.append(f"| {key} | " + " | ".join(cell(curve["steps"][a]["samples"][s], metric)
                                                       for a in at) + " |")  # fmt: skip
            lines += ["", f"The teacher with CFG at {s} step{'s' if s > 1 else ''}: " + ", ".join(
                f"{name} {cell(per[s], metric)}" for name, per in report["baselines"].items()), ""]  # fmt: skip
    lines += ["## relative change of the motion module (all weights / output projections) and LoRA norm", "",
              "| run | " + " | ".join(str(a) for a in at) + " |", "|---|" + "---|" * len(at)]
    for key, curve in report["curves"].items():
        lines.append(f"| {key} | " + " | ".join(
            f"{curve['steps'][a]['change']['motion']:.4f} / {curve['steps'][a]['change']['motion_out']:.4f} / "
            f"{curve['steps'][a]['change']['lora_norm']:.2f}" for a in at) + " |")  # fmt: skip
    lines += ["", "## loss (every 5 steps: step, loss)", ""]
    for key, curve in report["curves"].items():
        lines.append(f"- {key}: " + ", ".join(f"{int(h[0])}: {h[1]:.4f}" for h in curve["loss_history"][::4]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
