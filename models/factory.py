"""The model factory: the frozen teacher parts of a Stable-Diffusion-family model, from a local directory.

``build_teacher(cfg)`` loads, from ``cfg.pretrained_dir`` (a diffusers-format Stable Diffusion directory, as
``StableDiffusionPipeline.save_pretrained`` writes it, e.g. SD v1-5 or the toy teacher under ``toyworld/``):

- ``vae/`` (``AutoencoderKL``), ``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (``CLIPTokenizer``) and
  ``unet/`` (``UNet2DConditionModel``), each with ``from_pretrained(..., local_files_only=True)``, safetensors only,
  in ``cfg.dtype``, frozen (``requires_grad`` off, eval mode);
- ``scheduler/scheduler_config.json``, kept as a plain dict, and the teacher's ᾱ_t (``alphas_cumprod``) computed from
  it by diffusers' ``DDIMScheduler`` (the same betas as DDPM/PNDM, for every ``beta_schedule`` diffusers knows);
- the sha256 digest of every weight file loaded, for the run's lineage.

``meta=True`` builds the three networks from their ``config.json`` only, on the meta device (names, shapes and
parameter counts without any weights or memory), for tests and sizing. ``sd15_unet_config()`` writes the SD v1-5
UNet's published configuration out in code, so its architecture can be built without any file.

Decisions, written down here because the rest of the code relies on them:

- A missing directory, part or weight file raises ``FileNotFoundError`` naming ``teacher.pretrained_dir``; a part
  stored only as ``.bin``/``.ckpt`` is refused (weights load from safetensors only).
- ``prediction_type`` is the config's, else the scheduler config's (``epsilon`` when it has none); anything but
  ``epsilon``/``v_prediction`` is an error before any training starts.
- The VAE's latent scale is ``vae.config.scaling_factor``; the factory never assumes SD's value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from contracts.digests import sha256_file
from models.teacher_config import PREDICTION_TYPES, TeacherConfig

logger = logging.getLogger(__name__)

PARTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
"""Sub-directories of a diffusers-format Stable Diffusion directory that the teacher needs."""
_WEIGHT_STEMS = {"vae": "diffusion_pytorch_model", "unet": "diffusion_pytorch_model", "text_encoder": "model"}
"""File stem of each network's safetensors weights (diffusers' and transformers' names)."""
_LAYOUT_HINT = "expected a diffusers-format Stable Diffusion directory with " + ", ".join(f"{p}/" for p in PARTS)


@dataclass
class TeacherParts:
    """The frozen teacher: its networks, tokenizer, noise schedule and the digests of the weights loaded."""

    vae: AutoencoderKL
    """Latent autoencoder (latents are scaled by ``vae.config.scaling_factor``)."""
    text_encoder: CLIPTextModel
    """Prompt encoder; its last hidden state is the UNet's ``encoder_hidden_states``."""
    tokenizer: CLIPTokenizer
    """Tokenizer of the text encoder."""
    unet: UNet2DConditionModel
    """The teacher's denoising UNet."""
    scheduler_config: dict[str, Any]
    """``scheduler/scheduler_config.json`` as loaded (training schedule: betas, timesteps, prediction type)."""
    alphas_cumprod: torch.Tensor
    """ᾱ_t for t = 0 … num_train_timesteps − 1 (float32, CPU), from the scheduler config."""
    prediction_type: str
    """``epsilon`` or ``v_prediction``: the config's, else the scheduler config's."""
    digests: dict[str, str] = field(default_factory=dict)
    """sha256 of every weight file loaded, keyed by its path relative to ``pretrained_dir`` (empty with meta)."""


def sd15_unet_config() -> dict[str, Any]:
    """The Stable Diffusion v1-5 ``UNet2DConditionModel`` configuration (its published ``unet/config.json``).

    859,520,964 parameters; 4-channel 64×64 latents (512×512 images); CLIP ViT-L/14 text features (768-d).
    """
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def unet_from_config(config: dict[str, Any], *, meta: bool = False) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` with random weights (or none, on the meta device) from a config dict."""
    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config)
    return UNet2DConditionModel.from_config(config)


def teacher_dir(cfg: TeacherConfig) -> Path:
    """``cfg.pretrained_dir`` checked to hold every part the teacher needs."""
    if cfg.pretrained_dir is None:
        raise FileNotFoundError(f"teacher.pretrained_dir is null: set it to a local directory ({_LAYOUT_HINT})")
    root = Path(cfg.pretrained_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"teacher.pretrained_dir={root} does not exist ({_LAYOUT_HINT})")
    for part in PARTS:
        if not (root / part).is_dir():
            raise FileNotFoundError(f"teacher.pretrained_dir={root}: no {part}/ ({_LAYOUT_HINT})")
    for part in ("vae", "text_encoder", "unet"):
        if not (root / part / "config.json").is_file():
            raise FileNotFoundError(f"teacher.pretrained_dir={root}: no {part}/config.json ({_LAYOUT_HINT})")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"teacher.pretrained_dir={root}: no scheduler/scheduler_config.json ({_LAYOUT_HINT})")
    return root


def weight_files(root: Path, part: str) -> list[Path]:
    """The safetensors files ``from_pretrained`` reads for ``part``: one file, or the shards its index lists."""
    stem = _WEIGHT_STEMS[part]
    single = root / part / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = root / part / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [root / part / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"teacher.pretrained_dir={root}: {part}/ lacks shards {missing} named by {index.name}"
            )
        return files
    others = sorted(p.name for p in (root / part).iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth"))
    found = f" (found {', '.join(others)}: convert them to safetensors)" if others else ""
    raise FileNotFoundError(
        f"teacher.pretrained_dir={root}: no {part}/{stem}.safetensors{found}; weights load from safetensors only"
    )


def alphas_cumprod_from(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t of a training schedule, computed by diffusers from the scheduler config's betas."""
    # DDIMScheduler takes every key of SD's PNDM/DDPM configs that matters for the betas; others are ignored.
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
    schedule = DDIMScheduler(**{k: scheduler_config[k] for k in keys if k in scheduler_config})
    return schedule.alphas_cumprod.float().clone()


SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
"""The scheduler-config keys that define a noise schedule (what a stage's schedule may override)."""


def with_schedule(parts: TeacherParts, overrides: dict[str, Any] | None) -> TeacherParts:
    """``parts`` on another noise schedule: the scheduler config with ``overrides`` (keys of :data:`SCHEDULE_KEYS`)
    and ᾱ_t recomputed from it; the networks are shared, not copied. ``None`` or ``{}``: ``parts`` itself."""
    if not overrides:
        return parts
    unknown = sorted(set(overrides) - set(SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"noise schedule overrides {unknown}: only {', '.join(SCHEDULE_KEYS)} define a schedule")
    config = {**parts.scheduler_config, **overrides}
    return dataclasses.replace(parts, scheduler_config=config, alphas_cumprod=alphas_cumprod_from(config))


def resolve_prediction_type(cfg: TeacherConfig, scheduler_config: dict[str, Any]) -> str:
    """The config's prediction type, else the scheduler config's (``epsilon`` when it names none)."""
    value = cfg.prediction_type or scheduler_config.get("prediction_type") or "epsilon"
    if value not in PREDICTION_TYPES:
        raise ValueError(
            f"teacher.prediction_type: the scheduler config says {value!r}, which distillation does not support; "
            f"use a teacher predicting one of {', '.join(PREDICTION_TYPES)}"
        )
    return value


def _freeze(module: torch.nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


_PART_CLASSES = {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "unet": UNet2DConditionModel}


def teacher_digests(cfg: TeacherConfig) -> dict[str, str]:
    """sha256 of every weight file of the teacher's VAE, text encoder and UNet, keyed by path relative to
    ``pretrained_dir`` (the run's teacher lineage), without loading anything."""
    root = teacher_dir(cfg)
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for part in ("vae", "text_encoder", "unet")
        for path in weight_files(root, part)
    }


def load_part(cfg: TeacherConfig, part: str, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """One frozen network of the teacher (``vae``, ``text_encoder`` or ``unet``), in ``cfg.dtype`` on ``device``:
    what a data step that only encodes (VAE, text encoder) loads instead of the whole teacher."""
    if part not in _PART_CLASSES:
        raise ValueError(f"part={part!r}: choose one of {', '.join(_PART_CLASSES)}")
    root = teacher_dir(cfg)
    weight_files(root, part)  # refuses a part without safetensors weights, naming the key
    module = _PART_CLASSES[part].from_pretrained(
        str(root / part), local_files_only=True, use_safetensors=True, dtype=getattr(torch, cfg.dtype)
    )
    module.to(device)
    _freeze(module)
    return module


def load_tokenizer(cfg: TeacherConfig) -> CLIPTokenizer:
    """The teacher's tokenizer (``tokenizer/``)."""
    return CLIPTokenizer.from_pretrained(str(teacher_dir(cfg) / "tokenizer"), local_files_only=True)


def build_teacher(cfg: TeacherConfig, *, device: str | torch.device = "cpu", meta: bool = False) -> TeacherParts:
    """Load the frozen teacher parts from ``cfg.pretrained_dir`` (see the module docstring).

    ``meta=True`` builds the networks from their ``config.json`` on the meta device, without weights; the tokenizer
    and the schedule are read as usual and ``device`` is ignored.
    """
    root = teacher_dir(cfg)
    dtype = getattr(torch, cfg.dtype)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    prediction_type = resolve_prediction_type(cfg, scheduler_config)
    alphas_cumprod = alphas_cumprod_from(scheduler_config)
    tokenizer = load_tokenizer(cfg)
    text_config = CLIPTextConfig.from_pretrained(str(root / "text_encoder"), local_files_only=True)
    # A tokenizer whose ids exceed the embedding table (e.g. a stub vocabulary) would fail only at the first prompt.
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"teacher.pretrained_dir={root}: tokenizer/ has {len(tokenizer)} tokens but text_encoder/ embeds only "
            f"{text_config.vocab_size}; the two do not belong together"
        )
    digests: dict[str, str] = {}
    if meta:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet")))
            text_encoder = CLIPTextModel(text_config)
        for module in (vae, text_encoder, unet):
            module.to(dtype)
    else:
        digests = teacher_digests(cfg)
        vae, text_encoder, unet = (load_part(cfg, part, device=device) for part in ("vae", "text_encoder", "unet"))
    for module in (vae, text_encoder, unet):
        _freeze(module)
    parts = TeacherParts(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler_config=scheduler_config,
        alphas_cumprod=alphas_cumprod,
        prediction_type=prediction_type,
        digests=digests,
    )
    logger.info(
        "teacher from %s: UNet %.1fM parameters, %s, %s%s",
        root,
        sum(p.numel() for p in unet.parameters()) / 1e6,
        cfg.dtype,
        parts.prediction_type,
        " (meta)" if meta else "",
    )
    return parts
