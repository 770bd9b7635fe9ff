"""Flows ``toy-world`` (generate a seeded toy world), ``toy-eval-set`` (its prompt sets for evaluation) and
``train-toy-zoo`` (train the toy model zoo)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from flows.common import apply_env_defaults
from pipelines import toy_world
from pipelines.config import load_config

ZOO_DIR = Path(toy_world.__file__).resolve().parents[1] / "toyworld" / "zoo"


class ToyWorldParams(BaseModel):
    """Parameters of the ``toy-world`` flow."""

    out: str = Field(description="Directory to write the toy world into (images/, videos/, dancers/, world.json).")
    seed: int = Field(0, description="Generator seed; the same seed gives byte-identical data.")
    images: int = Field(2000, ge=0, description="Image-text rows (clean and degraded).")
    videos: int = Field(50, ge=0, description="Text-video clips of moving shapes.")
    dancers: int = Field(10, ge=0, description="TikTok-style dancer sequences.")
    profile: str = Field("toy", description="Config profile (for the image size).")


@flow(name="toy-world")
def toy_world_flow(params: ToyWorldParams) -> dict:
    """Generate a toy world with ground-truth labels."""
    apply_env_defaults()
    logger = get_run_logger()
    cfg = load_config(params.profile)
    summary = toy_world.generate(
        cfg, Path(params.out), seed=params.seed, images=params.images, videos=params.videos, dancers=params.dancers
    )
    create_table_artifact(
        key="toy-world-labels",
        table=[{"label": k, "rows": v} for k, v in sorted(summary["image_label_counts"].items())],
        description=f"Image rows per ground-truth label, toy world seed {params.seed}",
    )
    logger.info("toy world (seed %d) written to %s", params.seed, params.out)
    return summary


class EvalSetParams(BaseModel):
    """Parameters of the ``toy-eval-set`` flow."""

    out: str = Field(description="Directory to write the prompt sets into (image/ and video/).")
    profile: str = Field("toy", description="Config profile: its evaluate seed, prompts and seeds per prompt.")
    overrides: list[str] = Field(default_factory=list, description="Config overrides, key=value.")
    frames: int | None = Field(None, ge=1, description="Frames of the video renders (default: distill_video.frames).")


@flow(name="toy-eval-set")
def toy_eval_set_flow(params: EvalSetParams) -> dict:
    """Write the toy world's held-out prompts with their reference renders, for evaluation."""
    apply_env_defaults()
    cfg = load_config(params.profile, params.overrides)
    sets = toy_world.eval_sets(cfg, Path(params.out), frames=params.frames)
    get_run_logger().info("toy prompt sets written to %s", params.out)
    return sets


class TrainZooParams(BaseModel):
    """Parameters of the ``train-toy-zoo`` flow."""

    only: list[str] = Field(default_factory=lambda: list(toy_world.ZOO_PARTS), description="Zoo parts to train.")
    out: str = Field(str(ZOO_DIR), description="Zoo root; each part is written to a subdirectory.")
    seed: int = Field(0, description="Training seed.")
    sets: list[str] = Field(default_factory=list, description="Teachers' training settings, KEY=VALUE.")


@flow(name="train-toy-zoo")
def train_toy_zoo_flow(params: TrainZooParams) -> dict:
    """Train the toy model zoo (slow; its products are committed under toyworld/zoo/)."""
    apply_env_defaults()
    logger = get_run_logger()
    result = toy_world.train_zoo(Path(params.out), only=params.only, seed=params.seed, sets=params.sets)
    logger.info("toy zoo parts %s written under %s", ", ".join(params.only), params.out)
    return result
