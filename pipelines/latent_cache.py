"""The training stages' data step: decode the rows of a dataset, encode them with the teacher's frozen VAE and text
encoder once, in a Ray Data actor pool, and cache the result; then read the cache in its order for training.

What the encode step receives is an :class:`EncodeSpec` (which teacher, its dtype, the decode limits, the frame
size, how many frames, what to encode), and the cache's key is derived from exactly that, with the teacher's
directory replaced by the digests of the weights the encoders load, plus the dataset's digest
(:func:`cache_key`). A second run on the same data and encoders, by any stage, finds the cache and skips the step;
another resolution, other weights or other data encode anew.

A cache is ``<cache_dir>/<key>/`` with ``data/part-<row offset, 12 digits>.parquet`` (one row per input row, in
the dataset's order: the tensor columns, ``key``, ``caption`` and ``error``, "" when the row encoded, else ``reason:
detail``) and ``cache.json`` (the counts by reason, the tensor columns written, every file's sha256). The encode
actors write the files themselves, each a fixed range of input rows named by its offset
(:mod:`pipelines.cache_write`), so the files' sorted names are the dataset's order whatever actor finished first:
the order of a cache is the order the stages train in, and the same data gives the same bytes. Locally the cache is
written in a temporary directory renamed into place, so a concurrent run publishing the same key first wins and a
killed run leaves no partial cache. ``cache_dir`` may be an object-store URI: the actors write the files straight
under the key's prefix and the driver commits the cache by writing ``cache.json`` last. A local ``cache_dir`` on a
cluster must be a filesystem every node mounts (the actors write it, the training workers read it).

The training workers receive the cache as a :class:`pipelines.rank_data.CacheShards` (its files and tensor
columns) and each reads its own rank's rows (:mod:`pipelines.rank_data`); :func:`cached_dataset` gives the same
rows as a Ray Dataset for other readers.

Clips: the first ``frames`` frames of a clip, latents (C, F, h, w); images: latents (C, h, w). Captions: the text
encoder's last hidden state, or token ids (``text: false``: the workers run the text encoder). A row that fails to
decode (or a clip with too few frames) is counted with its reason and not trained on: every row is accounted for.
Stage 1 may also train without a cache (``latents: false``): :func:`pixel_dataset` then decodes pixels for the
workers, after counting the failures.
"""

from __future__ import annotations

import dataclasses
import functools
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
import ray
from ray.data.expressions import col

from contracts import storage
from contracts.digests import json_digest, sha256_file
from filters.decode import DecodeConfig, decode_image
from pipelines.cache_write import write_cache
from pipelines.config import to_dict
from pipelines.rank_data import CacheShards

log = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Bumped whenever what the encode step writes changes (so older caches are not reused). 3: files written by the
encode actors, one per fixed range of input rows (:mod:`pipelines.cache_write`)."""
LIGHT_CPUS = 0.25
"""CPUs of each read task feeding the training workers: the workers hold most CPUs while they train (a read task
asking for a whole CPU would wait for ever on a machine the workers fill)."""
CACHED_TENSORS = ("latents", "encoder_hidden_states", "input_ids", "control")
"""Tensor columns an encode step may write (the cache records which it wrote)."""


@dataclass(frozen=True)
class EncodeSpec:
    """Everything the encode step receives (and so everything its cache key covers)."""

    teacher_dir: str
    """The teacher's diffusers directory: ``vae/``, ``text_encoder/``, ``tokenizer/`` are loaded from it."""
    dtype: str
    """The encoders' dtype (``teacher.dtype``)."""
    decode: DecodeConfig
    """Safe-decoding limits of the images or frames."""
    resolution: int
    """Frames are resized (shorter side) and centre-cropped to this square size."""
    frames: int | None = None
    """Frames per clip (the first ``frames`` of each); None: one image per row."""
    latents: bool = True
    """Encode the pixels to VAE latents (posterior mean × ``scaling_factor``)."""
    text: bool = True
    """Encode the captions to the text encoder's last hidden state (else token ids)."""
    control: bool = False
    """Also keep each clip's ``control`` frames (pose maps), uint8 (3, F, r, r)."""

    @property
    def columns(self) -> list[str]:
        """The dataset columns the encode step reads."""
        media = "image" if self.frames is None else "frames"
        return ["key", "caption", media, *(["control"] if self.control else [])]


@dataclass(frozen=True)
class EncodePool:
    """How the encode step runs (not in the cache key: it does not change what is written)."""

    batch_size: int
    actors: int
    cpus: float
    gpus: float

    @classmethod
    def of(cls, section) -> EncodePool:
        """The pool of a stage's section (its ``encode_batch_size``, ``encode_actors``, ``encode_cpus``,
        ``encode_gpus``)."""
        return cls(section.encode_batch_size, section.encode_actors, section.encode_cpus, section.encode_gpus)


@dataclass(frozen=True)
class TrainingData:
    """What the workers train on, and how the dataset's rows were accounted for."""

    dataset: ray.data.Dataset | CacheShards
    """A latent cache's files and tensor columns (each training worker reads its rank's rows:
    :mod:`pipelines.rank_data`), or a Ray Dataset (pixels, without a cache)."""
    counts: dict
    """``rows``, ``encoded`` and ``failed`` (reason → rows)."""
    cache: dict | None
    """Where the cache is (``path``, ``key``, ``seconds`` it took, ``hit``: it was there already), or None without
    one."""


def cache_key(spec: EncodeSpec, dataset_digest: str, teacher_digests: dict[str, str]) -> str:
    """The cache's name: a digest of the dataset, of the weights the encoders load and of everything else in
    ``spec`` (see the module docstring)."""
    settings = to_dict(spec)
    del settings["teacher_dir"]  # identified by the weights' digests instead: a moved teacher reuses its caches
    parts = {
        "format": CACHE_FORMAT,
        "dataset": dataset_digest,
        "vae": {k: v for k, v in teacher_digests.items() if k.startswith("vae/")} if spec.latents else None,
        "text_encoder": {k: v for k, v in teacher_digests.items() if k.startswith("text_encoder/")}
        if spec.text
        else None,
        "spec": settings,
    }
    return json_digest(parts, 16)


# ------------------------------------------------------------------------------------------------ decoding


def decode_square(data: bytes | None, resolution: int, decode: DecodeConfig) -> tuple[np.ndarray | None, str]:
    """Image bytes → uint8 resolution×resolution×3 (shorter side resized, centre crop), or (None, reason)."""
    decoded = decode_image(data, dataclasses.replace(decode, scorer_size=resolution))
    if not decoded.ok:
        return None, f"{decoded.reason}: {decoded.error}"
    w, h = decoded.thumbnail_size
    thumb = np.frombuffer(decoded.thumbnail, dtype=np.uint8).reshape(h, w, 3)
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return thumb[top : top + resolution, left : left + resolution], ""


def decode_clip(
    frames: list[bytes] | None, n: int, resolution: int, decode: DecodeConfig
) -> tuple[np.ndarray | None, str]:
    """The first ``n`` frames (PNG/JPEG bytes) → uint8 (n, r, r, 3), or (None, reason)."""
    if not frames or len(frames) < n:
        return None, f"too_few_frames: {len(frames or [])} < {n}"
    out = []
    for i, data in enumerate(frames[:n]):
        img, error = decode_square(data, resolution, decode)
        if img is None:
            return None, f"{error.split(':', 1)[0]}: frame {i}: {error}"
        out.append(img)
    return np.stack(out), ""


def pixels(images: list[np.ndarray]) -> np.ndarray:
    """uint8 N×H×W×3 → float32 N×3×H×W in [-1, 1] (the SD VAE's input range)."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------ the encoder


class Encoder:
    """Decodes and encodes a batch of rows (images or clips) as ``spec`` says; built once per encode actor
    (:class:`pipelines.cache_write.CacheWriter`), so the VAE, the text encoder and the tokenizer load once per
    actor."""

    def __init__(self, spec: EncodeSpec, threads: int, use_gpu: bool) -> None:
        import torch

        from models.factory import load_part, load_tokenizer
        from models.teacher_config import TeacherConfig

        self.spec = spec
        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        teacher = TeacherConfig(pretrained_dir=spec.teacher_dir, dtype=spec.dtype)
        self.vae = load_part(teacher, "vae", device=self.device) if spec.latents else None
        self.text = load_part(teacher, "text_encoder", device=self.device) if spec.text else None
        self.tokenizer = load_tokenizer(teacher)

    def __call__(self, batch: pa.Table) -> dict:
        import torch

        spec, n = self.spec, self.spec.frames or 1
        captions = batch.column("caption").to_pylist()
        media, controls, errors = self._decode(batch)
        out: dict = {
            "key": np.array(batch.column("key").to_pylist(), dtype=object),
            "caption": np.array(captions, dtype=object),
            "error": np.array(errors, dtype=object),
        }
        ids = self.tokenizer([c or "" for c in captions], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
        with torch.no_grad():
            if self.vae is not None:
                # a failed row is encoded as a blank image to keep the batch rectangular; its error excludes it
                x = torch.from_numpy(pixels([f for clip in media for f in clip])).to(self.device, self.vae.dtype)
                lat = self.vae.encode(x).latent_dist.mean.float() * self.vae.config.scaling_factor
                if spec.frames is None:
                    out["latents"] = lat.cpu().numpy()
                else:
                    out["latents"] = lat.reshape(len(media), n, *lat.shape[1:]).permute(0, 2, 1, 3, 4).cpu().numpy()
            if self.text is not None:
                out["encoder_hidden_states"] = self.text(ids.to(self.device))[0].float().cpu().numpy()
            else:
                out["input_ids"] = ids.numpy().astype(np.int64)
        if spec.control:
            out["control"] = np.stack(controls).transpose(0, 4, 1, 2, 3).copy()  # (B, 3, F, r, r) uint8
        return out

    def _decode(self, batch: pa.Table) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Per row: its frames (uint8 (F, r, r, 3), blank when it failed), its control frames and its error."""
        spec, r = self.spec, self.spec.resolution
        n = spec.frames or 1
        blank = np.zeros((n, r, r, 3), np.uint8)
        media, controls, errors = [], [], []
        if spec.frames is None:
            for data in batch.column("image").to_pylist():
                img, error = decode_square(data, r, spec.decode)
                media.append(img[None] if img is not None else blank)
                errors.append(error)
            return media, controls, errors
        control_col = batch.column("control").to_pylist() if spec.control else [None] * batch.num_rows
        for frames, control in zip(batch.column("frames").to_pylist(), control_col, strict=True):
            clip, error = decode_clip(frames, n, r, spec.decode)
            ctrl = None
            if spec.control and not error:
                ctrl, error = decode_clip(control, n, r, spec.decode)
                error = f"control_{error}" if error else ""
            media.append(clip if not error else blank)
            controls.append(ctrl if ctrl is not None and not error else blank)
            errors.append(error)
        return media, controls, errors


# ------------------------------------------------------------------------------------------------ the cache


def _counts(reasons: Counter) -> dict:
    """Input counts of the manifest from rows per failure reason ("" = decoded)."""
    failed = {reason: n for reason, n in sorted(reasons.items()) if reason}
    rows = sum(reasons.values())
    return {"rows": rows, "encoded": rows - sum(failed.values()), "failed": failed}


def encode_cached(spec: EncodeSpec, files: list[Path] | list[str], key: str, *, cache_dir: str, pool: EncodePool
                  ) -> tuple[Path | str, dict]:  # fmt: skip
    """Encode the rows of ``files`` into ``cache_dir/<key>/`` unless it is there (see the module docstring); return
    its data directory and description (``cache.json``, with ``hit``: True when the cache was there and nothing was
    encoded). ``cache_dir`` may be an object-store URI (:func:`_encode_to_store`)."""
    if storage.is_uri(cache_dir):
        return _encode_to_store(spec, files, key, cache_dir=storage.normalize(cache_dir), pool=pool)
    root = Path(cache_dir) / key
    data_dir = root / "data"
    meta_file = root / "cache.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        problem = cache_problem(root, meta)
        if problem is None:
            log.info("latent cache hit: %s (%d rows encoded, %d files verified)", root, meta["counts"]["encoded"],
                     len(meta["files"]))  # fmt: skip
            return data_dir, {**meta, "hit": True}
        log.warning("latent cache %s is not used: %s; encoding it again", root, problem)
        aside = root.parent / f".{key}.corrupt-{uuid.uuid4().hex[:8]}"
        os.rename(root, aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp = root.parent / f".{key}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        meta = _encode(spec, files, key, tmp, pool)
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
    return data_dir, {**meta, "hit": False}


def _encode_to_store(spec: EncodeSpec, files: list[Path] | list[str], key: str, *, cache_dir: str,
                     pool: EncodePool) -> tuple[str, dict]:  # fmt: skip
    """:func:`encode_cached` into an object-store prefix: the encode actors write the files straight under
    ``cache_dir/<key>/data/``, the driver writes ``cache.json`` last (a cache without it is unfinished and encoded
    again; the files are deterministic, so two runs writing one key write the same bytes)."""
    root = storage.join(cache_dir, key)
    meta_file = storage.join(root, "cache.json")
    if storage.is_file(meta_file):
        meta = json.loads(storage.read_bytes(meta_file))
        problem = cache_problem(root, meta)
        if problem is None:
            log.info("latent cache hit: %s (%d rows encoded, %d files verified)", root, meta["counts"]["encoded"],
                     len(meta["files"]))  # fmt: skip
            return storage.join(root, "data"), {**meta, "hit": True}
        log.warning("latent cache %s is not used: %s; encoding it again", root, problem)
        storage.delete_tree(meta_file)  # unfinished again: the files below are replaced
    storage.delete_tree(storage.join(root, "data"))  # an unfinished attempt's files
    meta = _encode(spec, files, key, root, pool)
    log.info("encoded %d rows into %s in %.1f s (failed: %s)", meta["counts"]["encoded"], root, meta["seconds"],
             meta["counts"]["failed"] or "none")  # fmt: skip
    return storage.join(root, "data"), {**meta, "hit": False}


def cache_problem(root: Path | str, meta: dict) -> str | None:
    """Why the finished cache at ``root`` (a path or an object-store prefix) may not be reused: a data file that
    ``cache.json`` lists and is missing or whose sha256 differs, one it does not list, or no digests recorded (a
    cache from before they were); None when every file verifies."""
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return "its cache.json records no file digests (written before they were)"
    try:
        present = {f"data/{Path(f).name}" for f in cache_files(storage.join(root, "data"))}
    except FileNotFoundError:
        present = set()
    extra = sorted(present - set(files))
    if extra:
        return f"{storage.join(root, extra[0])} is not listed in its cache.json"
    for rel, expected in sorted(files.items()):
        where = storage.join(root, rel)
        if rel not in present:
            return f"{where} is missing (cache.json lists it)"
        actual = storage.sha256(where) if storage.is_uri(where) else sha256_file(Path(where))
        if actual != expected:
            return f"{where}: sha256:{actual} does not match sha256:{expected} recorded in its cache.json"
    return None


def _encode(spec: EncodeSpec, files: list[Path] | list[str], key: str, root: Path | str, pool: EncodePool) -> dict:
    """Encode the rows of ``files`` into ``root/data`` (a local directory or an object-store prefix; the actors
    write the files: :func:`pipelines.cache_write.write_cache`), then write ``root/cache.json``; return it."""
    t = time.monotonic()
    written = write_cache(functools.partial(Encoder, spec, int(pool.cpus), pool.gpus > 0), files,
                          storage.join(root, "data"), columns=spec.columns, batch_size=pool.batch_size,
                          actors=pool.actors, cpus=pool.cpus, gpus=pool.gpus)  # fmt: skip
    reasons: Counter = Counter()
    for w in written:
        reasons.update(w["reasons"])
    meta = {
        "key": key,
        "counts": _counts(reasons),
        "columns": [c for c in CACHED_TENSORS if c in written[0]["columns"]],
        "seconds": round(time.monotonic() - t, 1),
        "files": {f"data/{w['file']}": w["sha256"] for w in written},
    }
    storage.write_bytes(storage.join(root, "cache.json"), (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def cache_files(data_dir: Path | str) -> list[Path] | list[str]:
    """A cache's Parquet files in their order (URIs for a cache on an object store)."""
    if storage.is_uri(data_dir):
        files = [storage.join(data_dir, rel) for rel, _ in storage.list_files(str(data_dir))
                 if rel.endswith(".parquet") and "/" not in rel]  # fmt: skip
    else:
        files = sorted(Path(data_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"latent cache {data_dir}: no Parquet files")
    return files


def cache_shards(data_dir: Path | str, columns: list[str]) -> CacheShards:
    """A cache as the training workers receive it: its files in order (absolute paths or URIs) and ``columns``."""
    files = cache_files(data_dir)
    return CacheShards(tuple(f if storage.is_uri(f) else str(Path(f).resolve()) for f in files), tuple(columns))


def cached_dataset(data_dir: Path | str, columns: list[str]) -> ray.data.Dataset:
    """The encoded rows of a cache (``error == ""``), tensor ``columns`` only, in the cache's order, read with
    light tasks (the rows the training workers divide among themselves: :mod:`pipelines.rank_data`)."""
    ds = ray.data.read_parquet([str(f) for f in cache_files(data_dir)], columns=["error", *columns],
                               ray_remote_args={"num_cpus": LIGHT_CPUS})  # fmt: skip
    ds.context.execution_options.preserve_order = True  # for any reader (the training loop sets it for its own)
    return ds.filter(expr=col("error") == "").select_columns(columns)


def training_data(spec: EncodeSpec, files: list[Path] | list[str], key: str, *, cache_dir: str,
                  pool: EncodePool) -> TrainingData:  # fmt: skip
    """The encoded rows of ``files`` from the cache ``cache_dir/<key>`` (encoded first if it is not there)."""
    data_dir, meta = encode_cached(spec, files, key, cache_dir=cache_dir, pool=pool)
    cache = {"path": str(data_dir)[: -len("/data")], "key": key, "seconds": meta["seconds"], "hit": meta["hit"]}
    return TrainingData(cache_shards(data_dir, meta["columns"]), meta["counts"], cache)


# ------------------------------------------------------------------------------------------------ without a cache


def _decode_reasons(batch: pa.Table, resolution: int, decode: dict) -> dict:
    """The failure reason of every row ("" when it decodes)."""
    decode_cfg = DecodeConfig(**decode)
    errors = [decode_square(data, resolution, decode_cfg)[1] for data in batch.column("image").to_pylist()]
    return {"reason": np.array([e.split(":", 1)[0] for e in errors], dtype=object)}


def _decode_for_training(batch: pa.Table, resolution: int, decode: dict, tokenizer_dir: str) -> dict:
    """Decoded pixels and token ids for the workers (failed rows dropped, counted before)."""
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
        "pixel_values": pixels(images) if n else np.zeros((0, 3, resolution, resolution), np.float32),
        "input_ids": np.asarray(ids, dtype=np.int64).reshape(n, -1),
    }


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str, cls):
    return cls.from_pretrained(path, local_files_only=True)


def pixel_dataset(spec: EncodeSpec, files: list[Path], *, batch_size: int) -> TrainingData:
    """Images without a cache (``spec.latents`` false): decoded pixels and token ids for the workers, which encode
    them every step. A first Ray Data pass decodes every image to count failures by reason (every row is accounted
    for); the workers' decode then drops the same rows."""
    decode = to_dict(spec.decode)
    reasons = (
        ray.data.read_parquet([str(f) for f in files], columns=["image"])
        .map_batches(_decode_reasons, fn_kwargs={"resolution": spec.resolution, "decode": decode},
                     batch_format="pyarrow", batch_size=batch_size)
        .groupby("reason")
        .count()
        .take_all()
    )  # fmt: skip
    counts = _counts(Counter({r["reason"]: r["count()"] for r in reasons}))
    ds = ray.data.read_parquet(
        [str(f) for f in files], columns=["caption", "image"], ray_remote_args={"num_cpus": LIGHT_CPUS}
    ).map_batches(
        _decode_for_training,
        num_cpus=LIGHT_CPUS,
        fn_kwargs={"resolution": spec.resolution, "decode": decode,
                   "tokenizer_dir": str(Path(spec.teacher_dir) / "tokenizer")},
        batch_format="pyarrow",
        batch_size=batch_size,
    )  # fmt: skip
    return TrainingData(ds, counts, None)
