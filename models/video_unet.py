"""Video UNets: inflating an image UNet with motion modules (diffusers' ``UNetMotionModel``), and the helpers every
video stage shares.

- :func:`inflate` builds ``UNetMotionModel.from_unet2d(unet, adapter)``: the image UNet's 2D layers run per frame and
  motion modules (temporal transformers) sit after each resnet/attention pair. With no adapter (stage 2 from scratch)
  or ``zero_init=True``, every motion module's output projection (``proj_out``) is zeroed, so its residual branch adds
  exactly 0 and the inflated model's output equals the image UNet's frame by frame (the paper's "output not
  influenced at the start"; diffusers leaves ``proj_out`` at its random init).
- :func:`video_forward` calls a ``UNetMotionModel`` on video latents ``(B, C, F, H, W)`` with prompt embeddings
  ``(B, L, D)``: in diffusers 0.42.1 the model expects the embeddings already repeated per frame
  (``repeat_interleave(F, 0)``) and fails with a size mismatch otherwise; extra residuals (a ControlNet's, the
  image-to-video adapter's) are per frame, ``(B·F, C, h, w)``.
- :func:`motion_adapter_config` is the MotionAdapter layout that fits a given image UNet (the toy teacher's, or SD
  v1-5's, where it is AnimateDiff's v1-5-2 layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

MOTION_KEY = "motion_modules"
"""Every temporal parameter's name contains this (PEFT LoRA must exclude these: they also hold to_q/to_k/to_v)."""


def motion_adapter_config(unet_config: dict[str, Any], *, heads: int = 8, max_frames: int = 32) -> dict[str, Any]:
    """A MotionAdapter config matching ``unet_config``'s blocks (same channels, layers per block, norm groups)."""
    return {
        "block_out_channels": tuple(unet_config["block_out_channels"]),
        "motion_layers_per_block": unet_config["layers_per_block"],
        "motion_norm_num_groups": unet_config["norm_num_groups"],
        "motion_num_attention_heads": heads,
        "motion_max_seq_length": max_frames,
        "use_motion_mid_block": True,
    }


def zero_init_temporal_out(module: torch.nn.Module) -> int:
    """Zero every motion module's output projection; returns how many were zeroed."""
    n = 0
    with torch.no_grad():
        for name, sub in module.named_modules():
            if MOTION_KEY in name and name.endswith("proj_out") and isinstance(sub, torch.nn.Linear):
                sub.weight.zero_()
                if sub.bias is not None:
                    sub.bias.zero_()
                n += 1
    if n == 0:
        raise ValueError("no motion-module proj_out layers found to zero-initialise")
    return n


def new_motion_adapter(unet_config: dict[str, Any], *, heads: int = 8, max_frames: int = 32) -> MotionAdapter:
    """A fresh MotionAdapter for ``unet_config``, temporal output projections zeroed."""
    adapter = MotionAdapter(**motion_adapter_config(unet_config, heads=heads, max_frames=max_frames))
    zero_init_temporal_out(adapter)
    return adapter


def load_motion_adapter(path: str | Path, *, dtype: torch.dtype = torch.float32) -> MotionAdapter:
    """A MotionAdapter directory written by ``save_pretrained`` (safetensors only, no hub)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a MotionAdapter directory (no config.json)")
    return MotionAdapter.from_pretrained(str(path), local_files_only=True, use_safetensors=True, dtype=dtype)


SCHEDULER_FILE = "scheduler_config.json"
"""A motion module's own noise schedule, when its directory ships one (diffusers' scheduler config format)."""


def motion_schedule(motion_adapter_dir: str | Path, configured: str | None) -> dict[str, Any]:
    """The noise schedule a motion module was trained on, as scheduler-config overrides for
    :func:`models.factory.with_schedule`: from ``<motion_adapter_dir>/scheduler_config.json`` where the module ships
    one (its ``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``), else ``configured``
    (``distill_video.beta_schedule``); ``{}`` when neither says (the teacher's schedule). A configured value that
    contradicts the shipped file is an error naming both."""
    from models.factory import SCHEDULE_KEYS

    shipped = Path(motion_adapter_dir) / SCHEDULER_FILE
    if shipped.is_file():
        import json

        overrides = {k: v for k, v in json.loads(shipped.read_text()).items() if k in SCHEDULE_KEYS}
        if configured is not None and overrides.get("beta_schedule", configured) != configured:
            raise ValueError(
                f"distill_video.beta_schedule={configured!r}, but {shipped} says "
                f"{overrides['beta_schedule']!r}: the motion module was trained on the latter; set it or null"
            )
        return overrides
    return {"beta_schedule": configured} if configured is not None else {}


def inflate(
    unet: UNet2DConditionModel, adapter: MotionAdapter | None = None, *, zero_init: bool | None = None, heads: int = 8
) -> UNetMotionModel:
    """The video UNet: ``unet``'s weights (copied) plus ``adapter``'s motion modules, or new zero-initialised ones.

    ``zero_init`` defaults to True when there is no adapter (a fresh temporal stack must not change the output) and
    False with one (a pretrained motion module keeps its weights)."""
    if adapter is None:
        adapter = new_motion_adapter(dict(unet.config), heads=heads)
        zero_init = True if zero_init is None else zero_init
    model = UNetMotionModel.from_unet2d(unet, adapter)
    if zero_init:
        zero_init_temporal_out(model)
    if model.dtype != unet.dtype or model.device != unet.device:
        model = model.to(unet.device, unet.dtype)
    return model


def temporal_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The motion modules' parameters, by name (base weights only, not any LoRA inside them)."""
    return {n: p for n, p in model.named_parameters() if MOTION_KEY in n and "lora_" not in n}


def motion_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The motion modules' weights in MotionAdapter naming (``down_blocks.0.motion_modules.0...``): a PEFT wrapper's
    ``base_model.model.`` prefix and ``.base_layer`` infixes are removed."""
    out = {}
    for name, value in model.state_dict().items():
        if MOTION_KEY not in name or "lora_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[key] = value.detach().cpu().contiguous()
    return out


def save_motion_adapter(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write ``model``'s motion modules as a MotionAdapter directory (``save_pretrained``, safetensors)."""
    cfg = model.config if hasattr(model, "config") else model.base_model.model.config
    adapter = MotionAdapter(
        block_out_channels=tuple(cfg["block_out_channels"]),
        motion_layers_per_block=cfg["layers_per_block"],
        motion_norm_num_groups=cfg["norm_num_groups"],
        motion_num_attention_heads=cfg["motion_num_attention_heads"],
        motion_max_seq_length=cfg["motion_max_seq_length"],
        use_motion_mid_block=cfg["use_motion_mid_block"],
    )
    missing, unexpected = adapter.load_state_dict(motion_state_dict(model), strict=True), None
    del missing, unexpected
    out_dir = Path(out_dir)
    adapter.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def video_forward(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    ehs: torch.Tensor,
    *,
    timestep_cond: torch.Tensor | None = None,
    down_residuals: tuple[torch.Tensor, ...] | None = None,
    mid_residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """ε/v prediction of a UNetMotionModel for video latents ``x`` (B, C, F, H, W) at per-video timesteps ``t`` (B,),
    prompts ``ehs`` (B, L, D); computed in the UNet's dtype, returned as float32 (B, C, F, H, W)."""
    dtype = next(unet.parameters()).dtype
    frames = x.shape[2]
    kwargs: dict[str, Any] = {}
    if timestep_cond is not None:
        kwargs["timestep_cond"] = timestep_cond.to(x.device, dtype)
    if down_residuals is not None:
        kwargs["down_block_additional_residuals"] = tuple(r.to(dtype) for r in down_residuals)
    if mid_residual is not None:
        kwargs["mid_block_additional_residual"] = mid_residual.to(dtype)
    out = unet(x.to(dtype), t, encoder_hidden_states=ehs.to(dtype).repeat_interleave(frames, 0), **kwargs).sample
    return out.float()


def image_forward_per_frame(
    unet: UNet2DConditionModel, x: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor
) -> torch.Tensor:
    """The image UNet applied to each frame of ``x`` (B, C, F, H, W) independently: the inflated model's reference."""
    b, c, f, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    t_frames = t.repeat_interleave(f) if torch.is_tensor(t) and t.ndim else t
    out = unet(frames, t_frames, encoder_hidden_states=ehs.repeat_interleave(f, 0)).sample
    return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).float()


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) → (B·F, C, H, W)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def from_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B·F, C, H, W) → (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)
