"""Training the toy captioner for a few steps writes both formats, loadable, with a manifest of digests."""

from __future__ import annotations

import json

import torch

from contracts.digests import sha256_file
from models.captioner import TransformersCaptioner
from models.captioner_config import CaptionerConfig, GenerationConfig
from toyworld.captioner import LAVIS_CHECKPOINT, CaptionerTrainingConfig, train_captioner


def test_a_short_training_run_writes_a_loadable_captioner_in_both_layouts(tmp_path):
    cfg = CaptionerTrainingConfig(train_clips=8, train_dancers=8, val_clips=2, val_dancers=2, steps=3, batch_size=8)
    out = tmp_path / "captioner"
    manifest = train_captioner(out, cfg=cfg)
    for name in ("config.json", "model.safetensors", "vocab.txt", "preprocessor_config.json", LAVIS_CHECKPOINT):
        assert (out / name).is_file(), name
        assert manifest["files"][name] == sha256_file(out / name)[:16]
    assert json.loads((out / "manifest.json").read_text())["training"]["steps"] == 3
    assert 0.0 <= manifest["validation_greedy"]["attribute_accuracy"] <= 1.0
    captioner = TransformersCaptioner(CaptionerConfig(weights=str(out), generation=GenerationConfig(num_beams=1)))
    assert len(captioner.generate([torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()])) == 1
    lavis = torch.load(out / LAVIS_CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    assert "visual_encoder.cls_token" in lavis and "text_decoder.bert.embeddings.word_embeddings.weight" in lavis
    assert not list(tmp_path.glob(".captioner-*")), "staging directory left behind"
