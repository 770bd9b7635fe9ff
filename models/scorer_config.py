"""Configuration of the image scorers (torch-free, so configs load without importing torch).

The models these configure live in :mod:`models.scorers`, which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DEVICE = re.compile(r"cpu|meta|mps|cuda(:\d+)?|xpu(:\d+)?")

BUNDLED_OPEN_CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
"""Directory of the open_clip model configs shipped with the platform (``alcm-toy-clip.json``)."""

WATERMARK_ARCHS = ("efficientnet_b3a", "toy_cnn")
"""Watermark detector architectures ``WatermarkConfig.arch`` may name."""

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
"""File suffixes a weights path may have."""


# --------------------------------------------------------------------------------------------------- config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def _check_weights(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError(f"{name}={value!r}: must be a local file path string, or null for random init (tests only)")
    if Path(value).suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{name}={value!r}: must end in one of {', '.join(WEIGHT_SUFFIXES)}")


@dataclass(frozen=True)
class ClipConfig:
    """The CLIP model used for image-text similarity and as the aesthetic head's feature extractor."""

    model: str
    """open_clip model config name: "ViT-L-14" for sd15, "alcm-toy-clip" for toy."""
    weights: str | None
    """Local path of the open_clip state dict (.safetensors, .pt, .pth, .bin); None = random init (tests only)."""
    model_config_dir: str | None = None
    """Extra directory of open_clip model config JSONs to register (the bundled models/open_clip_configs always is)."""
    image_size: int = 224
    """Square input size of the vision tower; must equal the model config's vision_cfg.image_size."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"clip.model={self.model!r}: must be an open_clip model name such as 'ViT-L-14'")
        _check_weights("clip.weights", self.weights)
        if self.model_config_dir is not None and (not isinstance(self.model_config_dir, str | Path)):
            raise ValueError(f"clip.model_config_dir={self.model_config_dir!r}: must be a directory path or null")
        _check_positive_int("clip.image_size", self.image_size)


@dataclass(frozen=True)
class AestheticConfig:
    """The LAION improved-aesthetic-predictor MLP applied to L2-normalised CLIP image embeddings."""

    weights: str | None
    """Local path of the MLP state dict (keys layers.0/2/4/6/7); None = random init (tests only)."""
    input_dim: int = 768
    """Width of the CLIP image embedding it reads: 768 for ViT-L-14, 64 for alcm-toy-clip."""
    hidden: tuple[int, ...] = (1024, 128, 64, 16)
    """The four hidden widths of the MLP (LAION: 1024, 128, 64, 16)."""

    def __post_init__(self) -> None:
        _check_weights("aesthetic.weights", self.weights)
        _check_positive_int("aesthetic.input_dim", self.input_dim)
        if isinstance(self.hidden, list):  # YAML gives lists; keep the frozen config hashable
            object.__setattr__(self, "hidden", tuple(self.hidden))
        if (
            not isinstance(self.hidden, tuple)
            or len(self.hidden) != 4
            or not all(_is_int(h) and h >= 1 for h in self.hidden)
        ):
            raise ValueError(
                f"aesthetic.hidden={self.hidden!r}: must be four positive integers, e.g. (1024, 128, 64, 16), "
                "so that the layer indices match LAION's layers.0/2/4/6/7"
            )


@dataclass(frozen=True)
class WatermarkConfig:
    """The watermark detector: LAION's efficientnet_b3a classifier, or the toy world's tiny CNN."""

    arch: str = "efficientnet_b3a"
    """Architecture: "efficientnet_b3a" (LAION, sd15) or "toy_cnn" (toy, 64x64)."""
    weights: str | None = None
    """Local path of the bare detector state dict (LAION key layout); None = random init (tests only)."""
    input_size: int = 256
    """Square input size the image is resized to: 256 for LAION's detector, 64 for toy_cnn."""
    positive_index: int = 0
    """Which of the two logits means "watermarked" (LAION's detector: 0)."""

    def __post_init__(self) -> None:
        if self.arch not in WATERMARK_ARCHS:
            raise ValueError(f"watermark.arch={self.arch!r}: must be one of {', '.join(WATERMARK_ARCHS)}")
        _check_weights("watermark.weights", self.weights)
        _check_positive_int("watermark.input_size", self.input_size)
        if not _is_int(self.positive_index) or self.positive_index not in (0, 1):
            raise ValueError(
                f"watermark.positive_index={self.positive_index!r}: must be 0 or 1 (the detector has 2 logits)"
            )


@dataclass(frozen=True)
class ScorersConfig:
    """Everything `ImageTextScorer` needs: the three models plus where and how to run them."""

    clip: ClipConfig
    """CLIP model (image-text similarity and aesthetic features)."""
    aesthetic: AestheticConfig
    """Aesthetic MLP on CLIP image embeddings."""
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)
    """Watermark detector."""
    device: str = "cpu"
    """torch device the models run on, e.g. "cpu" or "cuda:0"."""
    batch_size: int = 64
    """Images per forward pass; score() splits longer inputs into chunks of this size."""
    torch_threads: int = 1
    """torch.set_num_threads value set when the scorer is built (1 per Ray actor avoids oversubscription)."""

    def __post_init__(self) -> None:
        for name, kind in (("clip", ClipConfig), ("aesthetic", AestheticConfig), ("watermark", WatermarkConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a {kind.__name__}")
        if not _DEVICE.fullmatch(str(self.device)):
            raise ValueError(f"device={self.device!r}: not a torch device; use 'cpu' or 'cuda:N'")
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("torch_threads", self.torch_threads)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScorersConfig:
        """Build from a nested mapping (a YAML profile section); unknown keys raise ValueError naming them."""
        nested = {"clip": ClipConfig, "aesthetic": AestheticConfig, "watermark": WatermarkConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in nested:
                kwargs[key] = _dataclass_from_mapping(nested[key], value, prefix=f"{key}.")
            elif key in {f.name for f in dataclasses.fields(cls)}:
                kwargs[key] = value
            else:
                raise ValueError(
                    f"{key}: unknown scorers setting; known: {', '.join(f.name for f in dataclasses.fields(cls))}"
                )
        for key in ("clip", "aesthetic"):
            if key not in kwargs:
                raise ValueError(f"{key}: missing; the scorers config needs clip and aesthetic sections")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-friendly) of this config."""
        out = dataclasses.asdict(self)
        out["aesthetic"]["hidden"] = list(self.aesthetic.hidden)
        return out


def _dataclass_from_mapping(kind: type, value: Any, *, prefix: str) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{prefix.rstrip('.')}={value!r}: must be a mapping of {kind.__name__} fields")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}")
    return kind(**value)
