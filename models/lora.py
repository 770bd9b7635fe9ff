"""The student's LoRA: adding it to a UNet with PEFT, reading it back, and exporting it in the two public layouts.

- ``add_lora(unet, cfg)`` freezes the UNet and injects one PEFT LoRA adapter (``unet.add_adapter``) on the modules
  whose names end in ``cfg.target_modules``; only the LoRA A/B matrices are trainable. Both initialisations set
  B = 0, so the student starts as the teacher. The LoRA weights take the UNet's dtype (PEFT's behaviour).
- ``lora_state_dict(unet)`` is PEFT's ``get_peft_model_state_dict``: keys ``<module path>.lora_A.weight`` and
  ``<module path>.lora_B.weight``, without the adapter name.
- ``to_diffusers_lora(state)`` gives the content of a diffusers ``pytorch_lora_weights.safetensors`` (what
  ``StableDiffusionPipeline.save_lora_weights(dir, unet_lora_layers=state)`` writes and ``load_lora_weights`` reads):
  the PEFT keys prefixed with ``unet.``. Not ``convert_state_dict_to_diffusers``: mixing its output with PEFT keys
  made ``load_lora_weights`` silently drop every attention LoRA (toy experiment, see notes).
- ``to_kohya(state)`` gives the kohya layout of the public LCM-LoRA / AnimateLCM files:
  ``lora_unet_<module path, dots as underscores>.lora_down.weight`` (A), ``.lora_up.weight`` (B) and ``.alpha``,
  via diffusers' ``convert_state_dict_to_kohya``.

Alpha: the update of a module is (alpha / rank)·B·A. The kohya layout stores alpha per module, but
``convert_state_dict_to_kohya`` always writes alpha = rank, and a diffusers-format file without adapter metadata is
also loaded with alpha = rank. Both exports therefore take the configured ``alpha``: kohya files store it; the
diffusers export folds alpha / rank into B, so the file reproduces the student whoever loads it.
"""

from __future__ import annotations

from pathlib import Path

import peft
import safetensors.torch
import torch
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from models.safe_load import load_safetensors
from models.teacher_config import LoraConfig

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
"""File name ``load_lora_weights(directory)`` looks for."""
_PEFT_INIT = {"gaussian": "gaussian", "kaiming": True}
"""Our ``LoraConfig.init`` → PEFT's ``init_lora_weights``."""


EXCLUDE_MOTION = r".*motion_modules.*"
"""PEFT ``exclude_modules`` pattern keeping a spatial LoRA out of a video UNet's temporal layers (whose attention
also has to_q/to_k/to_v/to_out.0 and proj_in/proj_out)."""


def to_peft_config(cfg: LoraConfig, *, exclude: str | None = None) -> peft.LoraConfig:
    """PEFT's ``LoraConfig`` for our LoRA settings; ``exclude``: a regex of module names to leave without LoRA."""
    if cfg.init not in _PEFT_INIT:
        raise ValueError(f"lora.init={cfg.init!r}: choose one of {', '.join(_PEFT_INIT)}")
    return peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        init_lora_weights=_PEFT_INIT[cfg.init],
        exclude_modules=exclude,
    )


def add_lora(
    unet: torch.nn.Module, cfg: LoraConfig, *, adapter_name: str = "default", exclude: str | None = None
) -> torch.nn.Module:
    """Freeze ``unet`` and add a trainable LoRA adapter on ``cfg.target_modules``; returns the same module.
    ``exclude``: module names (regex) that get none, e.g. :data:`EXCLUDE_MOTION` on a video UNet.

    Raises ``ValueError`` when no module of ``unet`` matches the targets (or the adapter name is taken).
    """
    unet.requires_grad_(False)
    try:
        unet.add_adapter(to_peft_config(cfg, exclude=exclude), adapter_name=adapter_name)
    except ValueError as e:
        raise ValueError(f"adding the LoRA (lora.target_modules={list(cfg.target_modules)!r}) failed: {e}") from e
    return unet


def lora_modules(unet: torch.nn.Module) -> dict[str, int]:
    """Module path → LoRA rank, for every module of ``unet`` that carries a LoRA (one adapter)."""
    ranks = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer) and getattr(module, "r", None):
            ranks[name] = max(module.r.values())
    return ranks


def lora_state_dict(unet: torch.nn.Module, *, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's weights in PEFT's layout (``<module>.lora_A.weight`` / ``<module>.lora_B.weight``)."""
    return get_peft_model_state_dict(unet, adapter_name=adapter_name)


def _ranks(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Module path → rank, read from the A matrices of a PEFT-layout state dict."""
    ranks = {
        k.removesuffix(".lora_A.weight"): int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_A.weight")
    }
    if not ranks:
        raise ValueError("not a PEFT LoRA state dict: no '<module>.lora_A.weight' keys (use lora_state_dict(unet))")
    return ranks


def to_diffusers_lora(state: dict[str, torch.Tensor], *, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The diffusers ``pytorch_lora_weights.safetensors`` content of a PEFT-layout UNet LoRA state dict.

    ``alpha``: the adapter's LoRA alpha (None: equal to the rank, scale 1). When it differs from a module's rank,
    alpha / rank is folded into that module's B, since diffusers loads a file without metadata at alpha = rank.
    """
    ranks = _ranks(state)
    out = {}
    for key, value in state.items():
        module = key.rsplit(".lora_", 1)[0]
        if alpha is not None and key.endswith(".lora_B.weight") and alpha != ranks[module]:
            value = value * (alpha / ranks[module])
        out[f"unet.{key}"] = value
    return out


def to_kohya(state: dict[str, torch.Tensor], *, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """The kohya layout (``lora_unet_*.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``) of a PEFT-layout
    UNet LoRA state dict, as in the public LCM-LoRA and AnimateLCM files.

    ``alpha``: the adapter's LoRA alpha, stored in every ``.alpha`` entry (None: equal to each module's rank).
    """
    ranks = _ranks(state)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    expected = 3 * len(ranks)
    if len(kohya) != expected or not all(k.startswith("lora_unet_") for k in kohya):
        raise ValueError(f"kohya conversion gave {len(kohya)} keys for {len(ranks)} modules (expected {expected})")
    for key, down in list(kohya.items()):
        if key.endswith(".lora_down.weight"):
            value = float(down.shape[0]) if alpha is None else float(alpha)
            kohya[key.removesuffix(".lora_down.weight") + ".alpha"] = torch.tensor(value, dtype=down.dtype)
    return kohya


def save_lora(state: dict[str, torch.Tensor], path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write an exported LoRA (diffusers or kohya layout) as safetensors, optionally cast (e.g. fp16 like LCM-LoRA).

    For ``load_lora_weights(directory)`` name the file :data:`DIFFUSERS_LORA_FILE`.
    """
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(out, str(p), metadata={"format": "pt"})
    return p


def read_diffusers_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """A diffusers-format UNet LoRA file (as :func:`to_diffusers_lora` writes, alpha folded into B) back in PEFT
    layout (``<module>.lora_A.weight``); raises naming the file when it holds no UNet LoRA or is not safetensors
    (``ValueError``: a pickle given this name is refused, never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LoRA file")
    state = load_safetensors(path)
    out = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not out or not any(k.endswith(".lora_A.weight") for k in out):
        raise ValueError(f"{path}: not a diffusers UNet LoRA (no 'unet.<module>.lora_A.weight' keys)")
    return out


def insert_lora(
    unet: torch.nn.Module, state: dict[str, torch.Tensor], *, adapter_name: str, exclude: str | None = EXCLUDE_MOTION
) -> torch.nn.Module:
    """Add a frozen LoRA adapter named ``adapter_name`` holding ``state`` (PEFT layout, scale 1: alpha = rank per
    module, as in a diffusers file) on exactly the modules ``state`` names; every module must exist in ``unet``."""
    from peft.utils import set_peft_model_state_dict

    ranks = _ranks(state)
    rank = max(ranks.values())
    cfg = peft.LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(ranks),
        rank_pattern={m: r for m, r in ranks.items() if r != rank},
        alpha_pattern={m: r for m, r in ranks.items() if r != rank},
        init_lora_weights=False,
        exclude_modules=exclude,
    )
    unet.add_adapter(cfg, adapter_name=adapter_name)
    missing = sorted(set(ranks) - set(lora_modules_of(unet, adapter_name)))
    if missing:
        raise ValueError(f"LoRA modules not found in the UNet: {missing[:3]} ({len(missing)} in all)")
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA keys not loaded: {list(unexpected)[:3]}")
    for name, p in unet.named_parameters():
        if f".{adapter_name}." in name:
            p.requires_grad_(False)
    return unet


def lora_modules_of(unet: torch.nn.Module, adapter_name: str) -> list[str]:
    """Module paths carrying adapter ``adapter_name``."""
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {})
    ]


def set_lora_scale(unet: torch.nn.Module, adapter_name: str, scale: float) -> None:
    """Scale adapter ``adapter_name``'s update (alpha / rank)·B·A by ``scale`` in every module."""
    from peft.tuners.lora import LoraLayer

    for module in unet.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.scaling:
            module.set_scale(adapter_name, scale)
