"""Stage-3 adapters of AnimateLCM ("teacher-free adaptation"): a pose ControlNet and an image-to-video adapter, both
feeding a video UNet (:func:`models.video_unet.inflate`) through the residuals that :func:`video_forward` passes on.

ControlNet branch
-----------------
- :func:`build_controlnet` makes an image ``ControlNetModel`` for the image UNet that was inflated: from scratch with
  ``ControlNetModel.from_unet`` (a copy of the UNet's encoder: ``conv_in``, time embedding, down blocks, mid block),
  or from an existing image ControlNet directory (``save_pretrained`` layout, safetensors only) to adapt it. Its
  zero convolutions (``controlnet_down_blocks``, ``controlnet_mid_block`` and the conditioning embedding's
  ``conv_out``) start at zero, so a fresh ControlNet adds exactly 0 to the video UNet.
- A loaded directory's ``config.json`` is checked against the UNet before any weight is read: ``in_channels``,
  ``block_out_channels``, ``layers_per_block``, ``down_block_types`` and ``cross_attention_dim`` must match (they fix
  the residuals' shapes and the cross-attention width), and so must the conditioning input (channels and the
  embedding's downsampling). A mismatch raises ``ValueError`` naming every key that differs, with both values.
- The conditioning embedding (a stack of stride-2 convolutions, channels ``conditioning_embedding_out_channels``)
  downsamples control frames by ``2 ** (len(channels) - 1)``; it must equal the VAE's downsampling so the embedding
  lands on the latent grid. :func:`conditioning_channels_for` gives diffusers' ``(16, 32, 96, 256)`` for SD's 8× VAE
  and ``(16, 32, 96)`` for the toy world's 4× VAE (a diffusers pipeline's ``vae_scale_factor``,
  ``2 ** (len(vae.config.block_out_channels) - 1)``).
- :func:`controlnet_residuals` runs the image ControlNet on every frame independently (video latents flattened to
  ``(B·F, C, h, w)``, timesteps and prompt embeddings repeated per frame, in the same ``b·F + f`` order as
  :func:`models.video_unet.to_frames`). Control frames are RGB in [0, 1] at pixel resolution, as diffusers'
  ControlNet pipelines feed them. Temporal consistency comes from the video UNet's motion modules, not the ControlNet.

Image-to-video adapter
----------------------
:class:`ImageToVideoAdapter` turns the first frame's latent ``z0`` (B, C, h, w) into one residual per entry of the
UNet's ``down_block_res_samples`` for each of the ``B·F`` frames:

1. ``z0`` is repeated over F frames and projected by ``conv_in`` (3×3, C → ``block_out_channels[0]``,
   zero-initialised), then ``motion_scale · frame_position[f]`` (a learned per-frame vector, one per channel) is
   added; ``motion_scale = 0`` makes every frame's features identical, larger values let frames differ.
2. A light encoder: one residual block per UNet level (3×3 conv, SiLU, 1×1 conv, plus the input, after T2I-Adapter's
   ``AdapterResnetBlock``) with a stride-2 3×3 convolution between levels (the UNet's own ``Downsample2D``
   geometry, so odd sizes round the same way).
3. One zero-initialised 1×1 convolution per UNet residual, from its level's features to its channels: a fresh adapter
   adds exactly 0, so the video UNet's output is unchanged until training moves them.

The residuals are passed as ``down_residuals`` to :func:`video_forward` (diffusers'
``down_block_additional_residuals``), i.e. they are added to the UNet's skip connections, as a ControlNet's are;
``UNetMotionModel`` in diffusers 0.42.1 takes no intra-block residuals (T2I-Adapter's injection into
``UNet2DConditionModel``), and there is no mid residual. Its zip over the residuals would silently drop extra or
missing ones, hence the exact count.
:func:`count_residuals` lists the residuals of a UNet config: ``conv_in``'s output, one per resnet/attention layer of
every block, one per downsampler (every block but the last); 6 for the toy UNet, 12 for SD v1-5.

Saved adapter layout (:func:`save_i2v_adapter` / :func:`load_i2v_adapter`), one directory:

- ``config.json``: ``ImageToVideoAdapter.config``: ``in_channels``, ``block_out_channels``, ``layers_per_block``,
  ``residuals`` (``[channels, downsample factor]`` per UNet residual, in order), ``max_frames``, ``motion_scale``.
- ``image_to_video_adapter.safetensors``: the module's ``state_dict``, float32 unless saved otherwise, keys exactly::

      conv_in.{weight,bias}                    (C0, C, 3, 3), (C0,)         zero at init
      frame_position                           (max_frames, C0)
      blocks.{i}.conv1.{weight,bias}           (Ci, Ci, 3, 3), (Ci,)        one block per level i
      blocks.{i}.conv2.{weight,bias}           (Ci, Ci, 1, 1), (Ci,)
      downsamplers.{i}.{weight,bias}           (Ci+1, Ci, 3, 3), (Ci+1,)    between level i and i+1
      out_convs.{j}.{weight,bias}              (cj, C_level(j), 1, 1), (cj,) one per residual j, zero at init

  where ``Ci = block_out_channels[i]``. Weights are read back with safetensors only (never pickle); a missing or
  unreadable file, or any missing/unexpected key or wrong shape, raises naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
"""The image-to-video adapter's config file in its directory."""
WEIGHTS_NAME = "image_to_video_adapter.safetensors"
"""The image-to-video adapter's weight file in its directory."""

_CONDITIONING_EMBEDDING_CHANNELS = {8: (16, 32, 96, 256), 4: (16, 32, 96)}
"""Conditioning-embedding channels per VAE downsampling factor (8: diffusers' default, SD's VAE; 4: the toy VAE)."""
_CONTROLNET_MUST_MATCH = (
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "cross_attention_dim",
)
"""UNet config keys a loaded ControlNet must share: they fix the residuals' shapes and the cross-attention width."""
_I2V_CONFIG_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "max_frames", "motion_scale")
"""Keys an image-to-video adapter config must have (``residuals`` is derived when absent)."""


# ---------------------------------------------------------------------------------------------------------- ControlNet


def conditioning_channels_for(vae_downsample: int) -> tuple[int, ...]:
    """The ControlNet conditioning-embedding channels that downsample control frames by ``vae_downsample``.

    8 (SD's VAE) → ``(16, 32, 96, 256)``, diffusers' default; 4 (the toy VAE) → ``(16, 32, 96)``."""
    if vae_downsample in _CONDITIONING_EMBEDDING_CHANNELS:
        return _CONDITIONING_EMBEDDING_CHANNELS[vae_downsample]
    else:
        raise ValueError(
            f"vae_downsample={vae_downsample}: no default conditioning embedding (known: "
            f"{sorted(_CONDITIONING_EMBEDDING_CHANNELS)}); pass conditioning_embedding_out_channels explicitly, "
            f"log2(vae_downsample) + 1 entries"
        )


def conditioning_downsample(controlnet: ControlNetModel) -> int:
    """How much ``controlnet``'s conditioning embedding downsamples control frames (one stride-2 conv per step)."""
    return 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)


def _as_plain(value: Any) -> Any:
    """Config values compared without caring for list vs tuple."""
    return list(value) if isinstance(value, list | tuple) else value


def build_controlnet(
    unet2d: UNet2DConditionModel,
    *,
    from_dir: str | Path | None = None,
    vae_downsample: int = 8,
    conditioning_channels: int = 3,
    conditioning_embedding_out_channels: Sequence[int] | None = None,
) -> ControlNetModel:
    """An image ControlNet for ``unet2d`` (float32, trainable, on ``unet2d``'s device).

    Without ``from_dir``: ``ControlNetModel.from_unet`` (the UNet's encoder copied, zero convolutions at zero, so it
    adds nothing at first). With ``from_dir``: that ``save_pretrained`` directory (safetensors only), after checking
    its config matches ``unet2d`` and the conditioning input. ``conditioning_embedding_out_channels`` defaults to
    :func:`conditioning_channels_for` ``(vae_downsample)``: 8 for SD's VAE, 4 for the toy world's."""
    expected_embedding = (
        tuple(conditioning_embedding_out_channels)
        if conditioning_embedding_out_channels is not None
        else conditioning_channels_for(vae_downsample)
    )
    if from_dir is None:
        controlnet = ControlNetModel.from_unet(
            unet2d,
            conditioning_embedding_out_channels=expected_embedding,
            conditioning_channels=conditioning_channels,
        )
        return controlnet.to(device=unet2d.device, dtype=torch.float32)

    path = Path(from_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"ControlNet directory {path}: no config.json (expected a save_pretrained directory)")
    config = ControlNetModel.load_config(str(path), local_files_only=True)
    mismatches = [
        f"{key}: ControlNet {config.get(key)!r} vs UNet {unet2d.config[key]!r}"
        for key in _CONTROLNET_MUST_MATCH
        if _as_plain(config.get(key)) != _as_plain(unet2d.config[key])
    ]
    if config.get("conditioning_channels", 3) != conditioning_channels:
        mismatches.append(
            f"conditioning_channels: ControlNet {config.get('conditioning_channels', 3)} vs requested "
            f"{conditioning_channels}"
        )
    embedding = tuple(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    if conditioning_embedding_out_channels is not None and embedding != expected_embedding:
        mismatches.append(
            f"conditioning_embedding_out_channels: ControlNet {embedding} vs requested {expected_embedding}"
        )
    elif len(embedding) != len(expected_embedding):
        mismatches.append(
            f"conditioning embedding downsamples control frames by {2 ** (len(embedding) - 1)} "
            f"(conditioning_embedding_out_channels={embedding}) but vae_downsample={vae_downsample}"
        )
    if mismatches:
        raise ValueError(f"ControlNet {path / 'config.json'} does not fit this UNet: " + "; ".join(mismatches))
    controlnet = ControlNetModel.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    logger.info("ControlNet loaded from %s to adapt (block_out_channels %s)", path, list(config["block_out_channels"]))
    return controlnet.to(unet2d.device)


def controlnet_residuals(
    controlnet: ControlNetModel,
    x: torch.Tensor,
    t: torch.Tensor,
    ehs: torch.Tensor,
    cond: torch.Tensor,
    *,
    scale: float = 1.0,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``controlnet`` on every frame: ``(down_residuals, mid_residual)`` for :func:`video_forward`, times ``scale``.

    ``x`` video latents (B, C, F, h, w); ``t`` timesteps (B,); ``ehs`` prompt embeddings (B, L, D); ``cond`` control
    frames (B, 3, F, h·k, w·k) in [0, 1], k the conditioning embedding's downsampling. Residuals are (B·F, c, h', w'),
    computed in the ControlNet's dtype and returned in ``x``'s."""
    b, _, frames, h, w = x.shape
    k = conditioning_downsample(controlnet)
    if cond.ndim != 5 or cond.shape[0] != b or cond.shape[2] != frames or cond.shape[3:] != (h * k, w * k):
        raise ValueError(
            f"control frames {tuple(cond.shape)} do not fit latents {tuple(x.shape)}: expected "
            f"(B={b}, C, F={frames}, {h * k}, {w * k}) since the conditioning embedding downsamples by {k} "
            f"(build the ControlNet with vae_downsample equal to the VAE's)"
        )
    dtype = next(controlnet.parameters()).dtype
    t = torch.as_tensor(t, device=x.device)
    t_frames = t.expand(b).repeat_interleave(frames) if t.ndim == 0 else t.repeat_interleave(frames)
    down, mid = controlnet(
        _flatten_frames(x).to(dtype),
        t_frames,
        encoder_hidden_states=ehs.to(dtype).repeat_interleave(frames, 0),
        controlnet_cond=_flatten_frames(cond).to(dtype),
        conditioning_scale=scale,
        return_dict=False,
    )
    return tuple(r.to(x.dtype) for r in down), mid.to(x.dtype)


def _flatten_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) → (B·F, C, H, W), frame index fastest (as ``models.video_unet.to_frames``)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


# ----------------------------------------------------------------------------------------------- image-to-video adapter


def count_residuals(unet_config: dict[str, Any]) -> list[tuple[int, int]]:
    """``(channels, downsample factor relative to the latent)`` of each of a UNet's ``down_block_res_samples``.

    In order: ``conv_in``'s output; per block, one per resnet/attention layer; then its downsampler's output (every
    block but the last). Toy UNet: ``[(32, 1), (32, 1), (32, 2), (64, 2), (64, 4), (128, 4)]``."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    if len(layers) != len(channels):
        raise ValueError(
            f"layers_per_block={layers} has {len(layers)} entries but block_out_channels={channels} has "
            f"{len(channels)}: give one per block, or an int"
        )
    blocks = unet_config.get("down_block_types")
    if blocks is not None and len(blocks) != len(channels):
        raise ValueError(f"down_block_types={list(blocks)} and block_out_channels={channels} differ in length")
    out = [(channels[0], 1)]
    for i, (c, n) in enumerate(zip(channels, layers, strict=True)):
        out += [(c, 2**i)] * n
        if i < len(channels) - 1:
            out.append((c, 2 ** (i + 1)))
    return out


class _ResBlock(torch.nn.Module):
    """x + conv1×1(SiLU(conv3×3(x))): T2I-Adapter's light residual block, without normalisation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


class ImageToVideoAdapter(torch.nn.Module):
    """First-frame latent → per-frame residuals for the video UNet's down blocks (see the module docstring).

    ``config`` (JSON-serialisable, stored as ``self.config``): ``in_channels``, ``block_out_channels``,
    ``layers_per_block``, ``max_frames``, ``motion_scale`` and, optionally, ``residuals`` (derived from the others by
    :func:`count_residuals` when absent, and checked against them when given)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        missing = [k for k in _I2V_CONFIG_KEYS if k not in config]
        if missing:
            raise ValueError(f"image-to-video adapter config lacks {missing}; build it with from_unet_config")
        channels = [int(c) for c in config["block_out_channels"]]
        layers = config["layers_per_block"]
        derived = count_residuals({"block_out_channels": channels, "layers_per_block": layers})
        residuals = [tuple(r) for r in config.get("residuals", derived)]
        if residuals != derived:
            raise ValueError(
                f"image-to-video adapter config: residuals={residuals} but block_out_channels={channels} and "
                f"layers_per_block={layers} give {derived}; drop residuals or fix it"
            )
        if int(config["max_frames"]) < 1:
            raise ValueError(f"image-to-video adapter config: max_frames={config['max_frames']} must be ≥ 1")
        self.config: dict[str, Any] = {
            "in_channels": int(config["in_channels"]),
            "block_out_channels": channels,
            "layers_per_block": layers if isinstance(layers, int) else list(layers),
            "residuals": [list(r) for r in residuals],
            "max_frames": int(config["max_frames"]),
            "motion_scale": float(config["motion_scale"]),
        }
        self.conv_in = torch.nn.Conv2d(self.config["in_channels"], channels[0], 3, padding=1)
        self.frame_position = torch.nn.Parameter(torch.randn(self.config["max_frames"], channels[0]) * 0.02)
        self.blocks = torch.nn.ModuleList(_ResBlock(c) for c in channels)
        self.downsamplers = torch.nn.ModuleList(
            torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        # A residual at downsample factor 2**l reads level l's features (channels[l]); a downsampler's residual has
        # the previous block's channels, hence the 1×1 conv per residual rather than per level.
        self._levels = [int(math.log2(factor)) for _, factor in residuals]
        self.out_convs = torch.nn.ModuleList(
            torch.nn.Conv2d(channels[level], c, 1) for (c, _), level in zip(residuals, self._levels, strict=True)
        )
        with torch.no_grad():
            for conv in (self.conv_in, *self.out_convs):
                conv.weight.zero_()
                conv.bias.zero_()

    @classmethod
    def from_unet_config(
        cls, unet_config: dict[str, Any], *, max_frames: int = 32, motion_scale: float = 1.0
    ) -> ImageToVideoAdapter:
        """A fresh adapter (output unchanged at first) for the UNet described by ``unet_config``."""
        return cls(
            {
                "in_channels": unet_config["in_channels"],
                "block_out_channels": list(unet_config["block_out_channels"]),
                "layers_per_block": unet_config["layers_per_block"],
                "residuals": [list(r) for r in count_residuals(unet_config)],
                "max_frames": max_frames,
                "motion_scale": motion_scale,
            }
        )

    def forward(self, z0: torch.Tensor, num_frames: int, motion_scale: float | None = None) -> tuple[torch.Tensor, ...]:
        """Residuals (B·F, c, h/k, w/k), one per UNet residual, for first-frame latents ``z0`` (B, C, h, w) and
        ``num_frames`` frames; ``motion_scale`` overrides the config's for this call."""
        if not 1 <= num_frames <= self.config["max_frames"]:
            raise ValueError(f"num_frames={num_frames} outside 1..max_frames={self.config['max_frames']}")
        scale = self.config["motion_scale"] if motion_scale is None else motion_scale
        b = z0.shape[0]
        dtype = self.conv_in.weight.dtype
        h = self.conv_in(z0.to(dtype)).repeat_interleave(num_frames, 0)  # (B·F, C0, h, w), frame index fastest
        position = self.frame_position[:num_frames].repeat(b, 1)  # row b·F + f holds frame f's vector
        h = h + scale * position[:, :, None, None]
        levels = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = self.downsamplers[i - 1](h)
            h = block(h)
            levels.append(h)
        return tuple(conv(levels[level]) for conv, level in zip(self.out_convs, self._levels, strict=True))


def save_i2v_adapter(adapter: ImageToVideoAdapter, out_dir: str | Path) -> Path:
    """Write ``adapter`` as ``out_dir/config.json`` and ``out_dir/image_to_video_adapter.safetensors``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    # Each file is written beside its final name and renamed, so a reader never sees half a file.
    weights_tmp = out_dir / f".{WEIGHTS_NAME}.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, out_dir / WEIGHTS_NAME)
    config_tmp = out_dir / f".{CONFIG_NAME}.tmp"
    config_tmp.write_text(json.dumps(adapter.config, indent=2) + "\n")
    os.replace(config_tmp, out_dir / CONFIG_NAME)
    return out_dir


def load_i2v_adapter(path: str | Path, *, dtype: torch.dtype = torch.float32) -> ImageToVideoAdapter:
    """The adapter saved by :func:`save_i2v_adapter` in ``path`` (safetensors only), in ``dtype``."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"image-to-video adapter {path}: {f} does not exist")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"image-to-video adapter {config_file}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"image-to-video adapter {config_file}: expected a JSON object, got {type(config).__name__}")
    adapter = ImageToVideoAdapter(config)
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"image-to-video adapter {weights_file}: not a readable safetensors file ({e})") from e
    expected = adapter.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"image-to-video adapter {weights_file}: keys do not match {config_file} (missing {missing}, "
            f"unexpected {unexpected})"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in tensors.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"image-to-video adapter {weights_file}: shapes do not match {config_file}: {wrong}")
    adapter.load_state_dict(tensors, strict=True)
    return adapter.to(dtype)
