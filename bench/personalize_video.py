"""Personalisation at few steps: a stage-2 model with its spatial weights swapped for a style model's, sampled at
1/2/4 steps without CFG: does it take the style, and does it keep its motion?

The paper's claim: AnimateLCM's video consistency model keeps working when the image weights under it are replaced
by a personalised SD model's. On the toy profile the personalised model is the toy style teacher
(``toyworld/zoo/style_teacher``: the image teacher fine-tuned to draw striped wallpaper backgrounds, the style not in
the prompt). :func:`models.personalize.personalize` writes the swapped pipeline (the stage-2 motion layers and
LCM-LoRA kept, as ``alcm export --personalize`` does) under ``--out``.

On ``--prompts`` × ``--seeds`` held-out toy clip prompts (``toyworld.motion_teacher.validation_prompts(--seed)``),
every method from the same generator seeds:

- ``animatelcm``: ``--model``'s pipeline as trained, LCM without CFG;
- ``personalised``: the same with the style model's spatial weights;
- ``personalised teacher``: the teacher pipeline (image teacher + motion teacher) with the style model's spatial
  weights, DDIM with CFG at 25 steps (what the style looks like through the teacher's sampler);
- ground-truth renders of the prompts, plain and styled (:func:`toyworld.style_teacher.stylise`): the scale of the
  style score.

Per method: ``style`` (the mean stripe amplitude of a video's frames, :func:`toyworld.style_teacher
.stripe_amplitudes`, grey levels: ~20 styled, ~1 plain), ``coherent``, ``direction`` and ``colour`` rates
(:func:`bench.fewstep_video.per_video`), each with a 95% percentile bootstrap interval over videos; and the paired
style gain of ``personalised`` over ``animatelcm`` (video by video, same noise) with its interval.

Verdict per step count: the personalised model takes the style (its style gain's interval above 0 and its mean
style score above half of the styled renders' mean) and keeps coherence (its coherent rate's interval overlaps or
is above ``animatelcm``'s).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_json
from pipelines.stages import BY_NAME

STEPS = (1, 2, 4)
TEACHER_STEPS = 25
DEFAULT_STYLE = Path("toyworld/zoo/style_teacher")


def style_per_video(videos: np.ndarray) -> np.ndarray:
    """Per video (N, F, H, W, 3): the mean stripe amplitude of its frames."""
    from toyworld.style_teacher import stripe_amplitudes

    n, f = videos.shape[:2]
    return stripe_amplitudes(videos.reshape(n * f, *videos.shape[2:])).reshape(n, f).mean(axis=1)


def figures(videos: np.ndarray, prompts: list[dict], *, n: int, seed: int) -> dict:
    """Style score and the coherence / direction / colour rates, each with its bootstrap interval, and the
    per-video values."""
    from bench.fewstep_video import per_video
    from models.eval_stats import mean_interval

    dummy = np.zeros((len(videos), videos.shape[1], 1))  # per_video's clip figures are not used here
    values = {k: v for k, v in per_video(videos, dummy, np.zeros((len(videos), 1)), prompts).items()
              if k in ("coherent", "direction", "colour")}  # fmt: skip
    values["style"] = style_per_video(videos)
    out: dict = {"per_video": {k: [float(x) for x in v] for k, v in values.items()}, "ci95": {}}
    for key, v in values.items():
        out[key] = float(np.mean(v))
        out["ci95"][key] = list(mean_interval(v, n=n, seed=seed))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO / BY_NAME["distill_video"].output,
                        help="stage-2 output directory")  # fmt: skip
    parser.add_argument("--style", type=Path, default=DEFAULT_STYLE, help="the personalised image model (its unet/)")
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds per prompt")
    parser.add_argument("--seed", type=int, default=1, help="prompt seed")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("data/bench/personalize"))
    args = parser.parse_args(argv)
    if not (args.model / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"--model {args.model}: no pipeline/model_index.json; expected a stage-2 output "
                         "(`alcm distill video --output DIR`, or `make demo`)")  # fmt: skip
    if not (args.style / "unet" / "config.json").is_file():
        raise SystemExit(f"--style {args.style}: no unet/config.json; expected an image model directory "
                         "(toyworld/zoo/style_teacher)")  # fmt: skip
    import torch

    from bench.fewstep_video import sample_videos
    from models.export import load_animatelcm_pipeline
    from models.personalize import personalize
    from models.video_unet import load_motion_adapter
    from pipelines.config import load_config
    from toyworld.motion_teacher import VAL_STREAM, animatediff_pipeline, render_prompt_clip, validation_prompts
    from toyworld.style_teacher import stylise

    torch.set_num_threads(args.threads)
    cfg = load_config(args.profile)
    frames, size = cfg.distill_video.frames, cfg.distill_video.resolution
    guidance = cfg.consistency.teacher_guidance_scale
    t0 = time.monotonic()
    prompt_set = validation_prompts(args.seed, args.prompts)
    prompts = [p for p in prompt_set for _ in range(args.seeds)]
    captions = [p["caption"] for p in prompts]
    noise = [args.seed * 1_000_003 + i for i in range(len(prompts))]
    stats = {"n": args.bootstrap, "seed": args.seed}

    swapped = args.out / "personalised"
    if swapped.exists():
        shutil.rmtree(swapped)
    args.out.mkdir(parents=True, exist_ok=True)
    record = personalize(args.model / "pipeline", args.style / "unet", swapped)
    rng = np.random.default_rng([args.seed, VAL_STREAM, 1])
    renders = np.stack([render_prompt_clip(p, rng, frames=frames, stride=1) for p in prompts])
    styled = np.stack([[stylise(f, p["background"]) for f in clip] for clip, p in zip(renders, prompts, strict=True)])
    out: dict = {"model": str(args.model), "style": str(args.style), "n": len(prompts), "frames": frames,
                 "personalization": record, "bootstrap": args.bootstrap,
                 "renders": figures(renders, prompts, **stats), "renders_styled": figures(styled, prompts, **stats),
                 "methods": {}}  # fmt: skip
    base, personal = load_animatelcm_pipeline(args.model / "pipeline"), load_animatelcm_pipeline(swapped)
    for name, pipe in (("animatelcm", base), ("personalised", personal)):
        out["methods"][name] = {}
        for steps in STEPS:
            _, videos, latency = sample_videos(pipe, captions, noise, steps=steps, guidance=1.0, frames=frames,
                                               size=size)  # fmt: skip
            out["methods"][name][steps] = figures(videos, prompts, **stats) | {"latency_s": latency}
            print(f"{name} at {steps} step{'s' if steps > 1 else ''}: style {out['methods'][name][steps]['style']:.2f}"
                  f" ({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
    from diffusers import UNet2DConditionModel

    style_unet = UNet2DConditionModel.from_pretrained(str(args.style / "unet"), local_files_only=True)
    teacher = animatediff_pipeline(Path(cfg.teacher.pretrained_dir), load_motion_adapter(
        Path(cfg.distill_video.motion_adapter_dir)), scheduler="ddim", unet=style_unet)  # fmt: skip
    _, videos, _ = sample_videos(teacher, captions, noise, steps=TEACHER_STEPS, guidance=guidance, frames=frames,
                                 size=size)  # fmt: skip
    out["methods"]["personalised teacher"] = {TEACHER_STEPS: figures(videos, prompts, **stats)}

    from bench.adapter_fidelity import gains

    out["verdict"] = {}
    half_styled = out["renders_styled"]["style"] / 2
    for steps in STEPS:
        ours, theirs = out["methods"]["personalised"][steps], out["methods"]["animatelcm"][steps]
        gain = gains(ours, theirs, **stats)["style"]  # paired, video by video, from the same noise
        lo, hi = gain["ci95"]
        takes_style = lo > 0 and ours["style"] > half_styled
        keeps_coherence = ours["ci95"]["coherent"][1] >= theirs["ci95"]["coherent"][0]
        out["verdict"][steps] = {"style_gain": gain["mean"], "style_gain_ci95": [lo, hi],
                                 "takes_style": bool(takes_style),
                                 "keeps_coherence": bool(keeps_coherence)}  # fmt: skip
    out["wall_s"] = round(time.monotonic() - t0, 1)
    write_json(args.out / "results.json", out)
    print(markdown(out))
    return 0


def cell(fig: dict, key: str, digits: int = 2) -> str:
    lo, hi = fig["ci95"][key]
    return f"{fig[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(out: dict) -> str:
    """The table (rows: method × steps; columns: style, coherent, direction, colour) and the verdict."""
    lines = [f"N = {out['n']} videos per row ({out['frames']} frames), 95% bootstrap intervals over videos", "",
             "| method | steps | style | coherent | direction | colour |", "|---|---|---|---|---|---|"]  # fmt: skip
    rows = [("ground truth", "–", out["renders"]), ("ground truth, styled", "–", out["renders_styled"])]
    rows += [(name, str(steps), fig) for name, per in out["methods"].items() for steps, fig in per.items()]
    for name, steps, fig in rows:
        lines.append(f"| {name} | {steps} | " + " | ".join(cell(fig, k) for k in ("style", "coherent", "direction",
                                                                                  "colour")) + " |")  # fmt: skip
    lines += ["", "verdict (personalised against animatelcm, same noise):"]
    for steps, v in out["verdict"].items():
        lo, hi = v["style_gain_ci95"]
        lines.append(f"- {steps} step{'s' if int(steps) > 1 else ''}: style gain {v['style_gain']:+.2f} "
                     f"[{lo:+.2f}, {hi:+.2f}] → {'takes' if v['takes_style'] else 'does NOT take'} the style; "
                     f"{'keeps' if v['keeps_coherence'] else 'LOSES'} coherence")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
