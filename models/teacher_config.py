"""Configuration of the frozen teacher and of the student's LoRA (torch-free, so flows and the CLI can validate it).

The teacher is a Stable-Diffusion-family model in a local diffusers-format directory (``vae/``, ``text_encoder/``,
``tokenizer/``, ``unet/``, ``scheduler/``, as ``StableDiffusionPipeline.save_pretrained`` writes it); nothing is ever
downloaded, so there is no ``revision``. ``models.factory.build_teacher`` loads it; ``models.lora.add_lora`` puts the
LoRA described here on a UNet.

The default LoRA targets are those of the published LCM-LoRA for SD v1-5 (``latent-consistency/lcm-lora-sdv1-5``),
as listed in diffusers' ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py``: every attention
projection, the transformer blocks' input/output projections and feed-forward layers, and every convolution and
time-embedding projection of the ResNet blocks and resamplers. On the SD v1-5 UNet that is 278 modules.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "bfloat16", "float16")
"""Torch dtypes the teacher can be loaded in."""
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
"""Noise schedules (diffusers' ``beta_schedule``) a stage can train on: SD v1-5 was trained on ``scaled_linear``,
AnimateDiff's motion modules on ``linear``."""
PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What the teacher UNet predicts (the consistency math handles these two)."""
LORA_INITS = ("gaussian", "kaiming")
"""LoRA initialisations. Both set B = 0, so a fresh LoRA leaves the UNet's output unchanged; A is drawn from a
normal distribution (``gaussian``, what diffusers' LCM-LoRA scripts use) or kaiming-uniform (PEFT's default)."""
LCM_LORA_TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
"""Module-name suffixes of the published LCM-LoRA (SD v1-5), from diffusers' ``train_lcm_distill_lora_sd_wds.py``."""


@dataclass(frozen=True)
class LoraConfig:
    """The student's LoRA: rank, scaling, dropout, which UNet modules get one, and how it starts."""

    rank: int = 64
    """r: inner dimension of every LoRA pair (LCM-LoRA uses 64)."""
    alpha: float | None = None
    """LoRA alpha; the update is scaled by alpha / rank. Null: equal to ``rank`` (scale 1, LCM-LoRA's choice)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch's input during training."""
    target_modules: tuple[str, ...] = LCM_LORA_TARGET_MODULES
    """Module-name suffixes that get a LoRA (PEFT matching: the full name or a ``.``-separated suffix of it)."""
    init: str = "gaussian"
    """``gaussian`` or ``kaiming`` (see :data:`LORA_INITS`); both start with B = 0."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank={self.rank!r}: must be ≥ 1 (64 is LCM-LoRA's)")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha={self.alpha!r}: must be > 0, or null for alpha = rank")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if not self.target_modules or any(not m.strip() for m in self.target_modules):
            raise ValueError(
                f"target_modules={list(self.target_modules)!r}: give one or more non-empty module-name suffixes, "
                "e.g. to_q, to_k, to_v, to_out.0"
            )
        if self.init not in LORA_INITS:
            raise ValueError(f"init={self.init!r}: choose one of {', '.join(LORA_INITS)}")

    @property
    def lora_alpha(self) -> float:
        """The alpha in effect (``rank`` when ``alpha`` is null)."""
        return float(self.rank) if self.alpha is None else float(self.alpha)


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen teacher (a local diffusers-format Stable Diffusion directory) and the student's LoRA."""

    pretrained_dir: str | None = None
    """Local diffusers-format Stable Diffusion directory with vae/, text_encoder/, tokenizer/, unet/ and scheduler/
    (safetensors weights only)."""
    dtype: str = "float32"
    """Dtype the frozen teacher parts are loaded in: ``float32``, ``bfloat16`` or ``float16``."""
    prediction_type: str | None = None
    """What the teacher UNet predicts, ``epsilon`` or ``v_prediction``; null: read from the scheduler config."""
    lora: LoraConfig = LoraConfig()
    """The LoRA added to the student UNet."""

    def __post_init__(self) -> None:
        if self.pretrained_dir is not None and not self.pretrained_dir.strip():
            raise ValueError("pretrained_dir='': give a local diffusers-format directory, or null")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type={self.prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}, "
                "or null to read it from the scheduler config"
            )
