"""Evaluate a checkpoint: few-step tables of its consistency sampling against the teacher's DDIM and DPM-Solver++,
with FVD (FID for image checkpoints), CLIPSIM, distance to the teacher's output, temporal consistency, latency and
peak memory, generated on Ray; writes a report directory.

Input: a stage-1 output (image checkpoint: the LCM-LoRA, sampled with the teacher + LoRA under ``LCMScheduler``) or a
stage-2 output (video checkpoint: its AnimateLCM ``pipeline/``). Stage-3 adapters are measured by
``bench/adapter_fidelity.py``. The teacher is the profile's ``teacher.pretrained_dir`` (checked against the digests
the checkpoint recorded) and, for video, the motion module the checkpoint was distilled from.

Methods × steps (``evaluate`` config): the checkpoint at ``student_steps`` without CFG (``lcm-lora`` or
``animatelcm``), and each of ``teacher_methods`` at ``teacher_steps`` with CFG. Every method samples every
(prompt, seed) item from the same seed. Items are sharded over ``evaluate.workers`` Ray actors, each of which loads
the pipelines once; results do not depend on the sharding (each item has its own generator).

Metrics per method and step count (the report says which extractor and reference were used):

- ``fvd`` (videos) / ``fid`` (images): Fréchet distance of the samples' features to the reference set's features —
  ground-truth renders of the toy prompts (``fvd_reference: real``) or the teacher's ``reference_steps`` DDIM output
  (``teacher``); features from ``fvd_extractor`` (``toy_clip``: the scorer CLIP's image tower, frames pooled over
  time; ``i3d``: a TorchScript I3D);
- ``kid``: the kernel inception distance of the same features to the same reference (unbiased at small N, where a
  Fréchet distance is not; :mod:`models.eval_stats`);
- ``fvd_teacher`` / ``fid_teacher``: the same against the teacher's ``reference_steps`` DDIM output;
- ``latent_mse``: mean squared distance of the final latents to the teacher's ``reference_steps`` DDIM latents from
  the same noise (meaningful at 1 step: multistep consistency sampling re-noises and leaves the ODE path);
- ``clipsim``: CLIP similarity (×100) of every frame to its prompt, averaged over frames and samples;
- ``temporal`` (videos): mean cosine similarity of consecutive frames' CLIP embeddings;
- ``latency_s``: median wall time per sample (pipeline call and VAE decode) on an actor with
  ``evaluate.torch_threads`` threads, while the other actors run; ``peak_mem_mb``: CUDA peak allocation on a GPU,
  else the actors' resident-set high-water mark; ``unet_evals``: UNet evaluations per sample (CFG doubles them).

Every figure has its 95% interval (``ci95``, ``evaluate.bootstrap`` replicates with the evaluation's seed: set
distances by half-set subsampling, means by percentile bootstrap, :mod:`models.eval_stats`) and the number of
samples (``n``). When the prompt set has a
second reference set (``reference_b/``, :mod:`contracts.evalset`), ``floor`` holds the Fréchet distance and KID of
reference set A against set B: what two draws of the real distribution score at this N, below which no method can
go. Set A is drawn by the world's renderer, not from the samplers' noise, so the reference is unpaired from the
methods. The teacher reference (``fvd_reference: teacher``, and every ``*_teacher`` figure) is the teacher's
``reference_steps`` DDIM output sampled once more from disjoint seeds (:data:`contracts.evalset.TEACHER_OFFSET`):
compared with its own output from the same noise, DDIM at few steps lands next to it while a consistency sampler
re-injects noise. Only ``latent_mse`` is paired, on purpose (valid at 1 step).

Outputs: ``report.json`` (everything above, plus ``headline``: the checkpoint's own figures as ``metric@steps``, the
keys the promotion gate reads), ``report.md`` (a table per metric: rows = method, columns = steps, each
cell the figure and its interval; the floor as a last row), ``plots/<metric>.png`` (metric vs steps per method, the
intervals as error bars, the floor as a dashed line), ``samples.gif`` (videos) or ``samples.png`` (images): a grid
of ``grid_prompts`` prompts (rows) × the checkpoint at each student step, then the teacher at each teacher step
with DDIM (columns), ``report.html`` (report.md's text and tables, the plots and the samples embedded in one page
that fetches nothing: :func:`contracts.report.report_html`) and ``manifest.json`` (kind ``eval-report``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from contracts import storage
from contracts.digests import tree_digest
from contracts.evalset import REFERENCE, REFERENCE_B, TEACHER_OFFSET, has_set_b, item_seed, read_reference
from contracts.manifest import Manifest, code_version, read_manifest, verify_files
from contracts.mirror import local_copy
from contracts.publish import staged_output
from contracts.report import markdown, report_html
from pipelines import runtime
from pipelines.config import to_dict
from pipelines.data_config import RayConfig
from pipelines.eval_prompts import PromptSet, load_prompts
from pipelines.progress import RemoteProgress
from pipelines.runtime import JobResult
from pipelines.stages import EVALUATED, EvaluateSettings, canonical

log = logging.getLogger(__name__)

JOB = "evaluate"
STUDENT = {"image": "lcm-lora", "video": "animatelcm"}
FD = {"image": "fid", "video": "fvd"}
UNPAIRED = ("ddim", "unpaired")
"""The actors' key of the teacher's reference sampled from disjoint seeds (:data:`contracts.evalset.TEACHER_OFFSET`)."""


@dataclass(frozen=True)
class EvalResult(JobResult):
    """What :func:`run` returns: the job's result and the report."""

    report: dict


# ------------------------------------------------------------------------------------------------ inputs


def read_checkpoint(location: str | Path) -> tuple[dict, str]:
    """A checkpoint's manifest and its kind (``image`` or ``video``); raises naming what is wrong. An object-store
    checkpoint is checked in its local copy (:func:`contracts.mirror.local_copy`, what the evaluators load)."""
    path = local_copy(location)
    manifest = read_manifest(path)
    kind = EVALUATED.get(canonical(manifest.get("stage")) or "")
    if manifest.get("kind") != "checkpoint" or kind is None:
        raise ValueError(f"--input {location}: a {manifest.get('kind')} ({manifest.get('stage', 'no stage')}); "
                         "evaluate a stage-1 (alcm distill image) or stage-2 (alcm distill video) output")  # fmt: skip
    needed = path / ("lora/pytorch_lora_weights.safetensors" if kind == "image" else "pipeline/model_index.json")
    if not needed.is_file():
        raise FileNotFoundError(f"--input {location}: {needed.relative_to(path)} is missing")
    verify_files(path, manifest)
    return manifest, kind


def plan(cfg: EvaluateSettings, prompts: list[dict]) -> list[dict]:
    """One item per (prompt, seed): its index, prompt index, caption and noise seed."""
    e = cfg.evaluate
    return [
        {"index": i * e.videos_per_prompt + j, "prompt": i, "caption": p["caption"],
         "seed": item_seed(e.seed, i * e.videos_per_prompt + j)}
        for i, p in enumerate(prompts) for j in range(e.videos_per_prompt)
    ]  # fmt: skip


def methods_of(cfg: EvaluateSettings, kind: str) -> dict[str, tuple[int, ...]]:
    """Method → step counts, the checkpoint first."""
    e = cfg.evaluate
    return {STUDENT[kind]: e.student_steps, **{m: e.teacher_steps for m in e.teacher_methods}}


def run_order(cfg: EvaluateSettings, kind: str) -> list[tuple[str, int]]:
    """(method, steps) as an actor generates them: the reference first (every other latent is compared with it)."""
    ref = ("ddim", cfg.evaluate.reference_steps)
    return [ref, *((m, s) for m, steps in methods_of(cfg, kind).items() for s in steps if (m, s) != ref)]


def guidance_of(cfg: EvaluateSettings) -> float:
    """The teacher's CFG scale (diffusers' convention, 1 + w)."""
    if cfg.evaluate.guidance_scale is not None:
        return cfg.evaluate.guidance_scale
    return cfg.consistency.teacher_guidance_scale


# ------------------------------------------------------------------------------------------------ the actor


class Evaluator:
    """Loads the checkpoint's and the teacher's pipelines and the feature extractors once; generates and measures
    a shard of the items for every method and step count."""

    def __init__(self, cfg: EvaluateSettings, checkpoint: str, kind: str, motion_dir: str | None,
                 frames: int | None, size: int | None):  # fmt: skip
        import torch

        from models.evaluation import I3DFeatures, with_scheduler
        from models.scorers import ClipScorer

        e = cfg.evaluate
        torch.set_num_threads(e.torch_threads)
        self.cfg, self.kind = cfg, kind
        self.device = "cuda" if e.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        ckpt, teacher_root = local_copy(checkpoint), cfg.teacher.pretrained_dir  # on this actor's node
        # the teacher's dtype (fp16 for sd15) on a GPU; CPU kernels want float32
        dtype = getattr(torch, cfg.teacher.dtype) if self.device == "cuda" else torch.float32
        if kind == "image":
            from models.sampling import load_pipeline

            teacher = load_pipeline(teacher_root, scheduler="ddim", dtype=dtype, device=self.device)
            student = load_pipeline(teacher_root, scheduler="lcm", lora_dir=ckpt / "lora", dtype=dtype,
                                    device=self.device)  # fmt: skip
            self.size = e.resolution or teacher.unet.config.sample_size * teacher.vae_scale_factor
            self.frames = None
        else:
            from diffusers import AnimateDiffPipeline

            from models.export import load_animatelcm_pipeline, pipeline_schedule
            from models.video_unet import load_motion_adapter

            motion = load_motion_adapter(Path(motion_dir), dtype=dtype)
            teacher = AnimateDiffPipeline.from_pretrained(
                str(teacher_root), motion_adapter=motion, local_files_only=True, dtype=dtype
            ).to(self.device)
            student = load_animatelcm_pipeline(ckpt / "pipeline", dtype=dtype, device=self.device)
            # the teacher samples on the schedule its motion module was trained on, which the pipeline records
            teacher.scheduler = type(teacher.scheduler).from_config(teacher.scheduler.config,
                                                                    **pipeline_schedule(ckpt / "pipeline"))  # fmt: skip
            self.size, self.frames = size, frames
        self.pipes = {STUDENT[kind]: student, **{m: with_scheduler(teacher, m) for m in e.teacher_methods}}
        self.guidance = guidance_of(cfg)
        scorers = dataclasses.replace(cfg.scorers, device=self.device, torch_threads=e.torch_threads)
        self.clip = ClipScorer(scorers)
        self.i3d = I3DFeatures(e.i3d_path, self.device) if e.fvd_extractor == "i3d" else None

    def features(self, videos: list[np.ndarray]) -> np.ndarray:
        """FVD/FID features of uint8 videos (each (F, H, W, 3); F = 1 for images)."""
        from models.evaluation import clip_video_features

        if self.i3d is not None:
            return self.i3d(np.stack(videos))
        emb = np.stack([self.clip.image_embeddings(list(v)) for v in videos])
        return clip_video_features(emb)

    def run(self, items: list[dict], grid: list[int], shown=None) -> dict:
        """Every method × steps on ``items``; per item: features, clipsim, temporal, latent distance to the
        reference, latency; per method × steps: peak memory; the frames of the ``grid`` items. ``shown``: a
        :class:`pipelines.progress.Reporter` told the generations done."""
        from models.evaluation import Timer, clipsim, generate, temporal_consistency

        e = self.cfg.evaluate
        text = self.clip.text_embeddings([it["caption"] for it in items])
        reference: dict[int, np.ndarray] = {}
        out: dict = {"per_item": {}, "peak_mem_mb": {}, "grid": {}}
        for done, (method, steps) in enumerate(run_order(self.cfg, self.kind)):
            guidance = 1.0 if method == STUDENT[self.kind] else self.guidance
            rows, peak = {}, 0.0
            for it, t in zip(items, text, strict=True):
                with Timer(self.device) as timer:
                    latents, frames = generate(self.pipes[method], it["caption"], it["seed"], steps=steps,
                                               guidance=guidance, size=self.size, frames=self.frames)  # fmt: skip
                peak = max(peak, timer.peak_mb)
                if (method, steps) == ("ddim", e.reference_steps):
                    reference[it["index"]] = latents
                emb = self.clip.image_embeddings(list(frames))[None]
                rows[it["index"]] = {
                    "feature": self.features([frames])[0],
                    "clipsim": float(clipsim(emb, t[None])[0]),
                    "temporal": float(temporal_consistency(emb)[0]),
                    "latent_mse": float(np.mean((latents - reference[it["index"]]) ** 2)),
                    "latency_s": timer.seconds,
                }
                if it["index"] in grid:
                    out["grid"][(method, steps, it["index"])] = frames
                if shown is not None:
                    shown.at(done * len(items) + len(rows))
            out["per_item"][(method, steps)] = rows
            out["peak_mem_mb"][(method, steps)] = peak
        # the teacher's reference once more from disjoint seeds: the set the *_teacher figures compare with
        out["per_item"][UNPAIRED] = {
            it["index"]: {"feature": self.features([generate(
                self.pipes["ddim"], it["caption"], it["seed"] + TEACHER_OFFSET, steps=e.reference_steps,
                guidance=self.guidance, size=self.size, frames=self.frames)[1]])[0]}
            for it in items
        }  # fmt: skip
        return out


# ------------------------------------------------------------------------------------------------ aggregation


def references(prompt_set: PromptSet, items: list[dict], frames: int | None, *, which: str = REFERENCE
               ) -> list[np.ndarray]:  # fmt: skip
    """The set's reference render of every item (uint8 (F, H, W, 3)), checked to have the frames sampled;
    ``which``: set A (``reference/``) or set B (``reference_b/``)."""
    size = prompt_set.settings["size"]
    renders = [read_reference(prompt_set.reference, it["index"], size, which=which) for it in items]
    if frames is not None and renders[0].shape[0] != frames:
        raise ValueError(f"the prompt set {prompt_set.reference} renders {renders[0].shape[0]} frames, the checkpoint "
                         f"samples {frames} (evaluate.frames): make a set for {frames} (alcm toy eval-set --frames "
                         f"{frames})")  # fmt: skip
    return renders


def aggregate(cfg: EvaluateSettings, kind: str, shards: list[dict], items: list[dict], real: np.ndarray | None
              ) -> dict:  # fmt: skip
    """Per method × steps metrics from the actors' per-item results (see the module docstring), each with its 95%
    bootstrap interval (``ci95``, ``evaluate.bootstrap`` replicates) and the number of samples (``n``)."""
    from models.eval_stats import bootstrap, kid, mean_interval, subsample_interval
    from models.evaluation import frechet_distance

    e, fd = cfg.evaluate, FD[kind]
    merged: dict = {}
    for shard in shards:
        for key, rows in shard["per_item"].items():
            merged.setdefault(key, {}).update(rows)
    order = [it["index"] for it in items]
    teacher_feats = np.stack([merged[UNPAIRED][i]["feature"] for i in order])
    reference_feats = real if e.fvd_reference == "real" else teacher_feats
    results: dict[str, dict[int, dict]] = {}
    for method, steps_list in methods_of(cfg, kind).items():
        results[method] = {}
        for steps in steps_list:
            rows = [merged[(method, steps)][i] for i in order]
            feats = np.stack([r["feature"] for r in rows])
            guided = method != STUDENT[kind] and guidance_of(cfg) != 1.0
            per_sample = {m: np.array([r[m] for r in rows], dtype=np.float64)
                          for m in ("latent_mse", "clipsim", *(["temporal"] if kind == "video" else []))}  # fmt: skip
            latency = np.array([r["latency_s"] for r in rows])
            figures = {
                fd: frechet_distance(feats, reference_feats),
                "kid": kid(feats, reference_feats),
                f"{fd}_teacher": frechet_distance(feats, teacher_feats),
                **{m: float(np.mean(v)) for m, v in per_sample.items()},
                "latency_s": float(np.median(latency)),
                "peak_mem_mb": float(max(s["peak_mem_mb"][(method, steps)] for s in shards)),
                "unet_evals": steps * (2 if guided else 1),
            }
            n = e.bootstrap
            figures["ci95"] = {
                fd: subsample_interval(frechet_distance, feats, reference_feats, n=n, seed=e.seed),
                "kid": subsample_interval(kid, feats, reference_feats, n=n, seed=e.seed),
                f"{fd}_teacher": subsample_interval(frechet_distance, feats, teacher_feats, n=n, seed=e.seed),
                **{m: mean_interval(v, n=n, seed=e.seed) for m, v in per_sample.items()},
                "latency_s": bootstrap(lambda v: float(np.median(v)), latency, n=n, seed=e.seed),
            }
            figures["n"] = len(rows)
            results[method][steps] = figures
    return results


def floor_of(cfg: EvaluateSettings, kind: str, real: np.ndarray, real_b: np.ndarray) -> dict:
    """The set-level figures of the prompt set's reference set A against its set B (disjoint renders of the same
    prompts): the value two samples of the real distribution get, which no method can beat at this N."""
    from models.eval_stats import kid, subsample_interval
    from models.evaluation import frechet_distance

    n, seed = cfg.evaluate.bootstrap, cfg.evaluate.seed
    return {FD[kind]: frechet_distance(real_b, real), "kid": kid(real_b, real), "n": len(real_b),
            "ci95": {FD[kind]: subsample_interval(frechet_distance, real_b, real, n=n, seed=seed),
                     "kid": subsample_interval(kid, real_b, real, n=n, seed=seed)}}  # fmt: skip


def headline_of(kind: str, results: dict) -> dict[str, float]:
    """The checkpoint's own figures, ``metric@steps`` (what the promotion gate and ``alcm registry list`` read)."""
    out = {}
    for steps, figures in results[STUDENT[kind]].items():
        for metric in (FD[kind], "kid", "clipsim", "latent_mse", "temporal", "latency_s"):
            if metric in figures and not math.isnan(figures[metric]):
                out[f"{metric}@{steps}"] = round(float(figures[metric]), 6)
    return out


# ------------------------------------------------------------------------------------------------ report


def write_plots(report: dict, out: Path) -> list[str]:
    """``plots/<metric>.png``: metric vs steps (log scale), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in report["metrics"]:
        if metric == "unet_evals":
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for method, per in report["results"].items():
            steps = sorted(int(s) for s in per)
            values = [per[str(s)][metric] for s in steps]
            bars = [(per[str(s)].get("ci95") or {}).get(metric) for s in steps]
            if all(b is not None and b[0] == b[0] for b in bars):  # error bars: the 95% intervals
                err = [[v - b[0] for v, b in zip(values, bars, strict=True)],
                       [b[1] - v for v, b in zip(values, bars, strict=True)]]  # fmt: skip
                ax.errorbar(steps, values, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=method)
            else:
                ax.plot(steps, values, marker="o", label=method)
        floor = (report.get("floor") or {}).get(metric)
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle="--", label="floor: reference A vs B")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(x) for per in report["results"].values() for x in per})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(metric)
        ax.set_title(f"{report['checkpoint']['name']}: {metric}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{metric}.png")
        plt.close(fig)
        written.append(f"plots/{metric}.png")
    return written


def write_samples(kind: str, grid: dict, columns: list[tuple[str, int]], rows: list[int], out: Path) -> None:
    """The sample grid: rows = prompts, columns = method@steps; an animated GIF for videos, a PNG for images."""
    from PIL import Image

    from models.sampling import image_grid

    n_frames = next(iter(grid.values())).shape[0]
    frames = []
    for f in range(n_frames):
        grid_rows = [np.stack([grid[(m, s, r)][f] for m, s in columns]) for r in rows]
        frames.append(Image.fromarray(image_grid(grid_rows)))
    if kind == "image":
        frames[0].save(out)
    else:
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=125, loop=0)


# ------------------------------------------------------------------------------------------------ the job


def run(cfg: EvaluateSettings, input_dir: Path, output_dir: Path, *, ray_config: RayConfig | None = None,
        overwrite: bool = False) -> EvalResult:  # fmt: skip
    """Evaluate the checkpoint at ``input_dir`` into a new report directory ``output_dir`` (module docstring)."""
    from models.factory import teacher_digests

    t0 = time.monotonic()
    e = cfg.evaluate
    input_dir, output_dir = runtime.input_location(input_dir), runtime.input_location(output_dir)
    ckpt_manifest, kind = read_checkpoint(input_dir)
    recorded = (ckpt_manifest.get("inputs") or {}).get("teacher", {}).get("digests")
    digests = teacher_digests(cfg.teacher)
    if recorded and recorded != digests:
        raise ValueError(f"teacher.pretrained_dir={cfg.teacher.pretrained_dir} is not the teacher {input_dir} was "
                         f"distilled from ({(ckpt_manifest['inputs']['teacher'].get('pretrained_dir'))}): weight "
                         "digests differ")  # fmt: skip
    motion_dir = frames = size = None
    if kind == "video":  # as the checkpoint was distilled: its motion module, frames and frame size
        motion_dir = (ckpt_manifest["inputs"].get("motion_adapter") or {}).get("path")
        if not motion_dir or not (Path(motion_dir) / "config.json").is_file():
            raise FileNotFoundError(f"--input {input_dir}: the motion module it was distilled from ({motion_dir}) "
                                    "is not a MotionAdapter directory here (no config.json)")  # fmt: skip
        distilled = ckpt_manifest["config"]["distill_video"]
        frames, size = e.frames or distilled["frames"], e.resolution or distilled["resolution"]
    prompt_set = load_prompts(cfg, kind)
    prompts = prompt_set.prompts
    items = plan(cfg, prompts)
    grid = [it["index"] for it in items if it["index"] % e.videos_per_prompt == 0][: e.grid_prompts]
    timings = {"checks_s": time.monotonic() - t0}
    with staged_output(output_dir, overwrite=overwrite) as out:
        staging = out.dir
        runtime.connect(ray_config)
        t = time.monotonic()
        workers = min(e.workers, len(items))
        actor_cls = ray.remote(num_cpus=e.cpus_per_worker, num_gpus=e.gpus_per_worker)(Evaluator)
        actors = [actor_cls.remote(cfg, str(input_dir), kind, motion_dir, frames, size) for _ in range(workers)]
        shards = [items[w::workers] for w in range(workers)]
        log.info("evaluating %s (%s) on %d items × %s with %d actors", storage.basename(input_dir), kind, len(items),
                 {m: list(s) for m, s in methods_of(cfg, kind).items()}, workers)  # fmt: skip
        results_by_worker: dict[int, dict] = {}
        with RemoteProgress("evaluate", len(items) * len(run_order(cfg, kind)), "generations") as shown:
            pending = {a.run.remote(shard, grid, shown.reporter(str(w))): w
                       for w, (a, shard) in enumerate(zip(actors, shards, strict=True))}  # fmt: skip
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                w = pending.pop(done[0])
                results_by_worker[w] = ray.get(done[0])
                log.info("eval: worker %d finished its %d items (%d/%d workers, %.0f s)", w, len(shards[w]),
                         len(results_by_worker), workers, time.monotonic() - t)  # fmt: skip
        per_worker = [results_by_worker[w] for w in range(workers)]
        real = floor = None
        if e.fvd_reference == "real":
            real = ray.get(actors[0].features.remote(references(prompt_set, items, frames)))
            if has_set_b(prompt_set.reference):
                real_b = ray.get(actors[0].features.remote(references(prompt_set, items, frames, which=REFERENCE_B)))
                floor = floor_of(cfg, kind, real, real_b)
        for a in actors:
            ray.kill(a)
        timings["generate_s"] = time.monotonic() - t
        results = aggregate(cfg, kind, per_worker, items, real)
        student = STUDENT[kind]
        ref_latency = results["ddim"][e.reference_steps]["latency_s"]
        report = {
            "checkpoint": {"name": ckpt_manifest["name"], "digest": ckpt_manifest["digest"], "path": str(input_dir),
                           "stage": ckpt_manifest["stage"], "kind": kind},  # fmt: skip
            "setup": {
                "prompts": e.prompts, "num_prompts": len(prompts), "videos_per_prompt": e.videos_per_prompt,
                "seed": e.seed, "frames": frames,
                "size": None, "guidance_scale": guidance_of(cfg), "reference_steps": e.reference_steps, "fd": FD[kind],
                "extractor": "toy CLIP image tower (scorers.clip), frame embeddings pooled over time [mean, last − "
                             "first]" if e.fvd_extractor == "toy_clip" else f"I3D TorchScript {e.i3d_path}",
                "reference": f"the prompt set's reference renders ({prompt_set.reference})" if e.fvd_reference == "real"
                             else f"the teacher's DDIM {e.reference_steps}-step output (CFG) from disjoint seeds",
                "clip_model": cfg.scorers.clip.model, "workers": workers, "torch_threads": e.torch_threads,
                "n": len(items), "bootstrap": e.bootstrap,
                "intervals": f"95%: set distances by half-set subsampling, means by percentile bootstrap; "
                             f"{e.bootstrap} replicates",
            },  # fmt: skip
            "methods": {m: list(s) for m, s in methods_of(cfg, kind).items()},
            "student": STUDENT[kind],
            "metrics": [FD[kind], "kid", f"{FD[kind]}_teacher", "latent_mse", "clipsim",
                        *(["temporal"] if kind == "video" else []), "latency_s", "peak_mem_mb", "unet_evals"],
            "results": {m: {str(s): r for s, r in per.items()} for m, per in results.items()},
            "headline": headline_of(kind, results),
            "floor": floor,
            "speedup": {str(s): ref_latency / r["latency_s"] for s, r in results[student].items()},
        }  # fmt: skip
        report["setup"]["size"] = int(next(iter(per_worker[0]["grid"].values())).shape[1]) if grid else None
        columns = [(student, s) for s in e.student_steps] + [("ddim", s) for s in e.teacher_steps]
        samples = "samples.png" if kind == "image" else "samples.gif"
        report["samples"] = samples
        captions = "; ".join(repr(prompts[items[i]["prompt"]]["caption"]) for i in grid)
        report["samples_layout"] = f"rows: prompts {captions}; columns: " + ", ".join(f"{m}@{s}" for m, s in columns)
        if grid:
            merged_grid = {k: v for shard in per_worker for k, v in shard["grid"].items()}
            write_samples(kind, merged_grid, columns, grid, staging / samples)
        write_plots(report, staging / "plots")
        (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (staging / "report.md").write_text(markdown(report))
        (staging / "report.html").write_text(report_html(report, staging))
        timings["total_s"] = time.monotonic() - t0
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = Manifest(
            name=f"{ckpt_manifest['name']}-eval", kind="eval-report", job=JOB, stage=JOB, profile=cfg.profile,
            digest=tree_digest(files, staging),
            inputs={
                "checkpoint": {"name": ckpt_manifest["name"], "digest": ckpt_manifest["digest"],
                               "path": str(input_dir)},
                "teacher": {"pretrained_dir": cfg.teacher.pretrained_dir, "digests": digests},
                **({"motion_adapter": {"path": str(motion_dir)}} if motion_dir else {}),
            },
            config=to_dict(cfg), code_version=code_version(), files=[p.relative_to(staging).as_posix() for p in files],
            timings=timings, extra={"headline": report["headline"]},
        )  # fmt: skip
        where = out.commit(manifest)
    log.info("eval report: %s (%s)", storage.join(where, "report.md"), json.dumps(report["headline"]))
    return EvalResult(output=where, manifest=manifest.to_dict(), report=report)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.evaluate --input CHECKPOINT --output REPORT_DIR [--config ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.evaluate",
        doc=__doc__,
        input_help="a stage-1 or stage-2 output (manifest.json + lora/ or pipeline/)",
        output_help="new directory for report.json, report.md, plots/, samples and manifest.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
