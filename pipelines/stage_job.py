"""The shape of every training stage's job: check inputs → output → encode → train → export → manifest.

Each stage job (:mod:`pipelines.distill_image`, :mod:`pipelines.distill_video`, :mod:`pipelines.adapt`) is a short
sequence of these named steps on a :class:`StageJob`; stages differ in the data they read, the Task they train and
what they export, not in the steps:

1. **check inputs** (driver, before any work): a dataset (:func:`read_dataset`: its manifest, every file against
   the digest its manifest recorded, no file it does not list, the columns the stage reads), an upstream checkpoint
   (:func:`read_checkpoint`: written by the stage expected, its files intact), the teacher and other weights
   digested (:func:`read_teacher`, :func:`model_digests`).
2. **output** (:meth:`StageJob.output`): the checkpoint storage checked (``<stage>.train.storage_path``), the
   output staged (:mod:`contracts.publish`: nothing is visible until the commit), Ray connected.
3. **encode** (:meth:`StageJob.encode`): the latent cache (:mod:`pipelines.latent_cache`), every row counted; fewer
   rows than one global batch is an error naming the input.
4. **train** (:meth:`StageJob.train`): the Task under the shared loop (:mod:`pipelines.train_loop`) as the run
   :func:`run_name` names from the job's inputs and settings, so re-running the same job resumes its run (also with
   more ``train.steps``) and other data, weights or settings start a run of their own; what the Task exported is
   moved into the output.
5. **manifest** (:meth:`StageJob.commit`): name, inputs, counts, metrics, run, the settings the job received, every
   file's digest and a content digest over the files and inputs; written last, which publishes the output.

Every step's wall time is recorded in the manifest's ``timings`` (``<step>_s``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from contracts import storage
from contracts.digests import json_digest, sha256_file
from contracts.manifest import (
    Manifest,
    check_listed,
    checkpoint_digest,
    code_version,
    files_map,
    output_root,
    read_manifest,
    verify_files,
)
from contracts.mirror import local_copy
from contracts.publish import StagedOutput, staged_output
from models.teacher_config import TeacherConfig
from pipelines import runtime
from pipelines.config import to_dict
from pipelines.data_config import RayConfig
from pipelines.latent_cache import EncodePool, EncodeSpec, TrainingData, cache_key, pixel_dataset, training_data
from pipelines.runtime import JobResult
from pipelines.stages import canonical
from pipelines.storage import check_storage
from pipelines.train_config import RESUMABLE_FIELDS, TrainConfig

log = logging.getLogger(__name__)

PREVIEW_FIELDS = ("preview_prompts", "preview_steps")
"""Settings of a stage's section that only shape its preview image: not part of a run's name."""


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Dataset:
    """A dataset a stage reads: where it is (a path or a committed object-store output), its manifest, its Parquet
    files in order (paths, or URIs that Ray Data's read tasks read directly on any node)."""

    path: Path | str
    manifest: dict
    files: list[Path] | list[str]

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    def record(self) -> dict:
        """The dataset as a manifest input (what lineage follows)."""
        m = self.manifest
        return {"name": m.get("name"), "digest": m["digest"], "version": m.get("version"), "path": str(self.path)}


def read_dataset(path: str | Path, *, columns: tuple[str, ...], what: str, option: str = "--input") -> Dataset:
    """The dataset at ``path`` (``kept/*.parquet`` or, for recaptioned sets, ``captioned/*.parquet``, plus
    ``manifest.json``; a directory or an object-store URI), checked as the module docstring says; errors name
    ``option``, the path and ``what`` was expected."""
    if storage.is_uri(path):
        path = storage.normalize(path)
        if not storage.is_file(storage.join(path, "manifest.json")):
            raise FileNotFoundError(f"{option} {path}: no committed manifest.json; expected {what}")
    else:
        path = Path(path).resolve()  # training workers may run elsewhere: an absolute path
        if not path.is_dir():
            raise FileNotFoundError(f"{option} {path} does not exist ({what})")
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{option} {path}: no manifest.json; expected {what}")
    manifest = read_manifest(path)
    if "digest" not in manifest:
        raise ValueError(f"{option} {path}: manifest.json has no dataset digest; re-run the job that wrote it")
    verify_files(path, manifest)
    files = _parquet_files(path, manifest)
    if not files:
        raise FileNotFoundError(f"{option} {path}: no kept/*.parquet or captioned/*.parquet (the dataset kept no "
                                "rows?)")  # fmt: skip
    check_listed(path, manifest, files)
    fs, first = storage.filesystem(str(files[0]))
    names = pq.read_schema(first, filesystem=fs).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{option} {path}: the Parquet files lack column(s) {missing}; expected {what}")
    return Dataset(path, manifest, files)


def _parquet_files(path: str | Path, manifest: dict) -> list[Path] | list[str]:
    if not storage.is_uri(path):
        return sorted((path / "kept").glob("*.parquet")) or sorted((path / "captioned").glob("*.parquet"))
    root = output_root(path, manifest)
    for top in ("kept", "captioned"):
        found = [storage.join(root, top, rel) for rel, _ in storage.list_files(storage.join(root, top))
                 if rel.endswith(".parquet") and "/" not in rel]  # fmt: skip
        if found:
            return found
    return []


def read_checkpoint(path: str | Path, *, stage: str, needs: tuple[str, ...], option: str, what: str) -> dict:
    """The manifest of ``stage``'s output at ``path`` (``needs``: files it must hold, relative to it), its files
    checked against their recorded digests; errors name ``option`` and ``what`` was expected. An object-store
    output is checked in its local copy (:func:`contracts.mirror.local_copy`, which the loaders read)."""
    if storage.is_uri(path):
        local = local_copy(path) if storage.is_file(storage.join(path, "manifest.json")) else None
    else:
        local = Path(path).resolve()
    if local is None or not (local / "manifest.json").is_file() or not all((local / n).is_file() for n in needs):
        raise FileNotFoundError(f"{option} {path}: expected {what} (manifest.json and {', '.join(needs)})")
    manifest = read_manifest(local)
    if canonical(manifest.get("stage")) != stage:
        raise ValueError(f"{option} {path}: manifest stage is {manifest.get('stage')!r}, not {stage}'s; expected "
                         f"{what}")  # fmt: skip
    verify_files(local, manifest)
    return manifest


@dataclass(frozen=True)
class Teacher:
    """The teacher's directory and the digests of the weights loaded from it."""

    root: Path
    digests: dict[str, str]

    def record(self) -> dict:
        return {"pretrained_dir": str(self.root), "digests": self.digests}


def read_teacher(cfg: TeacherConfig) -> Teacher:
    """``teacher.pretrained_dir`` checked and its VAE, text encoder and UNet weights digested (nothing loaded)."""
    from models.factory import teacher_digests, teacher_dir

    return Teacher(teacher_dir(cfg), teacher_digests(cfg))


def model_digests(path: str | Path) -> dict[str, str]:
    """Digests of a diffusers model directory's safetensors and config files (a MotionAdapter, a ControlNet)."""
    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: not a diffusers model directory (no config.json)")
    files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".json"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{root}: no .safetensors weights")
    return {p.name: sha256_file(p) for p in files}


def run_name(settings: Any, stage: str, label: str, inputs: dict) -> str:
    """``<train.name>-<label>-<8 hex>``: the hex digests ``inputs`` (what the run trains on and from) and every
    setting the job received except :data:`~pipelines.train_config.RESUMABLE_FIELDS` and :data:`PREVIEW_FIELDS`,
    so re-running the same job resumes its run (also with more steps) and any other input or setting starts its
    own."""
    received = to_dict(settings)
    section = received[stage]
    for name in RESUMABLE_FIELDS:
        section["train"].pop(name)
    for name in PREVIEW_FIELDS:
        section.pop(name, None)
    return f"{getattr(settings, stage).train.name}-{label}-{json_digest({'inputs': inputs, 'settings': received}, 8)}"


# ------------------------------------------------------------------------------------------------ the job


@dataclass(frozen=True)
class Trained:
    """What a training run left in the output: its record, final metrics and the Task's export description."""

    run: dict
    metrics: dict
    export: dict


class StageJob:
    """One run of a training stage's job (see the module docstring)."""

    def __init__(self, stage: str, settings: Any, output_dir: Path, *, overwrite: bool = False) -> None:
        self.stage, self.settings = stage, settings
        self.output_dir = storage.normalize(output_dir) if storage.is_uri(output_dir) else Path(output_dir).resolve()
        self.output_name = storage.basename(self.output_dir)
        self.overwrite = overwrite
        self.timings: dict[str, float] = {}
        self.loss_history: dict[str, list[list[float]]] = {}
        """Each training run's ``[step, loss, lr]`` points (run label → points), written into the manifest."""
        self._t0 = time.monotonic()
        self._out: StagedOutput | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as ``<name>_s``."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[f"{name}_s"] = time.monotonic() - t

    @contextmanager
    def output(self, train: TrainConfig, ray_config: RayConfig | None) -> Iterator[StagedOutput]:
        """Check the run's checkpoint storage, stage the output (removed if the block raises) and connect Ray."""
        check_storage(train.storage_path, f"{self.stage}.train.storage_path")
        with staged_output(self.output_dir, overwrite=self.overwrite) as out:
            runtime.connect(ray_config)
            self._out = out
            yield out

    def encode(self, spec: EncodeSpec, dataset: Dataset, teacher: Teacher, *, section, option: str = "--input",
               step: str = "encode") -> TrainingData:  # fmt: skip
        """The training data of ``dataset`` from its latent cache (``section``: the stage's section, with
        ``cache_dir``, the encode pool and ``train``); raises naming ``option`` when it has no full global batch."""
        with self.step(step):
            if spec.latents:
                key = cache_key(spec, dataset.digest, teacher.digests)
                data = training_data(spec, dataset.files, key, cache_dir=section.cache_dir, pool=EncodePool.of(section))
            else:
                data = pixel_dataset(spec, dataset.files, batch_size=section.encode_batch_size)
        batch = section.train.micro_batch_size * section.train.num_workers
        if data.counts["encoded"] < batch:
            raise ValueError(f"{option} {dataset.path}: {data.counts['encoded']} trainable rows, fewer than one batch "
                             f"({self.stage}.train.micro_batch_size × num_workers = {batch})")  # fmt: skip
        return data

    def train(self, make_task: Callable[[], Any], data: TrainingData, train: TrainConfig, *, inputs: dict,
              export_into: Path, label: str | None = None, keep_description: bool = True,
              step: str = "train") -> Trained:  # fmt: skip
        """Train ``make_task``'s Task on ``data`` as the run :func:`run_name` names (``label``: the output's name by
        default), then move what it exported into ``export_into`` (its ``export.json`` description too, with
        ``keep_description``). Called inside :meth:`output`."""
        from pipelines.train_loop import train as train_loop

        if self._out is None:
            raise RuntimeError("StageJob.train runs inside StageJob.output (the export goes into the staged output)")
        label = label or self.output_name
        cfg = dataclasses.replace(train, name=run_name(self.settings, self.stage, label, inputs))
        scratch = self._out.dir / f".export-{label}"  # inside the staged output: a failed job leaves nothing
        log.info("%s: run %s under %s, %d steps on %d workers", self.stage, cfg.name, cfg.storage_path, cfg.steps,
                 cfg.num_workers)  # fmt: skip
        with self.step(step):
            result = train_loop(make_task, data.dataset, cfg, export_dir=scratch)
        try:
            description = json.loads((scratch / "export.json").read_text())
            export_into.mkdir(parents=True, exist_ok=True)
            for child in sorted(scratch.iterdir()):
                if child.name != "export.json" or keep_description:
                    shutil.move(str(child), str(export_into / child.name))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        run = {"name": cfg.name, "storage_path": cfg.storage_path, "checkpoint": result.checkpoint_path,
               "resumed_from": result.metrics.get("resumed_from")}  # fmt: skip
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
        self.loss_history[label] = list(result.metrics.get("loss_history") or [])
        return Trained(run=run, metrics=metrics, export=description)

    def commit(self, out: StagedOutput, *, name: str, inputs: dict, counts: dict | None = None,
               metrics: dict | None = None, **fields: Any) -> JobResult:  # fmt: skip
        """Write the checkpoint's manifest (see the module docstring; ``fields``: the stage's own) and publish it."""
        self.timings["total_s"] = time.monotonic() - self._t0
        files = files_map(out.dir)
        manifest = Manifest(
            name=name, kind="checkpoint", job=self.stage, stage=self.stage, profile=self.settings.profile,
            digest=checkpoint_digest(files, inputs), inputs=inputs, config=to_dict(self.settings),
            code_version=code_version(), counts=counts, metrics=metrics, files=files,
            timings={k: round(v, 1) for k, v in self.timings.items()},
            extra={"loss_history": self.loss_history, **fields} if self.loss_history else fields,
        )  # fmt: skip
        where = out.commit(manifest)
        log.info("%s done in %.0f s: %s (loss %s at step %s)", self.stage, self.timings["total_s"], where,
                 (metrics or {}).get("loss"), (metrics or {}).get("step"))  # fmt: skip
        return JobResult(output=where, manifest=manifest.to_dict())
