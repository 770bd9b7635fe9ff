"""Personalised video models: an AnimateDiff/AnimateLCM pipeline whose spatial weights come from another image UNet.

The paper's claim is that the motion modules (and the LCM-LoRA) distilled on one image model keep working when the
spatial (image) weights are replaced by those of another SD-family model fine-tuned in some style. :func:`personalize`
builds such a pipeline from files, with torch and safetensors only:

- ``pipeline_dir`` is an ``AnimateDiffPipeline.save_pretrained`` directory: ``unet/`` a ``UNetMotionModel`` (spatial
  layers plus ``motion_modules``), ``motion_adapter/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``, ``model_index.json``, and maybe ``lcm_lora/pytorch_lora_weights.safetensors`` (a diffusers-format
  LoRA on the spatial layers) and a ``manifest.json``.
- ``unet_dir`` is a ``UNet2DConditionModel`` directory (``config.json`` and safetensors weights), or a directory
  holding one as ``unet/`` (a ``StableDiffusionPipeline`` directory, ``toyworld/zoo/style_teacher``).

The result is a copy of ``pipeline_dir`` in which every tensor of ``unet/`` whose name does not contain
``motion_modules`` (:data:`models.video_unet.MOTION_KEY`) is the other UNet's tensor of the same name, cast to the
dtype stored in the pipeline. Everything else is copied byte for byte: the motion modules, ``motion_adapter/``, the
LoRA file, the VAE, the text encoder, the configs, and ``manifest.json`` (which therefore still describes the
original pipeline; ``personalization.json`` records the swap). A ``UNetMotionModel``'s spatial tensors have the
same names as a ``UNet2DConditionModel``'s (``UNetMotionModel.from_unet2d`` copies them module by module), so the
swap is a rename-free replacement.

Before any file is written the two UNets are checked (:func:`check_compatible`): the config fields of
:data:`CONFIG_FIELDS`, block kinds compared without their ``Motion``/``2D`` suffix, then every spatial tensor name of
the pipeline present in the other UNet with the same shape, and no tensor of the other UNet left over. The first
mismatch raises ValueError naming the field or the tensor. Attention head counts are checked too: they change no
shape, but a UNet run with the wrong count computes something else.

Weights are read and written as safetensors only (a ``.bin`` in either ``unet/`` raises: it would be loaded in place
of, or left stale beside, the new weights). ``unet/`` may be one file, shards with an index, or one variant
(``diffusion_pytorch_model.fp16.safetensors``); several variants side by side raise (each tensor must be stored
once). The copy is written to a temporary folder next to ``out_dir`` and renamed into place at the end; an existing
``out_dir`` is refused, never overwritten.

``personalization.json`` (also returned): the resolved source paths, the sha256 of the other UNet's weight files
(:func:`models.digests.digest_file`), tensor digests (:func:`tensor_digest`) of the spatial weights replaced and of
the ones written, and of the motion weights (the same before and after), the tensor counts, any dtype casts, the
``unet/`` files' digests before and after, and the LoRA file's digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from contracts.digests import sha256_file
from models.video_unet import MOTION_KEY

logger = logging.getLogger(__name__)

RECORD_FILE = "personalization.json"
"""Written into the personalised pipeline directory; describes the swap."""
LORA_FILE = "lcm_lora/pytorch_lora_weights.safetensors"
"""The optional spatial LoRA of an AnimateLCM pipeline directory (copied unchanged)."""
CONFIG_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "down_block_types",
    "up_block_types",
    "norm_num_groups",
    "num_attention_heads",
)
"""Config fields that must agree between the pipeline's UNetMotionModel and the other UNet, checked in this order."""


# ------------------------------------------------------------------------------------------------------- helpers


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors, independent of how they are split into files: for each name in sorted order, the
    name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_config(unet_dir: Path) -> dict[str, Any]:
    path = unet_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{unet_dir}: no config.json (not a diffusers UNet directory)")
    return json.loads(path.read_text())


def _weight_files(unet_dir: Path) -> list[Path]:
    """The directory's safetensors weight files; raises if it has none, or ``.bin`` weights."""
    pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
    if pickled:
        raise ValueError(
            f"{unet_dir} holds pickled weights ({', '.join(pickled)}): personalize reads and writes safetensors only; "
            "re-save the model with save_pretrained(..., safe_serialization=True) and remove the .bin files"
        )
    files = sorted(unet_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{unet_dir}: no *.safetensors weights")
    return files


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in ``files`` (headers only), in file order; each name must occur once."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in shapes:
                    raise ValueError(
                        f"tensor {name!r} is stored twice in {path.parent} (several weight variants side by side?): "
                        "keep one variant of the weights in the directory"
                    )
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _source_dir(unet_dir: Path) -> Path:
    """``unet_dir`` itself when it holds a config.json, else its ``unet/`` subfolder (a pipeline directory)."""
    if (unet_dir / "config.json").is_file():
        return unet_dir
    if (unet_dir / "unet" / "config.json").is_file():
        return unet_dir / "unet"
    raise FileNotFoundError(f"unet_dir {unet_dir}: neither a UNet directory (config.json) nor a pipeline with unet/")


def _normalised(field: str, config: dict[str, Any]) -> Any:
    """A config field in a form comparable between UNetMotionModel and UNet2DConditionModel configs."""
    blocks = len(config["down_block_types"])
    if field in ("down_block_types", "up_block_types"):
        return [kind.removesuffix("Motion").removesuffix("2D") for kind in config[field]]
    if field == "num_attention_heads":
        # UNet2DConditionModel's legacy attention_head_dim is the head count; from_unet2d copies it across.
        value = config.get("num_attention_heads") or config.get("attention_head_dim")
    else:
        value = config.get(field)
    if field in ("layers_per_block", "num_attention_heads") and isinstance(value, int):
        return [value] * blocks
    return list(value) if isinstance(value, (list, tuple)) else value


def check_compatible(
    video_config: dict[str, Any],
    video_shapes: Mapping[str, tuple[int, ...]],
    image_config: dict[str, Any],
    image_shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Raise ValueError naming the first config field (:data:`CONFIG_FIELDS`) or tensor on which the pipeline's
    UNetMotionModel (``video_*``) and the other UNet (``image_*``) disagree; tensor shapes are name → shape."""
    if image_config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ValueError(
            f"unet _class_name={image_config['_class_name']!r}: personalize takes a UNet2DConditionModel's weights"
        )
    for field in CONFIG_FIELDS:
        ours, theirs = _normalised(field, video_config), _normalised(field, image_config)
        if ours != theirs:
            raise ValueError(f"config field {field!r} differs: pipeline unet {ours!r}, new unet {theirs!r}")
    spatial = {name: shape for name, shape in video_shapes.items() if MOTION_KEY not in name}
    for name, shape in spatial.items():
        if name not in image_shapes:
            raise ValueError(f"spatial weight {name!r} of the pipeline unet is missing from the new unet")
        if tuple(image_shapes[name]) != tuple(shape):
            raise ValueError(
                f"spatial weight {name!r}: shape {tuple(shape)} in the pipeline unet, {tuple(image_shapes[name])} "
                "in the new unet"
            )
    for name in image_shapes:
        if name not in spatial:
            raise ValueError(f"weight {name!r} of the new unet has no spatial counterpart in the pipeline unet")


# ------------------------------------------------------------------------------------------------------- the swap


def personalize(pipeline_dir: str | Path, unet_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Copy the AnimateDiff pipeline directory ``pipeline_dir`` to ``out_dir`` with every spatial weight of its
    ``unet/`` replaced by the weights of ``unet_dir`` (see the module docstring); returns the record also written to
    ``out_dir/personalization.json``.

    Raises FileExistsError if ``out_dir`` exists, FileNotFoundError for a missing directory or file, ValueError for
    incompatible UNets (naming the first mismatching config field or tensor) or non-safetensors weights."""
    pipeline_dir, out_dir = Path(pipeline_dir), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"out_dir {out_dir} exists: personalize never overwrites; choose a new directory")
    if not (pipeline_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"pipeline_dir {pipeline_dir}: no model_index.json (not a pipeline directory)")
    video_dir = pipeline_dir / "unet"
    video_config = _read_config(video_dir)
    if video_config.get("_class_name") != "UNetMotionModel":
        raise ValueError(
            f"{video_dir}/config.json _class_name={video_config.get('_class_name')!r}: expected 'UNetMotionModel' "
            "(an AnimateDiffPipeline directory)"
        )
    video_files = _weight_files(video_dir)
    source = _source_dir(Path(unet_dir))
    image_config = _read_config(source)
    image_files = _weight_files(source)
    check_compatible(video_config, _tensor_shapes(video_files), image_config, _tensor_shapes(image_files))

    new: dict[str, torch.Tensor] = {}
    for path in image_files:
        new.update(load_file(str(path)))
    source_digest = tensor_digest(new)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        shutil.copytree(pipeline_dir, tmp, dirs_exist_ok=True)  # symlinks (a hub cache) are copied as files
        replaced: dict[str, torch.Tensor] = {}
        written: dict[str, torch.Tensor] = {}
        motion: dict[str, torch.Tensor] = {}
        casts: set[tuple[str, str]] = set()
        files: dict[str, dict[str, str]] = {}
        for path in video_files:
            rel = f"unet/{path.name}"
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {"format": "pt"}
            tensors = load_file(str(path))
            for name, old in tensors.items():
                if MOTION_KEY in name:
                    motion[name] = old
                    continue
                value = new[name]
                if value.dtype != old.dtype:
                    casts.add((str(value.dtype), str(old.dtype)))
                    value = value.to(old.dtype)
                replaced[name], written[name] = old, value.contiguous()
                tensors[name] = written[name]
            save_file(tensors, str(tmp / rel), metadata=metadata)
            files[rel] = {"before": sha256_file(path), "after": sha256_file(tmp / rel)}
        lora = pipeline_dir / LORA_FILE
        record = {
            "pipeline_dir": str(pipeline_dir.resolve()),
            "unet_dir": str(source.resolve()),
            "unet_config_class": image_config.get("_class_name", "UNet2DConditionModel"),
            "unet_files": {p.name: sha256_file(p) for p in image_files},
            "unet_tensor_digest": source_digest,
            "replaced_spatial_digest": tensor_digest(replaced),
            "new_spatial_digest": tensor_digest(written),
            "motion_digest": tensor_digest(motion),
            "spatial_tensors": len(written),
            "motion_tensors": len(motion),
            "dtype_casts": [{"from": a, "to": b} for a, b in sorted(casts)],
            "files": files,
            "lcm_lora": {"file": LORA_FILE, "sha256": sha256_file(lora)} if lora.is_file() else None,
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        tmp.chmod(0o755)
        if out_dir.exists():
            raise FileExistsError(f"out_dir {out_dir} appeared while personalising; left it untouched")
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "personalised %s with %s → %s: %d spatial tensors replaced, %d motion tensors kept",
        pipeline_dir, source, out_dir, len(written), len(motion),
    )  # fmt: skip
    return record
