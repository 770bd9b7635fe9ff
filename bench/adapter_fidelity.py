"""Stage-3 adapters at 4 steps: pose fidelity of the ControlNet and first-frame fidelity of the image-to-video
adapter, each against the stage-2 model without the adapter from the same noise.

Both adapters feed the stage-2 video UNet (``--model``'s ``pipeline/``, LCM-LoRA fused) through one explicit
4-step LCM loop (:func:`lcm_sample`: diffusers' ``LCMScheduler`` from the pipeline's scheduler config, the model
called as :meth:`models.stage3.AdapterConsistencyTask.forward` calls it), decoded frame by frame with the VAE.

Control fidelity, on ``--n`` fresh dancer sequences (``toyworld.dancers.generate_dancer_sequences(--seed)``, the
first ``adapt.frames`` frames at ``adapt.resolution``):

- control frames drawn as the recaption job draws them from the dancers' pose JSON (:func:`control_frames`:
  ``models.pose.parse_pose_json`` of the toy pose document, ``models.pose.render_pose`` with the ingest's limb width;
  the frames are already at the clip size, so the ingest's resize is the identity); prompts as the toy BLIP captions
  them (``toyworld.captioner.dancer_frame_caption``); ControlNet scale ``adapters.control.export.control_scale`` of
  the adapters' manifest (1.0 without one);
- the figure is re-detected from pixels by colour (:func:`figure_masks`): a pixel is *shirt* (arms and torso) when,
  of the four colours the frame should hold (shirt, pants, the head's skin, the background's grey level), the
  shirt's ``COLOUR_RGB`` is the nearest and it lies within ``COLOUR_TOLERANCE`` = 80 RGB levels (Euclidean) of it;
  likewise *pants* (legs and hip bar); *figure* is every pixel more than 60 levels from the background's grey level
  in some channel (``read_object``'s foreground rule: the silhouette, whatever its colours). Dancers are drawn in the
  exact nominal colours, so the tolerance is for samples whose colours drift: any grey is ≥ 94 levels from every
  named colour and skin ≥ 119 from every one but purple (149), so neither ever counts as a colour; named colours are
  ≥ 70 apart (yellow/orange; the next closest pair, red/orange, 104), so only an orange drawn for a yellow shirt (or
  the reverse) can be taken for it, and when shirt and pants are that close the nearest-of-four rule splits them.
- per frame, against the ground-truth frame's masks (same rules): IoU of each mask, and the distance in pixels
  between each mask's centroid and the truth's. A generated mask with fewer than ``MIN_PIXELS`` pixels counts as not
  found: IoU 0 and no centroid distance (``*_found`` reports how often each was found; the centroid error is a mean
  over found frames only). Means over frames and sequences. The ``vae round trip`` row matters here: thin limbs at
  64×64 are at the edge of what the toy VAE reproduces, in shape and in colour.

Image-to-video, on ``--n`` fresh toy clips (``toyworld.motion_teacher.validation_prompts(--seed)`` rendered with
``render_prompt_clip``): frame 0 encoded with the VAE (posterior mean × ``scaling_factor``) feeds the adapter;
figures: mean absolute pixel error (0–255) and PSNR of generated frame 0 against the given frame 0, colour of
frame 0 read back with ``read_object`` against the prompt's, and direction of motion (``read_motion``; an adapter
that freezes the clip loses it).

Each table also has a ``vae round trip`` row (the ground truth encoded and decoded): the best a latent model can do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_json
from models.evaluation import decode_latents
from pipelines.stages import BY_NAME
from toyworld.dancers import COLOUR_TOLERANCE, figure_masks

STEPS = 4
MIN_PIXELS = 4
"""A colour mask with fewer pixels than this is 'not found'."""
PARTS = ("shirt", "pants", "figure")
DEFAULT_MODEL = DEMO / BY_NAME["distill_video"].output
DEFAULT_ADAPTERS = DEMO / BY_NAME["adapt"].output


def lcm_sample(
    unet, scheduler_config, ehs, *, shape: tuple[int, ...], seed: int, steps: int = STEPS, residuals=None,
    timestep_cond=None,
):  # fmt: skip
    """LCM multistep sampling of one video (latents ``shape`` = (1, C, F, h, w)) from
    ``torch.Generator().manual_seed(seed)``, as ``AnimateDiffPipeline`` samples it (the same noise draws), with
    ``residuals(x, t) -> (down_residuals, mid_residual)`` (or None) added to the UNet at every step. Returns the
    final step's output (on the last step ``LCMScheduler.step``'s ``prev_sample`` is its ``denoised``)."""
    import torch
    from diffusers import LCMScheduler

    from models.video_unet import video_forward

    scheduler = LCMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            down, mid = residuals(x, t.reshape(1)) if residuals is not None else (None, None)
            out = video_forward(unet, x, t.reshape(1), ehs, timestep_cond=timestep_cond, down_residuals=down,
                                mid_residual=mid)  # fmt: skip
            x = scheduler.step(out, t, x, generator=g).prev_sample
    return x


def control_frames(keypoints: np.ndarray, size: int) -> np.ndarray:
    """uint8 (F, size, size, 3) pose maps of a dancer's (F, 18, 3) keypoints, as the recaption job draws them from
    the toy ``pose/`` JSON (``pipelines.video_ingest``: ``parse_pose_json`` then ``render_pose``)."""
    from models.pose import JOINTS, default_limb_width, parse_pose_json, render_pose

    # the ingest's limb width: the default on small maps, thicker on large ones
    limb = default_limb_width(size, size) if size <= 128 else max(4, round(size / 64))
    maps = []
    for frame in keypoints:
        doc = {"joints": list(JOINTS), "width": size, "height": size,
               "keypoints": [[round(float(x), 2), round(float(y), 2), int(v)] for x, y, v in frame]}  # fmt: skip
        maps.append(render_pose(parse_pose_json(json.dumps(doc)), size, size, limb_width=limb))
    return np.stack(maps)


def mask_errors(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float | None]:
    """IoU of ``mask`` with ``truth`` and the distance (pixels) between their centroids (None when ``mask`` has
    fewer than ``MIN_PIXELS`` pixels)."""
    if mask.sum() < MIN_PIXELS:
        return 0.0, None
    iou = float(np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum())
    if not truth.any():
        return iou, None
    centre = np.array(np.nonzero(mask)).mean(axis=1)
    return iou, float(np.linalg.norm(centre - np.array(np.nonzero(truth)).mean(axis=1)))


def pose_figures(videos: list[np.ndarray], truths: list[np.ndarray], dancers: list[dict]) -> dict:
    """Mean shirt/pants IoU, centroid error (found frames) and found rate over every frame of every video; and
    ``per_video``: each video's mean IoU per part (for the paired intervals of :func:`gains`)."""
    per: dict[str, list] = {f"{part}_{k}": [] for part in PARTS for k in ("iou", "px", "found")}
    per_video: dict[str, list] = {f"{part}_iou": [] for part in PARTS}
    for video, truth, d in zip(videos, truths, dancers, strict=True):
        start = len(per["figure_iou"])
        for frame, true_frame in zip(video, truth, strict=True):
            masks = figure_masks(frame, d["shirt"], d["pants"], d["background"])
            true_masks = figure_masks(true_frame, d["shirt"], d["pants"], d["background"])
            for part, mask, true_mask in zip(PARTS, masks, true_masks, strict=True):
                iou, px = mask_errors(mask, true_mask)
                per[f"{part}_iou"].append(iou)
                per[f"{part}_found"].append(px is not None)
                if px is not None:
                    per[f"{part}_px"].append(px)
        for part in PARTS:
            per_video[f"{part}_iou"].append(float(np.mean(per[f"{part}_iou"][start:])))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()} | {"per_video": per_video}


def first_frame_figures(videos: list[np.ndarray], clips: list[np.ndarray], prompts: list[dict]) -> dict:
    """Frame-0 MAE (0–255) and PSNR against the given frame 0, frame-0 colour and direction accuracy; ``per_video``:
    each video's frame-0 MAE and PSNR."""
    from toyworld.motion_teacher import motion_fidelity

    err = [v[0].astype(np.float64) - c[0].astype(np.float64) for v, c in zip(videos, clips, strict=True)]
    psnr = [10.0 * np.log10(255.0**2 / max(float(np.mean(e**2)), 1e-10)) for e in err]
    fid = motion_fidelity(videos, prompts)
    return {
        "mae": float(np.mean([np.abs(e).mean() for e in err])),
        "psnr": float(np.mean(psnr)),
        "colour": fid["colour_accuracy"],
        "direction": fid["direction_accuracy"],
        "per_video": {"mae": [float(np.abs(e).mean()) for e in err], "psnr": [float(p) for p in psnr]},
    }


def gains(with_adapter: dict, without: dict, *, n: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per figure in both ``per_video``: the mean paired gain (with − without, video by video, from the same noise)
    and its 95% percentile bootstrap interval over videos."""
    from models.eval_stats import mean_interval

    out = {}
    for key, values in with_adapter["per_video"].items():
        diff = np.asarray(values, dtype=np.float64) - np.asarray(without["per_video"][key], dtype=np.float64)
        lo, hi = mean_interval(diff, n=n, seed=seed)
        out[key] = {"mean": float(np.nanmean(diff)), "ci95": [lo, hi]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="stage-2 output directory")
    parser.add_argument("--adapters", type=Path, default=DEFAULT_ADAPTERS, help="stage-3 output directory")
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--n", type=int, default=8, help="dancer sequences, and toy clips")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not (args.model / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"--model {args.model}: no pipeline/model_index.json; expected a stage-2 output "
                         "(`alcm distill video --output DIR`, or `make demo`)")  # fmt: skip
    has_control = (args.adapters / "controlnet" / "config.json").is_file()
    has_i2v = (args.adapters / "image_to_video_adapter" / "config.json").is_file()
    if not has_control and not has_i2v:
        raise SystemExit(f"--adapters {args.adapters}: neither controlnet/ nor image_to_video_adapter/; expected a "
                         "stage-3 output (`alcm adapt --output DIR`, or `make demo`)")  # fmt: skip
    tuned = [d.name for d in (args.adapters / "control_lora", args.adapters / "image_to_video_lora") if d.exists()]
    if tuned:
        raise SystemExit(f"--adapters {args.adapters}: has {', '.join(tuned)}/ (adapt.tune_lora); this bench measures "
                         "the adapters on the stage-2 base as it is and does not apply a tuned base LoRA")  # fmt: skip
    manifest = args.adapters / "manifest.json"
    adapters_manifest = json.loads(manifest.read_text()).get("adapters", {}) if manifest.is_file() else {}
    control_scale = float(adapters_manifest.get("control", {}).get("export", {}).get("control_scale", 1.0))
    import torch
    from diffusers import ControlNetModel

    from models.adapters import controlnet_residuals, load_i2v_adapter
    from models.consistency import guidance_embedding
    from models.export import load_animatelcm_pipeline
    from models.stage3 import vae_downsample
    from pipelines.config import load_config
    from toyworld.captioner import dancer_frame_caption
    from toyworld.dancers import generate_dancer_sequences
    from toyworld.motion_teacher import VAL_STREAM, encode_clips, render_prompt_clip, validation_prompts

    torch.set_num_threads(args.threads)
    cfg = load_config(args.profile)
    frames, size = cfg.adapt.frames, cfg.adapt.resolution
    pipe = load_animatelcm_pipeline(args.model / "pipeline")
    unet, vae = pipe.unet.eval(), pipe.vae.eval()
    shape = (1, unet.config.in_channels, frames, size // vae_downsample(vae), size // vae_downsample(vae))
    w_cond = None
    if cfg.consistency.w_embedding:  # as stage 3 trained the adapters (AdapterConsistencyTask.forward)
        w_cond = guidance_embedding(torch.full((1,), cfg.consistency.w_min), cfg.consistency.w_embedding_dim)

    def generate(caption: str, seed: int, residuals=None) -> np.ndarray:
        ehs = pipe.encode_prompt(caption, "cpu", 1, False)[0]
        lat = lcm_sample(unet, pipe.scheduler.config, ehs, shape=shape, seed=seed, timestep_cond=w_cond,
                         residuals=None if residuals is None else lambda x, t: residuals(x, t, ehs))  # fmt: skip
        return decode_latents(vae, lat)

    def round_trip(clips: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [decode_latents(vae, encode_clips(vae, clip[None])) for clip in clips]

    t0 = time.monotonic()
    out: dict = {"steps": STEPS, "n": args.n, "seed": args.seed, "frames": frames, "size": size,
                 "model": str(args.model), "adapters": str(args.adapters), "threads": args.threads}  # fmt: skip
    if has_control:
        controlnet = ControlNetModel.from_pretrained(str(args.adapters / "controlnet"), local_files_only=True,
                                                     use_safetensors=True).eval()  # fmt: skip
        dancers = generate_dancer_sequences(args.seed, args.n, frames=frames, size=size)
        truths = [d["frames"][:frames] for d in dancers]
        conds = [
            torch.from_numpy(control_frames(d["keypoints"][:frames], size)).permute(3, 0, 1, 2)[None].float() / 255.0
            for d in dancers
        ]
        captions = [dancer_frame_caption(d["shirt"], d["pants"], d["background"]) for d in dancers]
        seeds = [args.seed * 1_000_003 + i for i in range(args.n)]
        with_cn, without = [], []
        for caption, seed, cond in zip(captions, seeds, conds, strict=True):
            with torch.no_grad():
                with_cn.append(generate(caption, seed, lambda x, t, ehs, c=cond: controlnet_residuals(
                    controlnet, x, t, ehs, c, scale=control_scale)))  # fmt: skip
                without.append(generate(caption, seed))
        out["control"] = {
            "control_scale": control_scale,
            "with_adapter": pose_figures(with_cn, truths, dancers),
            "without_adapter": pose_figures(without, truths, dancers),
            "vae_round_trip": pose_figures(round_trip(truths), truths, dancers),
            "colour_tolerance": COLOUR_TOLERANCE,
            "min_pixels": MIN_PIXELS,
        }
        out["control"]["gain"] = gains(out["control"]["with_adapter"], out["control"]["without_adapter"])
        print(f"control: {args.n} dancer sequences × {frames} frames ({time.monotonic() - t0:.0f} s)")
    if has_i2v:
        adapter = load_i2v_adapter(args.adapters / "image_to_video_adapter").eval()
        prompts = validation_prompts(args.seed, args.n)
        rng = np.random.default_rng([args.seed, VAL_STREAM, 1])
        clips = [render_prompt_clip(p, rng, frames=frames, stride=1) for p in prompts]
        seeds = [args.seed * 1_000_003 + args.n + i for i in range(args.n)]
        with_i2v, without = [], []
        for p, clip, seed in zip(prompts, clips, seeds, strict=True):
            with torch.no_grad():
                z0 = encode_clips(vae, clip[None])[:, :, 0]
                down = adapter(z0, frames)  # the same residuals at every step: they depend on frame 0 alone
                with_i2v.append(generate(p["caption"], seed, lambda x, t, ehs, d=down: (d, None)))
                without.append(generate(p["caption"], seed))
        out["image_to_video"] = {
            "motion_scale": adapter.config["motion_scale"],
            "with_adapter": first_frame_figures(with_i2v, clips, prompts),
            "without_adapter": first_frame_figures(without, clips, prompts),
            "vae_round_trip": first_frame_figures(round_trip(clips), clips, prompts),
        }
        out["image_to_video"]["gain"] = gains(out["image_to_video"]["with_adapter"],
                                              out["image_to_video"]["without_adapter"])  # fmt: skip
        print(f"image-to-video: {args.n} clips × {frames} frames ({time.monotonic() - t0:.0f} s)")

    print(f"\n{STEPS}-step LCM, stage-2 model {args.model}, adapters {args.adapters}, seed {args.seed}")
    rows = (("with adapter", "with_adapter"), ("without", "without_adapter"), ("vae round trip", "vae_round_trip"))
    if has_control:
        c = out["control"]
        print(f"\npose fidelity (ControlNet scale {control_scale:g}; colour masks within {COLOUR_TOLERANCE:g} RGB "
              f"levels; centroid error in px over found frames)")  # fmt: skip
        cols = tuple(f"{part}_{k}" for k in ("iou", "px", "found") for part in PARTS)
        print(f"{'':<16}" + "".join(f"{k:>13}" for k in cols))
        for label, key in rows:
            print(f"{label:<16}" + "".join(f"{c[key][k]:>13.3f}" for k in cols))
    if has_i2v:
        c = out["image_to_video"]
        print(f"\nimage-to-video first-frame fidelity (motion_scale {c['motion_scale']:g}; mae in 0-255 levels)")
        cols = ("mae", "psnr", "colour", "direction")
        print(f"{'':<16}" + "".join(f"{k:>13}" for k in cols))
        for label, key in rows:
            print(f"{label:<16}" + "".join(f"{c[key][k]:>13.3f}" for k in cols))

    print("\nverdict (with the adapter against without, same noise):")
    verdict = {}
    if has_control:
        w, wo = out["control"]["with_adapter"], out["control"]["without_adapter"]
        for k in ("shirt_iou", "pants_iou", "figure_iou"):
            verdict[f"control/{k}"] = w[k] > wo[k]
            lo, hi = out["control"]["gain"][k]["ci95"]
            print(f"  control {k:<10} {w[k]:.3f} vs {wo[k]:.3f} (gain 95% [{lo:+.3f}, {hi:+.3f}], N = {args.n})  "
                  f"{'PASS' if verdict[f'control/{k}'] else 'FAIL'}")  # fmt: skip
    if has_i2v:
        w, wo = out["image_to_video"]["with_adapter"], out["image_to_video"]["without_adapter"]
        verdict["image_to_video/mae"] = w["mae"] < wo["mae"]
        print(f"  image-to-video mae {w['mae']:.1f} vs {wo['mae']:.1f}  "
              f"{'PASS' if verdict['image_to_video/mae'] else 'FAIL'}")  # fmt: skip
        lo, hi = out["image_to_video"]["gain"]["psnr"]["ci95"]
        print(f"  image-to-video psnr {w['psnr']:.2f} vs {wo['psnr']:.2f} dB (gain 95% [{lo:+.2f}, {hi:+.2f}], "
              f"N = {args.n})")  # fmt: skip
    out["verdict"] = verdict
    print(f"({time.monotonic() - t0:.0f} s)")
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
