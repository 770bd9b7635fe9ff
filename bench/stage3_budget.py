"""Stage 3 at a bench budget: the control and image-to-video adapters' fidelity against training step, on as many toy
dancers and clips as asked.

The demo trains each adapter for 80 steps on 8 dancers (fast on purpose); at that budget the zero-started output
layers hardly leave zero and the adapters cannot show a gain. This bench makes its own data once under ``--out``:
``--dancers`` toy dancer sequences (``alcm toy data --dancers``) recaptioned by ``alcm recaption`` (pose control
frames and captions, as users feed stage 3) and ``--clips`` toy clips curated by ``alcm curate videos``; then trains
both adapters over one stage-2 model (``--model``) and exports them at a series of step counts. Every export is the
same run resumed with more steps (``train.steps`` is not part of a run's name and the output's directory name is the
same for every export), so one run gives the whole curve.

At each exported step, :mod:`bench.adapter_fidelity` measures the adapters at 4 steps against the same stage-2 model
without them, from the same noise, on ``--n`` fresh dancers and clips: pose IoU (shirt, pants, figure) for the
ControlNet, frame-0 PSNR / MAE, colour and direction for the image-to-video adapter (with 95% percentile bootstrap
intervals of the gains over sequences). Also recorded per export: the Frobenius norm of each adapter's zero-started
output layers (how far the adapter has moved from "adds nothing") and the loss history.

Writes ``--out/results.json`` and ``--out/curves.md`` and prints them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import bench.common as common  # noqa: F401 - sets the offline environment defaults
from bench.common import DEMO, write_curves
from bench.stage2_budget import ALCM, check_reuse, run
from pipelines.stages import BY_NAME

ZERO_STARTED = {
    "control": ("controlnet/diffusion_pytorch_model.safetensors",
                ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")),
    "image_to_video": ("image_to_video_adapter/image_to_video_adapter.safetensors", ("out_convs.",)),
}  # fmt: skip
"""Per adapter: its exported weight file and the prefixes of the layers that start at zero."""


def zero_started_norm(export: Path) -> dict[str, float]:
    """Frobenius norm of each exported adapter's zero-started layers (0 for a fresh adapter)."""
    from safetensors.torch import load_file

    out = {}
    for adapter, (name, prefixes) in ZERO_STARTED.items():
        if (export / name).is_file():
            weights = load_file(str(export / name))
            keys = [k for k in weights if k.startswith(prefixes)]
            if not keys:
                raise SystemExit(f"{export / name}: none of its tensors start with {', '.join(prefixes)}")
            out[adapter] = float(np.sqrt(sum(float(weights[k].float().pow(2).sum()) for k in keys)))
    return out


def bench_data(out: Path, dancers: int, clips: int, seed: int) -> tuple[Path, Path]:
    """The recaptioned dancers and the curated clips (made once under ``out``; refused when made at other sizes)."""
    recaptioned, curated = out / "recaptioned", out / "curated"
    world = out / "raw" / "world.json"
    if world.is_file():
        made = json.loads(world.read_text()).get("counts", {})
        check_reuse("--dancers", made.get("dancers"), dancers, out)
        check_reuse("--clips", made.get("videos"), clips, out)
    if not (recaptioned / "manifest.json").is_file() or not (curated / "manifest.json").is_file():
        run([str(ALCM), "toy", "data", "--out", str(out / "raw"), "--seed", str(seed), "--images", "0", "--videos",
             str(clips), "--dancers", str(dancers)])  # fmt: skip
    if not (recaptioned / "manifest.json").is_file():
        run([str(ALCM), "recaption", "--input", str(out / "raw" / "dancers"), "--output", str(recaptioned),
             "--local", "--overwrite"])  # fmt: skip
    if not (curated / "manifest.json").is_file():
        run([str(ALCM), "curate", "videos", "--input", str(out / "raw" / "videos" / "wds"), "--output", str(curated),
             "--overwrite"])  # fmt: skip
    return recaptioned, curated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bench/stage3-budget"))
    parser.add_argument("--model", type=Path, default=DEMO / BY_NAME["distill_video"].output,
                        help="stage-2 output the adapters train over")  # fmt: skip
    parser.add_argument("--dancers", type=int, default=200, help="toy dancer sequences generated and recaptioned")
    parser.add_argument("--clips", type=int, default=300, help="toy clips generated before curation")
    parser.add_argument("--at", default="100,200,400", help="steps at which to export and measure")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--micro-batch", type=int, default=2, help="per worker (2 workers)")
    parser.add_argument("--n", type=int, default=24, help="fresh dancers, and clips, measured per export")
    parser.add_argument("--eval-seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    at = sorted(int(s) for s in args.at.split(","))
    if not (args.model / "pipeline" / "model_index.json").is_file():
        raise SystemExit(f"--model {args.model}: no pipeline/model_index.json; expected a stage-2 output "
                         "(`alcm distill video --output DIR`, `make demo`, or bench.stage2_budget's runs/)"
                         )  # fmt: skip
    from bench import adapter_fidelity

    stage2_digest = json.loads((args.model / "manifest.json").read_text()).get("digest")
    t0 = time.monotonic()
    dancers, clips = bench_data(args.out / "data", args.dancers, args.clips, seed=2468)
    counts = {name: json.loads((d / "manifest.json").read_text()).get("counts", {})
              for name, d in (("recaptioned", dancers), ("curated", clips))}  # fmt: skip
    points: dict[int, dict] = {}
    history: dict[str, list] = {}
    for steps in at:
        out = args.out / "runs" / f"seed{args.seed}" / f"step{steps:05d}" / "stage3"
        if not (out / "manifest.json").is_file():
            cmd = [str(ALCM), "adapt", "--input", str(args.model), "--control-data", str(dancers), "--video-data",
                   str(clips), "--output", str(out), "--local", "--overwrite"]  # fmt: skip
            for setting in [f"adapt.train.steps={steps}", f"adapt.train.seed={args.seed}",
                            f"adapt.train.micro_batch_size={args.micro_batch}",
                            f"adapt.train.checkpoint_every={at[0]}", "adapt.train.log_every=10",
                            "adapt.train.name=budget", f"adapt.train.storage_path={args.out / 'ray'}",
                            f"adapt.cache_dir={args.out / 'cache'}"]:  # fmt: skip
                cmd += ["--set", setting]
            run(cmd)
        manifest = json.loads((out / "manifest.json").read_text())
        check_reuse("stage-2 model", manifest.get("inputs", {}).get("stage2", {}).get("digest"), stage2_digest, out)
        for run_key, hist in (manifest.get("loss_history") or {}).items():  # "<adapter>-<run digest>"
            adapter = run_key.rsplit("-", 1)[0]
            seen = {h[0] for h in history.setdefault(adapter, [])}
            history[adapter] += [h for h in hist if h[0] not in seen]
        figures = out / "fidelity.json"
        if not figures.is_file():
            adapter_fidelity.main(["--model", str(args.model), "--adapters", str(out), "--n", str(args.n),
                                   "--seed", str(args.eval_seed), "--threads", str(args.threads),
                                   "--out", str(figures)])  # fmt: skip
        points[steps] = {"fidelity": json.loads(figures.read_text()), "zero_started_norm": zero_started_norm(out),
                         "metrics": {a: e.get("metrics", {}) for a, e in manifest.get("adapters", {}).items()}}
        print(f"step {steps}: zero-started norms {points[steps]['zero_started_norm']} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip

    report = {"model": str(args.model), "dancers": args.dancers, "clips": args.clips, "counts": counts,
              "micro_batch": args.micro_batch, "workers": 2, "seed": args.seed, "at": at, "n": args.n,
              "eval_seed": args.eval_seed, "points": points, "loss_history": history,
              "wall_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    write_curves(args.out, report, markdown(report))
    return 0


def markdown(report: dict) -> str:
    """One table per adapter: rows = training step, columns = the figures with and without the adapter."""
    at, points = report["at"], report["points"]
    lines = [f"# Stage 3 at a bench budget: {report['dancers']} dancers, {report['clips']} clips generated, "
             f"micro-batch {report['micro_batch']} × {report['workers']} workers, over {report['model']}; "
             f"N = {report['n']} fresh dancers / clips per point, 4-step LCM", ""]  # fmt: skip
    for adapter, figures in (("control", ("shirt_iou", "pants_iou", "figure_iou")),
                             ("image_to_video", ("psnr", "mae", "colour", "direction"))):  # fmt: skip
        lines += [f"## {adapter}", "", "| step | zero-started norm | " + " | ".join(
            f"{f} with / without" for f in figures) + " |", "|---|---|" + "---|" * len(figures)]  # fmt: skip
        for steps in at:
            fid = points[steps]["fidelity"].get(adapter)
            if fid is None:
                continue
            w, wo = fid["with_adapter"], fid["without_adapter"]
            lines.append(f"| {steps} | {points[steps]['zero_started_norm'].get(adapter, 0.0):.3f} | " + " | ".join(
                f"{w[f]:.3f} / {wo[f]:.3f}" for f in figures) + " |")  # fmt: skip
        lines.append("")
        if adapter in report["points"][at[-1]]["fidelity"]:
            rt = report["points"][at[-1]]["fidelity"][adapter]["vae_round_trip"]
            lines += ["VAE round trip (the ceiling): " + ", ".join(f"{f} {rt[f]:.3f}" for f in figures), ""]
    lines += ["## loss (step, loss)", ""]
    for adapter, hist in report["loss_history"].items():
        lines.append(f"- {adapter}: " + ", ".join(f"{int(h[0])}: {h[1]:.4f}" for h in hist[::2]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
