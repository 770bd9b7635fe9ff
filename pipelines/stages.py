"""The stage graph, declared once: every stage of the platform under its one name, what feeds it, what it reads of
the config, and what it writes.

One name per stage, everywhere: the job module ``pipelines.<name>``, the config section ``<name>``, the Prefect flow
(the name with hyphens: ``distill-image``), the CLI command (``alcm distill image``), the ``stage`` of the manifests
it writes and the registry's ``alcm.stage`` tag. The retrain flow, the served and deployed flows and the benches
read this module; nothing else lists the stages.

What a stage reads of the config is its **settings** class: a frozen dataclass whose fields are the sections of
:class:`pipelines.config.Config` it needs (``profile`` plus, e.g., ``decode``, ``teacher``, ``consistency`` and
its own section). A job receives only its settings (:meth:`Stage.settings_of`), so it cannot read anything else,
and everything derived from what a job reads is derived from its settings: the retrain flow's cache key of the
stage (:meth:`Stage.key`), the training run's name and the latent cache's key (:mod:`pipelines.stage_job`,
:mod:`pipelines.latent_cache`). How a job reaches Ray (``ray``) is not a setting: it does not change what the job
writes, so it is passed beside the settings and is in no key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from contracts.digests import json_digest
from filters.decode import DecodeConfig
from models.captioner_config import CaptionerConfig
from models.consistency_config import ConsistencyConfig
from models.pose import PoseConfig
from models.scorer_config import ScorersConfig
from models.teacher_config import TeacherConfig
from pipelines.config import Config, to_dict
from pipelines.data_config import ClipConfig, CurateImagesConfig, CurateVideosConfig, RecaptionConfig
from pipelines.eval_config import EvaluateConfig
from pipelines.train_config import AdaptConfig, DistillImageConfig, DistillVideoConfig

# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class CurateImagesSettings:
    """What the image curation job reads."""

    profile: str
    decode: DecodeConfig
    scorers: ScorersConfig
    curate_images: CurateImagesConfig


@dataclass(frozen=True)
class CurateVideosSettings:
    """What the video curation job reads."""

    profile: str
    decode: DecodeConfig
    video: ClipConfig
    pose: PoseConfig
    scorers: ScorersConfig
    curate_videos: CurateVideosConfig


@dataclass(frozen=True)
class RecaptionSettings:
    """What the recaptioning job reads."""

    profile: str
    decode: DecodeConfig
    video: ClipConfig
    pose: PoseConfig
    captioner: CaptionerConfig
    scorers: ScorersConfig
    recaption: RecaptionConfig


@dataclass(frozen=True)
class DistillImageSettings:
    """What stage 1 reads."""

    profile: str
    decode: DecodeConfig
    teacher: TeacherConfig
    consistency: ConsistencyConfig
    distill_image: DistillImageConfig


@dataclass(frozen=True)
class DistillVideoSettings:
    """What stage 2 reads."""

    profile: str
    decode: DecodeConfig
    teacher: TeacherConfig
    consistency: ConsistencyConfig
    distill_video: DistillVideoConfig


@dataclass(frozen=True)
class AdaptSettings:
    """What stage 3 reads."""

    profile: str
    decode: DecodeConfig
    teacher: TeacherConfig
    consistency: ConsistencyConfig
    adapt: AdaptConfig


@dataclass(frozen=True)
class EvaluateSettings:
    """What the evaluation job reads (a checkpoint's frames, resolution and motion module come from its manifest)."""

    profile: str
    scorers: ScorersConfig
    teacher: TeacherConfig
    consistency: ConsistencyConfig
    evaluate: EvaluateConfig


# ------------------------------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Input:
    """One input of a stage: the job's keyword argument (and CLI option) and where it comes from."""

    option: str
    """The job's keyword (``input_dir``, ``stage1``, ``control_data``, ...); the CLI option is ``--<option>`` with
    hyphens (``--input`` for ``input_dir``)."""
    source: str
    """The upstream stage whose output it is, or ``raw:<kind>`` for raw data (``raw:images``, ``raw:videos``,
    ``raw:dancers``)."""


@dataclass(frozen=True)
class Stage:
    """One stage: its name, what it reads (:attr:`settings`), what feeds it and what it writes."""

    name: str
    """The one name (see the module docstring)."""
    title: str
    """What it does, for people."""
    settings: type
    """Its settings class: the config sections it reads."""
    inputs: tuple[Input, ...]
    """Its inputs, the main one (``input_dir``) first."""
    output: str
    """Name of the ``WORK/<output>`` link to its latest output in a retrain work directory."""
    produces: str
    """``dataset``, ``checkpoint`` or ``report``."""
    training: bool = False
    """It trains on accelerators (its deployment runs one flow run at a time)."""

    @property
    def job(self) -> str:
        """The job module (``python -m pipelines.<name>``)."""
        return f"pipelines.{self.name}"

    @property
    def flow(self) -> str:
        """The Prefect flow's name."""
        return self.name.replace("_", "-")

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections it reads (its settings' fields)."""
        return tuple(f.name for f in dataclasses.fields(self.settings))

    @property
    def upstream(self) -> tuple[str, ...]:
        """The stages whose outputs it reads."""
        return tuple(i.source for i in self.inputs if not i.source.startswith("raw:"))

    def settings_of(self, cfg: Config):
        """Its settings, taken from the whole config: what its job receives."""
        return self.settings(**{name: getattr(cfg, name) for name in self.sections})

    def key(self, cfg: Config, inputs: dict[str, str], code_version: str) -> str:
        """The identity of this stage's output for the retrain flow's cache: its name, its inputs' digests, every
        setting it reads and the code version (sha256 hex)."""
        identity = {"stage": self.name, "inputs": dict(sorted(inputs.items())),
                    "settings": to_dict(self.settings_of(cfg)), "code": code_version}  # fmt: skip
        return json_digest(identity)


STAGES: tuple[Stage, ...] = (
    Stage("curate_images", "image-text curation", CurateImagesSettings, (Input("input_dir", "raw:images"),),
          output="curated-images", produces="dataset"),
    Stage("curate_videos", "text-video curation", CurateVideosSettings, (Input("input_dir", "raw:videos"),),
          output="curated-videos", produces="dataset"),
    Stage("recaption", "BLIP recaptioning of dance videos", RecaptionSettings, (Input("input_dir", "raw:dancers"),),
          output="recaptioned-dancers", produces="dataset"),
    Stage("distill_image", "stage 1: image consistency distillation (spatial LCM-LoRA)", DistillImageSettings,
          (Input("input_dir", "curate_images"),), output="distilled-image", produces="checkpoint", training=True),
    Stage("distill_video", "stage 2: video consistency distillation (motion layers)", DistillVideoSettings,
          (Input("input_dir", "curate_videos"), Input("stage1", "distill_image")), output="distilled-video",
          produces="checkpoint", training=True),
    Stage("adapt", "stage 3: teacher-free adaptation (control and image-to-video adapters)", AdaptSettings,
          (Input("input_dir", "distill_video"), Input("control_data", "recaption"),
           Input("video_data", "curate_videos")),
          output="adapters", produces="checkpoint", training=True),
    Stage("evaluate", "evaluation of the stage-2 checkpoint against the teacher's samplers", EvaluateSettings,
          (Input("input_dir", "distill_video"),), output="eval-video", produces="report"),
)  # fmt: skip
"""Every stage, in an order that runs each after the stages it reads."""

BY_NAME = {s.name: s for s in STAGES}

EVALUATED = {"distill_image": "image", "distill_video": "video"}
"""The stages whose checkpoints the evaluation job evaluates (and the gate promotes), with their kind."""

LEGACY_NAMES = {
    "image_consistency_distillation": "distill_image",
    "video_consistency_distillation": "distill_video",
    "teacher_free_adaptation": "adapt",
}
"""Stage tags of checkpoints written before every stage had one name (their manifests and registry entries)."""


def stage(name: str) -> Stage:
    """The stage named ``name`` (or tagged with a legacy name); raises naming the stages."""
    found = BY_NAME.get(LEGACY_NAMES.get(name, name))
    if found is None:
        raise ValueError(f"stage {name!r}: choose one of {', '.join(BY_NAME)}")
    return found


def canonical(tag: str | None) -> str | None:
    """A manifest's or registry entry's stage tag under its current name (legacy tags mapped, others unchanged)."""
    return LEGACY_NAMES.get(tag, tag) if tag else tag


def needed(chosen: list[str]) -> set[str]:
    """The stages ``chosen`` and, transitively, every stage whose output they read."""
    out = set(chosen)
    for s in reversed(STAGES):
        if s.name in out:
            out |= set(s.upstream)
    return out
