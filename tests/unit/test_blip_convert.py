"""transformers ↔ LAVIS BLIP key conversion on a tiny captioner's real state dict (no LAVIS needed)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import BlipConfig, BlipForConditionalGeneration

from models.blip_convert import export_lavis_checkpoint, hf_to_lavis, lavis_to_hf

# LAVIS BlipCaption's vision-tower keys for one block, measured on the real module (lavis 1.0.2).
LAVIS_VISION_KEYS = {
    "visual_encoder.cls_token",
    "visual_encoder.pos_embed",
    "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.patch_embed.proj.bias",
    "visual_encoder.norm.weight",
    "visual_encoder.norm.bias",
} | {
    f"visual_encoder.blocks.0.{name}.{p}"
    for name in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    for p in ("weight", "bias")
}
TIED = {"text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias"}
POSITION_IDS = "text_decoder.bert.embeddings.position_ids"


@pytest.fixture(scope="module")
def model() -> BlipForConditionalGeneration:
    torch.manual_seed(0)
    cfg = BlipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            layer_norm_eps=1e-6,
        ),
        text_config=dict(
            vocab_size=30,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=28,
            sep_token_id=3,
            eos_token_id=3,
            pad_token_id=0,
        ),
    )
    return BlipForConditionalGeneration(cfg).eval()


def test_hf_to_lavis_gives_lavis_keys(model):
    sd = model.state_dict()
    lavis = hf_to_lavis(sd)
    vision = {k for k in lavis if k.startswith("visual_encoder.")}
    assert vision == LAVIS_VISION_KEYS
    text = {k for k in lavis if k.startswith("text_decoder.")}
    assert text == {k for k in sd if k.startswith("text_decoder.")} | {POSITION_IDS}
    assert torch.equal(lavis[POSITION_IDS], torch.arange(16).unsqueeze(0))
    assert lavis["visual_encoder.cls_token"] is sd["vision_model.embeddings.class_embedding"]
    assert (
        lavis["visual_encoder.blocks.0.attn.proj.weight"]
        is sd["vision_model.encoder.layers.0.self_attn.projection.weight"]
    )


def test_round_trip_of_the_saved_layout(model, tmp_path):
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert TIED.isdisjoint(saved)  # what save_pretrained leaves out, and the converter restores
    lavis = hf_to_lavis(saved)
    assert TIED <= lavis.keys()
    assert torch.equal(
        lavis["text_decoder.cls.predictions.decoder.weight"],
        saved["text_decoder.bert.embeddings.word_embeddings.weight"],
    )
    back = lavis_to_hf(lavis)
    assert back.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(back[key], value), key


def test_round_trip_of_the_in_memory_layout(model):
    sd = model.state_dict()
    back = lavis_to_hf(hf_to_lavis(sd))
    assert back.keys() == sd.keys() - TIED
    fresh = BlipForConditionalGeneration(model.config).eval()
    result = fresh.load_state_dict(back, strict=False)
    assert set(result.missing_keys) <= TIED and not result.unexpected_keys
    for key, value in sd.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_unknown_keys_are_refused(model):
    with pytest.raises(KeyError, match="text_encoder"):
        hf_to_lavis({**model.state_dict(), "text_encoder.pooler.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="vision_model.head"):
        hf_to_lavis({**model.state_dict(), "vision_model.head.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="visual_encoder_m"):
        lavis_to_hf({"visual_encoder_m.cls_token": torch.zeros(1)})


def test_export_is_loadable_with_weights_only(model, tmp_path):
    model.save_pretrained(tmp_path / "hf")
    out = export_lavis_checkpoint(tmp_path / "hf", tmp_path / "out" / "blip.pth")
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    assert set(loaded) == {"model"}
    assert loaded["model"].keys() == hf_to_lavis(model.state_dict()).keys()
    assert not list((tmp_path / "out").glob("*.tmp-*"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        export_lavis_checkpoint(tmp_path / "nowhere", tmp_path / "x.pth")
