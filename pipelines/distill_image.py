"""Stage 1, image consistency distillation: a curated image dataset + a frozen SD teacher → a spatial LCM-LoRA.

Steps and where they run:

1. **check inputs** (driver): the input is a curated image dataset (``kept/*.parquet`` + ``manifest.json``, as
   ``alcm curate images`` writes it); its manifest digest is this run's data lineage. The teacher directory is
   checked and its weight files digested (``teacher.pretrained_dir``) before any work.
2. **encode** (Ray Data actor pool, VAE and text encoder loaded once per actor), when
   ``distill_image.precompute_latents``: every kept image is decoded safely, resized (shorter side) and
   centre-cropped to ``distill_image.resolution``, and encoded to its VAE posterior mean × ``scaling_factor``; with
   ``precompute_text`` its caption to the text encoder's last hidden state (else to token ids). The result is cached
   under ``distill_image.cache_dir/<key>/``, the key being a digest of the dataset digest, the VAE and text encoder
   digests and the settings, so a second run on the same data and teacher skips the step. A row that fails to decode
   is counted with its reason in the manifest (``counts``) and not trained on; every kept row is accounted for.
   Without precomputation the workers get decoded pixels (and token ids) and encode them every step.
3. **train** (Ray Train + DeepSpeed, :mod:`pipelines.train_loop`): the stage-1 Task
   (:class:`models.stage1.ImageConsistencyTask`) under the shared loop, as the run ``<train.name>-<output dir
   name>-<digest of inputs and settings>`` (:func:`run_name`) under ``train.storage_path``: re-running the same
   command (also with more ``train.steps``) resumes from its latest checkpoint; other data, teacher or settings
   start a new run.
4. **export + preview** (driver): the final checkpoint's export (``lora/pytorch_lora_weights.safetensors`` in
   diffusers format, ``lora/lcm_lora_kohya.safetensors`` in the kohya layout), loaded back into a
   ``StableDiffusionPipeline`` with ``LCMScheduler`` to sample ``preview_prompts`` (``preview.png``: teacher 25-step
   DDIM with CFG above, the LoRA at ``preview_steps`` LCM steps without CFG below, same seeds).
5. **manifest**: inputs (dataset name/digest/path, teacher directory and weight digests), config, metrics, the run
   and its checkpoint, file digests, timings; written with the outputs into a staging directory renamed into place.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from contracts.digests import sha256_file
from contracts.manifest import check_listed, code_version, read_manifest, verify_files
from contracts.publish import staged_output
from filters.decode import DecodeConfig, decode_image
from pipelines import runtime
from pipelines.config import Config, to_dict
from pipelines.storage import check_storage

log = logging.getLogger(__name__)

JOB = "distill_image"
STAGE = "image_consistency_distillation"
LIGHT_CPUS = 0.25
"""CPUs of each read task feeding the training workers: the workers hold most CPUs while they train (a read task
asking for a whole CPU would wait for ever on a machine the workers fill)."""
CACHE_FORMAT = 1
"""Bumped whenever what the encode step writes changes (so older caches are not reused)."""


@dataclass(frozen=True)
class DistillImageResult:
    """Where stage 1 put its outputs, and what its manifest says."""

    output: Path
    manifest: dict


# ------------------------------------------------------------------------------------------------------- inputs


def read_input_dataset(input_dir: Path) -> tuple[dict, list[Path]]:
    """The curated dataset's manifest and its ``kept/`` Parquet files; clear errors when it is not one."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"--input {input_dir} does not exist (a curated image dataset directory)")
    manifest_file = input_dir / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"--input {input_dir}: no manifest.json; stage 1 trains on a curated image dataset (alcm curate images)"
        )
    manifest = read_manifest(input_dir)
    if "digest" not in manifest:
        raise ValueError(f"--input {input_dir}: manifest.json has no dataset digest; re-run curation")
    verify_files(input_dir, manifest)
    files = sorted((input_dir / "kept").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"--input {input_dir}: no kept/*.parquet (the dataset kept no rows?)")
    check_listed(input_dir, manifest, files)
    schema = pq.read_schema(files[0])
    missing = [c for c in ("key", "caption", "image") if c not in schema.names]
    if missing:
        raise ValueError(f"--input {input_dir}: kept/ lacks column(s) {missing}; is this a curated image dataset?")
    return manifest, files


def cache_key(cfg: Config, dataset_digest: str, teacher_digests: dict[str, str]) -> str:
    """Digest naming the latent cache of (dataset, VAE, text encoder, settings)."""
    d = cfg.distill_image
    parts = {
        "format": CACHE_FORMAT,
        "dataset": dataset_digest,
        "vae": {k: v for k, v in teacher_digests.items() if k.startswith("vae/")},
        "text_encoder": {k: v for k, v in teacher_digests.items() if k.startswith("text_encoder/")}
        if d.precompute_text
        else None,
        "dtype": cfg.teacher.dtype,
        "resolution": d.resolution,
        "text": d.precompute_text,
        "decode": to_dict(cfg.curation.decode),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- encode


def decode_square(data: bytes | None, resolution: int, decode: DecodeConfig) -> tuple[np.ndarray | None, str]:
    """Image bytes → uint8 resolution×resolution×3 (shorter side resized, centre crop), or (None, reason)."""
    decoded = decode_image(data, dataclasses.replace(decode, scorer_size=resolution))
    if not decoded.ok:
        return None, f"{decoded.reason}: {decoded.error}"
    w, h = decoded.thumbnail_size
    thumb = np.frombuffer(decoded.thumbnail, dtype=np.uint8).reshape(h, w, 3)
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return thumb[top : top + resolution, left : left + resolution], ""


def _pixels(images: list[np.ndarray]) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×3×H×W in [-1, 1] (the SD VAE's input range)."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


class _Encoder:
    """Ray Data actor: decodes and encodes a batch of kept rows (module docstring, step 2)."""

    def __init__(self, cfg_dict: dict) -> None:
        import torch

        from models.factory import load_part, load_tokenizer
        from pipelines.config import config_from_dict

        cfg = config_from_dict(cfg_dict)
        self.d, self.decode = cfg.distill_image, cfg.curation.decode
        torch.set_num_threads(max(1, int(self.d.encode_cpus)))
        self.device = "cuda" if self.d.encode_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.vae = load_part(cfg.teacher, "vae", device=self.device) if self.d.precompute_latents else None
        self.text = load_part(cfg.teacher, "text_encoder", device=self.device) if self.d.precompute_text else None
        self.tokenizer = load_tokenizer(cfg.teacher)

    def __call__(self, batch: pa.Table) -> dict:
        import torch

        keys, captions = batch.column("key").to_pylist(), batch.column("caption").to_pylist()
        images, errors = [], []
        for data in batch.column("image").to_pylist():
            img, error = decode_square(data, self.d.resolution, self.decode)
            images.append(img)
            errors.append(error)
        out: dict = {"key": np.array(keys, dtype=object), "caption": np.array(captions, dtype=object)}
        out["error"] = np.array(errors, dtype=object)
        ids = self.tokenizer(
            [c or "" for c in captions],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            if self.vae is not None:
                r = self.d.resolution
                # a failed row is encoded as a blank image to keep the batch rectangular; its error excludes it
                filled = [img if img is not None else np.zeros((r, r, 3), np.uint8) for img in images]
                x = torch.from_numpy(_pixels(filled)).to(self.device, self.vae.dtype)
                latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
                out["latents"] = latents.float().cpu().numpy()
            if self.text is not None:
                out["encoder_hidden_states"] = self.text(ids.to(self.device))[0].float().cpu().numpy()
            else:
                out["input_ids"] = ids.numpy().astype(np.int64)
        return out


def _decode_reasons(batch: pa.Table, resolution: int, decode: dict) -> dict:
    """The failure reason of every row ("" when it decodes)."""
    decode_cfg = DecodeConfig(**decode)
    errors = [decode_square(data, resolution, decode_cfg)[1] for data in batch.column("image").to_pylist()]
    return {"reason": np.array([e.split(":", 1)[0] for e in errors], dtype=object)}


def _counts(reasons: Counter) -> dict:
    """Input counts of the manifest from rows per failure reason ("" = decoded)."""
    failed = {reason: n for reason, n in sorted(reasons.items()) if reason}
    rows = sum(reasons.values())
    return {"rows": rows, "encoded": rows - sum(failed.values()), "failed": failed}


def _decode_for_training(batch: pa.Table, resolution: int, decode: dict, tokenizer_dir: str) -> dict:
    """Without precomputation: decoded pixels and token ids for the workers (failed rows dropped, counted before)."""
    from transformers import CLIPTokenizer

    decode_cfg = DecodeConfig(**decode)
    tokenizer = _tokenizer(tokenizer_dir, CLIPTokenizer)
    images, captions = [], []
    for data, caption in zip(batch.column("image").to_pylist(), batch.column("caption").to_pylist(), strict=True):
        img, error = decode_square(data, resolution, decode_cfg)
        if not error:
            images.append(img)
            captions.append(caption or "")
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    n = len(images)
    return {
        "pixel_values": _pixels(images) if n else np.zeros((0, 3, resolution, resolution), np.float32),
        "input_ids": np.asarray(ids, dtype=np.int64).reshape(n, -1),
    }


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str, cls):
    return cls.from_pretrained(path, local_files_only=True)


def encode_to_cache(cfg: Config, files: list[Path], key: str) -> tuple[Path, dict]:
    """Run the encode step into ``cache_dir/<key>/`` unless it is there; return its data directory and counts."""
    return encode_cached(
        cfg.distill_image,
        files,
        key,
        encoder=_Encoder,
        encoder_args=(to_dict(cfg),),
        columns=["key", "caption", "image"],
    )


CACHED_TENSORS = ("latents", "encoder_hidden_states", "input_ids", "control")
"""Tensor columns an encode step may write (the cache records which it wrote)."""


def encode_cached(settings, files: list[Path], key: str, *, encoder, encoder_args: tuple, columns: list[str]):
    """Encode the rows of ``files`` (``columns``) with the Ray Data actor class ``encoder`` into
    ``settings.cache_dir/<key>/`` (``data/*.parquet`` + ``cache.json``, rows in the order of ``files``) unless it is
    there, staged in a temporary directory renamed into place (a concurrent run publishing the same key first wins).
    ``encoder`` returns an ``error`` column ("" when the row encoded, else ``reason: detail``); the counts are by
    reason. ``settings``: any config section with ``cache_dir`` and ``encode_batch_size/actors/cpus/gpus``. Returns
    the data directory and the cache description."""
    root = Path(settings.cache_dir) / key
    data_dir = root / "data"
    meta_file = root / "cache.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        log.info("latent cache hit: %s (%d rows encoded)", root, meta["counts"]["encoded"])
        return data_dir, meta
    tmp = root.parent / f".{key}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        t = time.monotonic()
        ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
        # The cache keeps the dataset's row order (this dataset's own context: reads copy the global one), so the
        # training data order, and with it the trained weights, do not depend on which encode actor finished first.
        ds.context.execution_options.preserve_order = True
        encoded = ds.map_batches(
            encoder,
            fn_constructor_args=encoder_args,
            batch_size=settings.encode_batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=settings.encode_actors),
            num_cpus=settings.encode_cpus,
            num_gpus=settings.encode_gpus,
        )
        written = write_in_order(encoded, tmp / "data")
        errors = pq.read_table(tmp / "data", columns=["error"]).column("error").to_pylist()
        if len(errors) != written:
            raise RuntimeError(f"latent cache {tmp}: wrote {written} rows, read back {len(errors)}")
        names = pq.read_schema(cache_files(tmp / "data")[0]).names
        meta = {
            "key": key,
            "counts": _counts(Counter(e.split(":", 1)[0] for e in errors)),
            "columns": [c for c in CACHED_TENSORS if c in names],
            "seconds": round(time.monotonic() - t, 1),
        }
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not meta_file.is_file():  # not a concurrent run that published the same cache first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            meta = json.loads(meta_file.read_text())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("encoded %d rows into %s in %.1f s (failed: %s)", meta["counts"]["encoded"], root, meta["seconds"],
             meta["counts"]["failed"] or "none")  # fmt: skip
    return data_dir, meta


CACHE_FILE_BYTES = 256 * 2**20
"""A cache file is closed once it holds this many bytes of Arrow data (several files let readers run in parallel)."""


def write_in_order(ds: ray.data.Dataset, out_dir: Path, max_file_bytes: int = CACHE_FILE_BYTES) -> int:
    """Write ``ds`` to ``out_dir/part-NNNNN.parquet`` in its row order; return the number of rows written.

    The driver iterates the dataset (in order under ``preserve_order``) and appends each block as a row group. Ray
    Data's ``write_parquet`` can bundle blocks into a file in the order they arrive, even under ``preserve_order``
    (measured on Ray 2.60: 1 run in 4 moved a 64-row block), and the order of a latent cache is the order the
    stages train in."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer, part, size, rows = None, 0, 0, 0
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows == 0:
                continue
            if writer is not None and (size >= max_file_bytes or not block.schema.equals(writer.schema)):
                writer.close()
                writer, part, size = None, part + 1, 0
            if writer is None:
                writer = pq.ParquetWriter(str(out_dir / f"part-{part:05d}.parquet"), block.schema)
            writer.write_table(block)
            size += block.nbytes
            rows += block.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def cache_files(data_dir: Path) -> list[Path]:
    """A cache's Parquet files in their order."""
    files = sorted(Path(data_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"latent cache {data_dir}: no Parquet files")
    return files


def cached_dataset(data_dir: Path, columns: list[str]) -> ray.data.Dataset:
    """The encoded rows of a cache (``error == ""``), tensor ``columns`` only, in the cache's order, read with
    light tasks."""
    ds = ray.data.read_parquet([str(f) for f in cache_files(data_dir)], columns=["error", *columns],
                               ray_remote_args={"num_cpus": LIGHT_CPUS})  # fmt: skip
    ds.context.execution_options.preserve_order = True  # for any reader (the training loop sets it for its own)
    return ds.filter(expr=col("error") == "").select_columns(columns)


def training_dataset(cfg: Config, files: list[Path], key: str) -> tuple[ray.data.Dataset, dict, dict | None]:
    """The dataset the workers read (tensor columns only), the input counts, and the cache description."""
    d = cfg.distill_image
    if d.precompute_latents:
        data_dir, meta = encode_to_cache(cfg, files, key)
        ds = cached_dataset(data_dir, meta["columns"])
        cache = {"path": str(data_dir.parent), "key": key, "seconds": meta["seconds"]}
        return ds, meta["counts"], cache
    # Without a cache, a first Ray Data pass decodes every image to count failures by reason (the manifest accounts
    # for every row); the workers' decode then drops the same rows.
    decode = cfg.curation.decode
    reasons = (
        ray.data.read_parquet([str(f) for f in files], columns=["image"])
        .map_batches(
            _decode_reasons,
            fn_kwargs={"resolution": d.resolution, "decode": to_dict(decode)},
            batch_format="pyarrow",
            batch_size=d.encode_batch_size,
        )  # fmt: skip
        .groupby("reason")
        .count()
        .take_all()
    )
    counts = _counts(Counter({r["reason"]: r["count()"] for r in reasons}))
    ds = ray.data.read_parquet(
        [str(f) for f in files], columns=["caption", "image"], ray_remote_args={"num_cpus": LIGHT_CPUS}
    ).map_batches(
        _decode_for_training,
        num_cpus=LIGHT_CPUS,
        fn_kwargs={
            "resolution": d.resolution,
            "decode": to_dict(decode),
            "tokenizer_dir": str(Path(cfg.teacher.pretrained_dir) / "tokenizer"),
        },
        batch_format="pyarrow",
        batch_size=d.encode_batch_size,
    )
    return ds, counts, None


# ------------------------------------------------------------------------------------------------------- preview


def write_preview(cfg: Config, lora_dir: Path, out_file: Path) -> dict:
    """Teacher (25-step DDIM, CFG at the middle of the training w range) above the LoRA (LCM, no CFG), same seeds."""
    from PIL import Image

    from models.sampling import image_grid, load_pipeline, sample

    d, c = cfg.distill_image, cfg.consistency
    prompts = list(d.preview_prompts)
    seeds = list(range(len(prompts)))
    guidance = 1.0 + 0.5 * (c.w_min + c.w_max)
    t = time.monotonic()
    teacher = load_pipeline(cfg.teacher.pretrained_dir, scheduler="ddim")
    top = sample(teacher, prompts, steps=25, guidance_scale=guidance, seeds=seeds)
    student = load_pipeline(cfg.teacher.pretrained_dir, scheduler="lcm", lora_dir=lora_dir)
    bottom = sample(student, prompts, steps=d.preview_steps, guidance_scale=1.0, seeds=seeds)
    Image.fromarray(image_grid([top, bottom])).save(out_file)
    return {
        "file": out_file.name,
        "prompts": prompts,
        "rows": [f"teacher DDIM 25 steps, guidance_scale {guidance:g}", f"LCM-LoRA {d.preview_steps} steps, no CFG"],
        "seconds": round(time.monotonic() - t, 1),
    }


# ---------------------------------------------------------------------------------------------------------- run


def build_stage1_task(teacher, consistency, *, target: str = "ema", ema_decay: float = 0.95, seed: int = 0):
    """The stage-1 Task from config, on this worker's training device (its GPU when it has one): what the job hands
    the shared loop, as ``functools.partial(build_stage1_task, ...)`` (importable, so Ray workers unpickle it)."""
    import torch

    from models.factory import build_teacher
    from models.stage1 import ImageConsistencyTask

    device = torch.device("cpu")
    if torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    parts = build_teacher(teacher, device=device)
    return ImageConsistencyTask(parts, teacher.lora, consistency, target=target, ema_decay=ema_decay, seed=seed)


#: Training settings that may change between a run and its resumption (more steps, other logging/checkpointing).
RESUMABLE_FIELDS = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_failures")


def run_name(cfg: Config, output_dir: Path, dataset_digest: str, teacher_digests: dict[str, str]) -> str:
    """``<train.name>-<output dir name>-<8 hex>``: the hex digests the inputs and every setting that shapes the
    training (not :data:`RESUMABLE_FIELDS`), so re-running the same job resumes its run (also with more steps), and
    a job with other data, teacher or settings starts a run of its own."""
    d = to_dict(cfg.distill_image)
    for name in RESUMABLE_FIELDS:
        d["train"].pop(name)
    d.pop("preview_prompts"), d.pop("preview_steps")
    identity = {
        "dataset": dataset_digest,
        "teacher": teacher_digests,
        "teacher_config": to_dict(cfg.teacher),
        "consistency": to_dict(cfg.consistency),
        "distill_image": d,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.distill_image.train.name}-{Path(output_dir).name}-{digest}"


def run(cfg: Config, input_dir: Path, output_dir: Path, *, overwrite: bool = False) -> DistillImageResult:
    """Distil a spatial LCM-LoRA from ``cfg.teacher`` on the curated dataset ``input_dir`` (module docstring)."""
    from models.factory import teacher_digests, teacher_dir
    from pipelines.train_loop import train

    t0 = time.monotonic()
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    dataset_manifest, files = read_input_dataset(input_dir)
    teacher_root = teacher_dir(cfg.teacher)
    digests = teacher_digests(cfg.teacher)
    timings: dict[str, float] = {"checks_s": time.monotonic() - t0}
    check_storage(cfg.distill_image.train.storage_path, "distill_image.train.storage_path")
    with staged_output(output_dir, overwrite=overwrite) as out:
        staging = out.dir
        runtime.connect(cfg.ray)
        t = time.monotonic()
        key = cache_key(cfg, dataset_manifest["digest"], digests)
        ds, counts, cache = training_dataset(cfg, files, key)
        timings["encode_s"] = time.monotonic() - t
        if counts["encoded"] < cfg.distill_image.train.micro_batch_size * cfg.distill_image.train.num_workers:
            raise ValueError(
                f"--input {input_dir}: {counts['encoded']} trainable rows, fewer than one batch "
                f"(distill_image.train.micro_batch_size × num_workers)"
            )
        train_cfg = dataclasses.replace(
            cfg.distill_image.train, name=run_name(cfg, output_dir, dataset_manifest["digest"], digests)
        )
        make_task = functools.partial(
            build_stage1_task,
            cfg.teacher,
            cfg.consistency,
            target=cfg.distill_image.target,
            ema_decay=cfg.distill_image.ema_decay,
            seed=train_cfg.seed,
        )
        t = time.monotonic()
        log.info("stage 1: run %s under %s, %d steps on %d workers", train_cfg.name, train_cfg.storage_path,
                 train_cfg.steps, train_cfg.num_workers)  # fmt: skip
        result = train(make_task, ds, train_cfg, export_dir=staging / "lora")
        timings["train_s"] = time.monotonic() - t
        preview = None
        if cfg.distill_image.preview_prompts:
            t = time.monotonic()
            preview = write_preview(cfg, staging / "lora", staging / "preview.png")
            timings["preview_s"] = time.monotonic() - t
        export = json.loads((staging / "lora" / "export.json").read_text())
        files_out = {
            p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        timings["total_s"] = time.monotonic() - t0
        manifest = {
            "kind": "checkpoint",
            "stage": STAGE,
            "job": JOB,
            "name": f"{cfg.profile}-lcm-lora",
            "profile": cfg.profile,
            "inputs": {
                "dataset": {
                    "name": dataset_manifest.get("name"),
                    "digest": dataset_manifest["digest"],
                    "version": dataset_manifest.get("version"),
                    "path": str(input_dir),
                },
                "teacher": {"pretrained_dir": str(teacher_root), "digests": digests},
            },
            "counts": counts,
            "export": export,
            "run": {
                "name": train_cfg.name,
                "storage_path": train_cfg.storage_path,
                "checkpoint": result.checkpoint_path,
                "resumed_from": result.metrics.get("resumed_from"),
            },
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
            "latent_cache": cache,
            "preview": preview,
            "files": files_out,
            "config": {
                "teacher": to_dict(cfg.teacher),
                "consistency": to_dict(cfg.consistency),
                "distill_image": to_dict(cfg.distill_image),
            },
            "code_version": code_version(),
            "timings": {k: round(v, 1) for k, v in timings.items()},
        }
        manifest["digest"] = (
            "sha256:"
            + hashlib.sha256(
                json.dumps({"files": files_out, "inputs": manifest["inputs"]}, sort_keys=True).encode()
            ).hexdigest()
        )
        out.commit(manifest)
    log.info("stage 1 done in %.0f s: LoRA in %s (loss %.4f at step %s)", timings["total_s"], output_dir / "lora",
             manifest["metrics"].get("loss", float("nan")), manifest["metrics"].get("step"))  # fmt: skip
    return DistillImageResult(output=output_dir, manifest=manifest)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.distill_image --input CURATED --output DIR [--config PROFILE|JSON] [--set k=v ...]``."""
    return runtime.job_main(
        argv,
        module="pipelines.distill_image",
        doc=__doc__,
        run=run,
        input_help="curated image dataset (kept/ + manifest.json)",
        output_help="new directory for lora/, preview.png and manifest.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
