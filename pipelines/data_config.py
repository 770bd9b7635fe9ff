"""Configuration of the data jobs: how jobs reach Ray, the toy world, image and video curation, clip sampling and
recaptioning. Torch- and Ray-free, like every config module, so a profile loads without importing either.

Each class is one section of a profile (:class:`pipelines.config.Config`) and validates its own values in
``__post_init__``, naming the field (``name=value``) so that the loader can name the full dotted key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from contracts.redact import is_secret_env_name
from filters.dedup import DedupConfig
from filters.rules import FilterConfig
from filters.video_rules import VideoFilterConfig


@dataclass(frozen=True)
class RayConfig:
    """How jobs reach Ray."""

    address: str | None = None
    """Cluster address (``ray://host:10001`` or ``auto``); null means ``$RAY_ADDRESS`` if set, else a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray started for a job (null: all of this machine's). Ignored for a cluster."""
    dashboard_address: str | None = None
    """Ray Jobs API address (``http://host:8265``). When it is set, or ``address`` or ``$RAY_ADDRESS`` is an
    ``http(s)://`` address, flows submit their jobs to it by default (``submit: null``)."""
    job_timeout_s: dict[str, float] = field(default_factory=dict)
    """Per-stage limit on a submitted job's run time, stage name → seconds (e.g. ``{distill_video: 86400}``); a
    stage not named runs without a limit (the default: none)."""
    driver_num_cpus: float = 1.0
    """CPUs the submitted job's driver reserves: on a cluster whose head declares ``num-cpus: 0`` (``infra/``) the
    driver then runs on a worker group, not on the head."""
    driver_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources the driver also reserves, e.g. ``{cpu_node: 0.01}`` to pin it to the CPU group."""
    forward_env: tuple[str, ...] = (
        "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE", "ALCM_CODE_VERSION",
    )  # fmt: skip
    """Environment variables copied from the submitter into the job's runtime environment when set. Ray shows a
    job's runtime environment in its dashboard, so a name that holds a secret (``AWS_SECRET_ACCESS_KEY``,
    ``*_TOKEN``, ``*_PASSWORD``...: ``contracts.redact.is_secret_env_name``) is refused: credentials come from the
    cluster's own environment (a Kubernetes Secret, ``infra/kuberay/raycluster.yaml``)."""

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus={self.num_cpus!r}: must be ≥ 1, or null for all CPUs")
        from pipelines.stages import BY_NAME  # here: the stage graph imports the config modules

        for name, seconds in self.job_timeout_s.items():
            if name not in BY_NAME:
                raise ValueError(f"job_timeout_s.{name}: no such stage; choose from {', '.join(BY_NAME)}")
            if seconds <= 0:
                raise ValueError(f"job_timeout_s.{name}={seconds!r}: must be > 0 seconds (leave the stage out for "
                                 "no limit)")  # fmt: skip
        if self.driver_num_cpus < 0:
            raise ValueError(f"driver_num_cpus={self.driver_num_cpus!r}: must be ≥ 0")
        if any(v < 0 for v in self.driver_resources.values()) or {"CPU", "GPU"} & set(self.driver_resources):
            raise ValueError(f"driver_resources={self.driver_resources!r}: custom resources ≥ 0 only (the driver's "
                             "CPUs are driver_num_cpus)")  # fmt: skip
        for name in self.forward_env:
            if is_secret_env_name(name):
                raise ValueError(f"forward_env: {name!r} holds a secret, and Ray shows a job's environment in its "
                                 "dashboard; give the cluster the secret itself (a Kubernetes Secret in the Ray "
                                 "pods' env, infra/kuberay/raycluster.yaml)")  # fmt: skip

    def jobs_address(self) -> str | None:
        """The Ray Jobs API address to submit to, if a cluster is configured: ``dashboard_address``, else an
        ``http(s)://`` ``address`` or ``$RAY_ADDRESS``; None means no cluster (jobs run against a local Ray)."""
        if self.dashboard_address:
            return self.dashboard_address
        for candidate in (self.address, os.environ.get("RAY_ADDRESS")):
            if candidate and candidate.startswith(("http://", "https://")):
                return candidate
        return None



@dataclass(frozen=True)
class ToyWorldConfig:
    """Size and seed of the generated toy world."""

    seed: int = 0
    """Seed of the generator; the same seed gives byte-identical data."""
    images: int = 2000
    """Number of image-text rows (clean and degraded)."""
    videos: int = 50
    """Number of text-video clips of moving shapes."""
    dancers: int = 10
    """Number of TikTok-style dancer sequences."""
    image_size: int = 64
    """Side of the square toy images, in pixels."""

    def __post_init__(self) -> None:
        # numpy's generators (default_rng([seed, stream, ...])) reject negative seeds.
        for name in ("seed", "images", "videos", "dancers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size!r}: must be ≥ 16 pixels")


@dataclass(frozen=True)
class CurateImagesConfig:
    """The image-text curation job (``pipelines.curate_images``): its filters, dedup, actors and output."""

    dataset_name: str = "curated-images"
    """Name recorded in the output manifest."""
    filters: FilterConfig = FilterConfig()
    """Thresholds of the rule filters."""
    dedup: DedupConfig = DedupConfig()
    """Exact and near-duplicate detection."""
    batch_size: int = 64
    """Rows per batch in the decode and scoring stages."""
    scorer_actors: int = 2
    """Size of the Ray Data actor pool running the model scorers (each actor loads the models once)."""
    scorer_cpus: float = 1.0
    """CPUs reserved by each scorer actor."""
    scorer_gpus: float = 0.0
    """GPUs reserved by each scorer actor (0 on CPU machines)."""
    decode_cpus: float = 0.5
    """CPUs reserved by each read+decode task."""
    folder_chunk: int = 256
    """Image files of a plain folder input read per task."""
    rows_per_file: int = 5000
    """Largest number of rows in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        for name in ("batch_size", "scorer_actors", "folder_chunk", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.decode_cpus <= 0:
            raise ValueError(f"decode_cpus={self.decode_cpus!r}: must be > 0")
        if self.scorer_cpus <= 0:
            raise ValueError(f"scorer_cpus={self.scorer_cpus!r}: must be > 0")
        if self.scorer_gpus < 0:
            raise ValueError(f"scorer_gpus={self.scorer_gpus!r}: must be ≥ 0")


@dataclass(frozen=True)
class ClipConfig:
    """How clips are decoded and sampled from videos and frame sequences."""

    frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Source frames between two sampled frames."""
    short_side: int = 512
    """Shorter side of the stored frames, in pixels (aspect kept)."""
    square: bool = False
    """Centre-crop the stored frames to ``short_side`` × ``short_side``."""
    frame_folder_fps: float = 30.0
    """Frame rate assumed for frame-folder (TikTok) sequences, which carry none."""
    max_bytes: int = 536_870_912
    """Largest video file read (bytes); larger ones are quarantined as ``too_large``."""
    max_pixels: int = 8_294_400
    """Largest frame (width × height) decoded; larger ones are quarantined as ``too_large`` (3840×2160 default)."""
    max_decode_frames: int = 18_000
    """Most frames decoded from one input; longer inputs are rejected as ``too_long``."""
    analysis_size: int = 32
    """Side of the grey thumbnails used for motion and scene-cut statistics."""
    chunk: int = 64
    """Video files or sequences read per task."""

    def __post_init__(self) -> None:
        for name in ("frames", "stride", "short_side", "max_bytes", "max_pixels", "max_decode_frames", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        if self.analysis_size < 4:
            raise ValueError(f"analysis_size={self.analysis_size!r}: must be ≥ 4 pixels")
        if self.frame_folder_fps <= 0:
            raise ValueError(f"frame_folder_fps={self.frame_folder_fps!r}: must be > 0")

    @property
    def span(self) -> int:
        """Source frames covered by one clip."""
        return (self.frames - 1) * self.stride + 1


AGGREGATIONS = ("clip_best", "first", "most_common")
"""How one caption is chosen among a clip's candidates."""


@dataclass(frozen=True)
class RecaptionConfig:
    """The recaptioning job (``pipelines.recaption``): BLIP captions for video clips (e.g. TikTok dances)."""

    dataset_name: str = "recaptioned-videos"
    """Name recorded in the output manifest."""
    frames_at: tuple[float, ...] = (0.1, 0.5, 0.9)
    """Positions in the sampled clip (0 = first frame, 1 = last) of the frames that get a candidate caption."""
    aggregation: str = "clip_best"
    """``clip_best`` (the candidate with the highest CLIP score against the middle frame), ``first``, or
    ``most_common`` (ties go to the candidate of the frame nearest the middle)."""
    batch_size: int = 8
    """Clips per captioning batch."""
    actors: int = 2
    """Size of the Ray Data actor pool running the captioner (each actor loads the model once)."""
    actor_cpus: float = 1.0
    """CPUs reserved by each captioner actor."""
    actor_gpus: float = 0.0
    """GPUs reserved by each captioner actor."""
    ingest_cpus: float = 0.5
    """CPUs reserved by each read+ingest task."""
    rows_per_file: int = 1000
    """Largest number of clips in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        if not self.frames_at or any(not 0.0 <= f <= 1.0 for f in self.frames_at):
            raise ValueError(f"frames_at={list(self.frames_at)!r}: give one or more positions in [0, 1]")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        for name in ("batch_size", "actors", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        for name in ("actor_cpus", "ingest_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.actor_gpus < 0:
            raise ValueError(f"actor_gpus={self.actor_gpus!r}: must be ≥ 0")


@dataclass(frozen=True)
class CurateVideosConfig:
    """The text-video curation job (``pipelines.curate_videos``): its filters, scoring, actors and output."""

    dataset_name: str = "curated-videos"
    """Name recorded in the output manifest."""
    filters: VideoFilterConfig = VideoFilterConfig()
    """Thresholds of the video filters and the scene-cut policy."""
    score_frames_at: tuple[float, ...] = (0.0, 0.5, 1.0)
    """Positions in the sampled clip of the frames scored for watermark (max) and aesthetic (mean); the CLIP
    score uses the middle sampled frame."""
    batch_size: int = 8
    """Clips per scoring batch."""
    scorer_actors: int = 2
    """Size of the Ray Data actor pool running the scorers."""
    scorer_cpus: float = 1.0
    """CPUs reserved by each scorer actor."""
    scorer_gpus: float = 0.0
    """GPUs reserved by each scorer actor."""
    ingest_cpus: float = 0.5
    """CPUs reserved by each read+ingest task."""
    rows_per_file: int = 1000
    """Largest number of clips in one output Parquet file."""

    def __post_init__(self) -> None:
        if not self.dataset_name.strip():
            raise ValueError("dataset_name='': must be a non-empty name")
        if not self.score_frames_at or any(not 0.0 <= f <= 1.0 for f in self.score_frames_at):
            raise ValueError(f"score_frames_at={list(self.score_frames_at)!r}: give one or more positions in [0, 1]")
        for name in ("batch_size", "scorer_actors", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        for name in ("scorer_cpus", "ingest_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.scorer_gpus < 0:
            raise ValueError(f"scorer_gpus={self.scorer_gpus!r}: must be ≥ 0")
