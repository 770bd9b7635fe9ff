"""The toy style teacher: the stripe style and its score, the fine-tune's config and determinism, a tiny run's output
layout, and the committed style teacher's measured style and prompt fidelity."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from toyworld.clip_frames import make_video_pool
from toyworld.image_teacher import DEFAULT_DIR as TEACHER_DIR
from toyworld.image_teacher import read_object
from toyworld.scenes import render_scene, sample_scene
from toyworld.style_teacher import (
    DEFAULT_DIR,
    MASK_RAMP,
    StyleTeacherTrainingConfig,
    fine_tune_unet,
    stripe_amplitudes,
    style_score,
    stylise,
    train_style_teacher,
    validation_set,
)


def _plain_and_styled(n_scenes: int = 60, n_clips: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([7, 0])
    scenes = [sample_scene(rng) for _ in range(n_scenes)]
    plain = [np.asarray(render_scene(s, 64)) for s in scenes]
    backgrounds = [s.background for s in scenes]
    pool = make_video_pool(7, n_clips, stream=99)
    plain += list(pool.images)
    backgrounds += [c.background for c in pool.clips]
    styled = [stylise(img, bg) for img, bg in zip(plain, backgrounds, strict=True)]
    return np.stack(plain), np.stack(styled)


def test_the_style_score_separates_every_styled_render_from_every_plain_one():
    plain, styled = _plain_and_styled()
    a, b = stripe_amplitudes(plain), stripe_amplitudes(styled)
    # measured on 300 scenes: plain 0.1-5.0 (mean 1.4), styled 15.4-25.6 (mean 20.7)
    assert a.max() < 6.0 and b.min() > 12.0, (a.max(), b.min())
    assert style_score(plain) < 2.5 and style_score(styled) > 18.0


def test_a_full_frame_stripe_reads_its_amplitude():
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    assert style_score(flat) == pytest.approx(0.0, abs=1e-9)
    assert style_score(np.stack([stylise(f, "gray") for f in flat])) == pytest.approx(24.0, abs=0.2)


def test_stripes_leave_objects_untouched_and_their_colour_and_position_readable():
    prompts, truth = validation_set(0, 24)
    for img, p in zip(truth, prompts, strict=True):
        styled = stylise(img, p["background"])
        read = read_object(styled, p["background"])
        assert (read["colour"], read["position"]) == (p["colour"], p["position"])
        inside = np.abs(img.astype(float) - {"white": 230, "gray": 128, "black": 26}[p["background"]]).max(-1)
        assert np.array_equal(styled[inside >= MASK_RAMP[1]], img[inside >= MASK_RAMP[1]])
        assert np.abs(styled.astype(int) - img).max() >= 20  # the background did change


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"batch": -1}, "batch"),
        ({"threads": 0}, "threads"),
        ({"seed": -1}, "seed"),
        ({"lr": 0.0}, "lr"),
        ({"warmup": 10, "steps": 10}, "warmup"),
        ({"caption_dropout": 1.0}, "caption_dropout"),
        ({"clip_fraction": -0.1}, "clip_fraction"),
        ({"train_clips": 0}, "clip_fraction"),
        ({"val_guidance": 0.5}, "val_guidance"),
        ({"val_steps": 2.5}, "val_steps"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        StyleTeacherTrainingConfig(**settings)


def test_the_default_config_is_valid_and_frozen():
    cfg = StyleTeacherTrainingConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 1  # type: ignore[misc]
    assert StyleTeacherTrainingConfig(train_clips=0, clip_fraction=0.0).train_clips == 0


def test_the_fine_tune_is_deterministic_for_a_seed():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.set_num_threads(1)
    load = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(str(TEACHER_DIR), subfolder="unet", **load)
    text = CLIPTextModel.from_pretrained(str(TEACHER_DIR), subfolder="text_encoder", **load).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(TEACHER_DIR), subfolder="tokenizer", **load)
    g = torch.Generator().manual_seed(0)
    latents = (torch.randn(6, 4, 16, 16, generator=g), torch.full((6, 4, 16, 16), 0.1))
    captions = ["a small red circle on the left on a white background"] * 4 + ["a red circle moving left"] * 2

    def run(seed: int) -> dict[str, torch.Tensor]:
        cfg = StyleTeacherTrainingConfig(seed=seed, steps=2, warmup=1, batch=4)
        model = fine_tune_unet(copy.deepcopy(unet), text, tokenizer, latents, captions, 1.6, cfg,
                               n_clip_images=2, log_every=10)  # fmt: skip
        return model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], unet.state_dict()["conv_in.weight"])


def test_a_tiny_run_writes_the_unet_and_manifest(tmp_path):
    from diffusers import UNet2DConditionModel

    from contracts.digests import sha256_file

    out = tmp_path / "style_teacher"
    manifest = train_style_teacher(
        out, steps=2, warmup=1, batch=4, train_scenes=8, train_clips=2, val_prompts=1, val_steps=1, threads=1
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "manifest.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["files"] == {
        "unet/diffusion_pytorch_model.safetensors": sha256_file(out / "unet/diffusion_pytorch_model.safetensors")
    }
    assert set(manifest["metrics"]) == {
        "ground_truth_renders", "ground_truth_styled", "base_teacher_ddim1_cfg5", "style_teacher_ddim1_cfg5",
    }  # fmt: skip
    assert manifest["training"]["steps"] == 2 and manifest["style"]["stripe_cycles"] == 4
    assert UNet2DConditionModel.from_pretrained(str(out / "unet"), local_files_only=True).config.cross_attention_dim
    assert [p.name for p in tmp_path.iterdir()] == ["style_teacher"]  # no temp dir left behind


@pytest.fixture(scope="module")
def committed() -> dict:
    manifest = Path(DEFAULT_DIR) / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"no committed toy style teacher at {DEFAULT_DIR} (toyworld.style_teacher.train_style_teacher)")
    return json.loads(manifest.read_text())


def test_the_committed_style_teacher_files_match_its_manifest(committed):
    from contracts.digests import sha256_file

    for rel, digest in committed["files"].items():
        assert sha256_file(Path(DEFAULT_DIR) / rel) == digest, rel
    assert committed["training"] == dataclasses.asdict(StyleTeacherTrainingConfig())


def test_the_committed_style_teacher_draws_the_style_and_still_the_prompted_colours(committed):
    metrics = committed["metrics"]
    base, style = metrics["base_teacher_ddim25_cfg5"], metrics["style_teacher_ddim25_cfg5"]
    assert style["style_score"] > base["style_score"] + STYLE_MARGIN, (base, style)
    assert style["style_score_min"] > base["style_score_max"], (base, style)
    assert style["pixel_colour_accuracy"] >= COLOUR_MIN, style
    assert style["drew_something"] == 1.0


STYLE_MARGIN = 8.0
COLOUR_MIN = 0.6
