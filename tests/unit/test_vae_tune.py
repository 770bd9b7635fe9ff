"""toyworld.vae_tune: a fine-tune of a VAE on new frames that keeps the latents its UNet learned near the parent's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from toyworld.image_teacher import build_vae, to_pixels
from toyworld.vae_tune import tune_vae


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    scenes = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    frames = np.zeros((16, 32, 32, 3), dtype=np.uint8)
    frames[:, 8:24, 8:24] = 200  # a structure the scenes lack
    torch.manual_seed(0)
    return scenes, frames, build_vae().eval()


def test_the_anchor_holds_the_scene_latents_and_the_new_frames_are_learned(data):
    scenes, frames, parent = data
    with torch.no_grad():
        before = parent.encode(to_pixels(scenes[:2])).latent_dist.mean
    runs = {}
    for anchor in (0.0, 100.0):
        torch.manual_seed(1)
        vae, m = tune_vae(copy.deepcopy(parent), scenes, frames, steps=10, lr=1e-3, anchor=anchor, batch=4,
                          kl_weight=1e-6, rng=np.random.default_rng(2), log_every=100)  # fmt: skip
        assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
        assert m["before_latent_drift"] == 0.0 and m["after_frame_mse"] < m["before_frame_mse"]
        runs[anchor] = m
    assert runs[100.0]["after_latent_drift"] < runs[0.0]["after_latent_drift"] / 2
    with torch.no_grad():
        assert torch.equal(parent.encode(to_pixels(scenes[:2])).latent_dist.mean, before)  # tuned copies only


def test_bad_settings_are_refused_by_name(data):
    scenes, frames, parent = data
    with pytest.raises(ValueError, match="steps=0"):
        tune_vae(parent, scenes, frames, steps=0, lr=1e-3, anchor=1.0, batch=4, kl_weight=1e-6,
                 rng=np.random.default_rng(0))
