"""Convert BLIP captioning weights between transformers' and LAVIS's layouts.

Both describe the same network. Only the vision tower is named differently (``vision_model.`` ↔ ``visual_encoder.``,
measured key by key on both real modules); the text decoder's keys are identical. Two details differ besides names:
transformers' ``save_pretrained`` omits the LM head's ``decoder.{weight,bias}`` (tied to the word embeddings and the
prediction bias) and LAVIS stores its embeddings' constant ``position_ids`` buffer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_VISION_HF = "vision_model."
_VISION_LAVIS = "visual_encoder."
_TEXT = "text_decoder."
_POSITION_IDS = "text_decoder.bert.embeddings.position_ids"
_WORD_EMBEDDINGS = "text_decoder.bert.embeddings.word_embeddings.weight"
_POSITION_EMBEDDINGS = "text_decoder.bert.embeddings.position_embeddings.weight"
_HEAD_BIAS = "text_decoder.cls.predictions.bias"
_TIED = {
    "text_decoder.cls.predictions.decoder.weight": _WORD_EMBEDDINGS,
    "text_decoder.cls.predictions.decoder.bias": _HEAD_BIAS,
}

# Vision-tower names after the tower prefix: (transformers pattern, LAVIS replacement), then the reverse table.
# The LAVIS side was measured on LAVIS's real BlipCaption; the worker's strict load re-checks it on every start.
_HF_TO_LAVIS = [
    (re.compile(r"embeddings\.class_embedding"), "cls_token"),
    (re.compile(r"embeddings\.position_embedding"), "pos_embed"),
    (re.compile(r"embeddings\.patch_embedding\.(weight|bias)"), r"patch_embed.proj.\1"),
    (re.compile(r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)"), r"blocks.\1.norm1.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)"), r"blocks.\1.norm2.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)"), r"blocks.\1.attn.qkv.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.self_attn\.projection\.(weight|bias)"), r"blocks.\1.attn.proj.\2"),
    (re.compile(r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)"), r"blocks.\1.mlp.\2.\3"),
    (re.compile(r"post_layernorm\.(weight|bias)"), r"norm.\1"),
]
_LAVIS_TO_HF = [
    (re.compile(r"cls_token"), "embeddings.class_embedding"),
    (re.compile(r"pos_embed"), "embeddings.position_embedding"),
    (re.compile(r"patch_embed\.proj\.(weight|bias)"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"blocks\.(\d+)\.norm1\.(weight|bias)"), r"encoder.layers.\1.layer_norm1.\2"),
    (re.compile(r"blocks\.(\d+)\.norm2\.(weight|bias)"), r"encoder.layers.\1.layer_norm2.\2"),
    (re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"blocks\.(\d+)\.attn\.proj\.(weight|bias)"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)"), r"encoder.layers.\1.mlp.\2.\3"),
    (re.compile(r"norm\.(weight|bias)"), r"post_layernorm.\1"),
]


def _rename(suffix: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, replacement in table:
        match = pattern.fullmatch(suffix)
        if match:
            return match.expand(replacement)
    return None


def hf_to_lavis(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``BlipForConditionalGeneration`` state dict → LAVIS ``BlipCaption`` state dict.

    Accepts both the in-memory layout (``model.state_dict()``) and the saved one (without the tied LM-head keys);
    the result always has the tied keys and LAVIS's ``position_ids`` buffer. Tensors are shared, not copied.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue  # constant buffers; LAVIS's own is added below
        if key.startswith(_TEXT):
            out[key] = value
        elif key.startswith(_VISION_HF):
            new = _rename(key[len(_VISION_HF) :], _HF_TO_LAVIS)
            if new is None:
                raise KeyError(f"{key}: not a BLIP captioning vision-tower key this converter knows")
            out[_VISION_LAVIS + new] = value
        else:
            raise KeyError(f"{key}: not a BlipForConditionalGeneration key (is this a BLIP captioning model?)")
    for tied, source in _TIED.items():
        if tied not in out:
            if source not in out:
                raise KeyError(f"{source} missing: cannot restore the tied {tied}")
            out[tied] = out[source]
    if _POSITION_EMBEDDINGS not in out:
        raise KeyError(f"{_POSITION_EMBEDDINGS} missing: not a complete BLIP text decoder")
    n_positions = out[_POSITION_EMBEDDINGS].shape[0]
    out[_POSITION_IDS] = torch.arange(n_positions, dtype=torch.long).unsqueeze(0)
    return out


def lavis_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAVIS ``BlipCaption`` state dict → transformers layout as ``save_pretrained`` writes it.

    Drops LAVIS's ``position_ids`` and the tied LM-head keys (transformers re-ties them on load). Tensors are shared.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids") or key in _TIED:
            continue
        if key.startswith(_TEXT):
            out[key] = value
        elif key.startswith(_VISION_LAVIS):
            new = _rename(key[len(_VISION_LAVIS) :], _LAVIS_TO_HF)
            if new is None:
                raise KeyError(f"{key}: not a BLIP captioning vision-tower key this converter knows")
            out[_VISION_HF + new] = value
        else:
            raise KeyError(f"{key}: not a LAVIS BlipCaption key (is this a blip_caption checkpoint?)")
    return out


def _read_safetensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = hf_dir / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(hf_dir / shard))
        return state
    raise FileNotFoundError(f"{single} does not exist (nor a sharded model.safetensors.index.json)")


def export_lavis_checkpoint(hf_dir: Path, out_path: Path) -> Path:
    """Write ``<hf_dir>/model.safetensors`` as a LAVIS checkpoint ``{"model": state_dict}`` at ``out_path``.

    The file holds tensors only, so LAVIS's backend loads it with ``torch.load(weights_only=True)``.
    """
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    state = hf_to_lavis(_read_safetensors(hf_dir))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
    # Write then rename, so that a reader never sees a half-written checkpoint.
    torch.save({"model": state}, tmp)
    os.replace(tmp, out_path)
    logger.info("exported %d tensors from %s to LAVIS checkpoint %s", len(state), hf_dir, out_path)
    return out_path
