"""Inflating the toy image UNet into a video UNet: zero-initialised temporal outputs make the inflated model equal to
the image model frame by frame; motion adapters round-trip through diffusers' MotionAdapter directory."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel

from models.video_unet import (
    MOTION_KEY,
    from_frames,
    image_forward_per_frame,
    inflate,
    load_motion_adapter,
    motion_adapter_config,
    new_motion_adapter,
    save_motion_adapter,
    temporal_parameters,
    to_frames,
    video_forward,
    zero_init_temporal_out,
)

TEACHER = "toyworld/zoo/image_teacher"


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(TEACHER, subfolder="unet", local_files_only=True).eval()


def _inputs(seed: int = 0, b: int = 2, f: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 16, 16, generator=g)
    t = torch.tensor([700, 30])[:b]
    ehs = torch.randn(b, 77, 64, generator=g)
    return x, t, ehs


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if MOTION_KEY in name or isinstance(module, MotionAdapter):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def test_a_freshly_inflated_model_equals_the_image_unet_frame_by_frame(unet):
    video = inflate(unet, heads=4).eval()
    x, t, ehs = _inputs()
    out, ref = video_forward(video, x, t, ehs), image_forward_per_frame(unet, x, t, ehs)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # the frames really differ (the equality is not a constant output)
    assert (ref[:, :, 0] - ref[:, :, 1]).abs().mean() > 1e-2


@torch.no_grad()
def test_without_zero_init_the_motion_modules_change_the_output(unet):
    adapter = MotionAdapter(**motion_adapter_config(dict(unet.config), heads=4))  # diffusers' own random init
    video = inflate(unet, adapter, zero_init=False).eval()
    x, t, ehs = _inputs()
    assert (video_forward(video, x, t, ehs) - image_forward_per_frame(unet, x, t, ehs)).abs().max() > 1e-3
    zeroed = zero_init_temporal_out(video)
    assert zeroed == 10  # one per motion module: 3 down blocks × 1, the mid block, 3 up blocks × 2 (toy UNet)
    torch.testing.assert_close(video_forward(video, x, t, ehs), image_forward_per_frame(unet, x, t, ehs), atol=2e-5,
                               rtol=1e-4)  # fmt: skip


@torch.no_grad()
def test_the_prompt_embeddings_must_be_repeated_per_frame(unet):
    """diffusers 0.42.1's UNetMotionModel does not repeat encoder_hidden_states per frame: video_forward does."""
    video = inflate(unet, heads=4).eval()
    x, t, ehs = _inputs()
    with pytest.raises(RuntimeError):
        video(x, t, encoder_hidden_states=ehs)
    assert torch.isfinite(video_forward(video, x, t, ehs)).all()


def test_only_motion_modules_are_temporal(unet):
    video = inflate(unet, heads=4)
    temporal = temporal_parameters(video)
    assert temporal and all(MOTION_KEY in n for n in temporal)
    n_motion = sum(p.numel() for p in temporal.values())
    n_adapter = sum(p.numel() for p in new_motion_adapter(dict(unet.config), heads=4).parameters())
    assert n_motion == n_adapter
    spatial = {n: p for n, p in video.named_parameters() if MOTION_KEY not in n}
    assert sum(p.numel() for p in spatial.values()) == sum(p.numel() for p in unet.parameters())


@torch.no_grad()
def test_motion_modules_round_trip_through_a_motion_adapter_directory(unet, tmp_path):
    adapter = new_motion_adapter(dict(unet.config), heads=4)
    _randomise(adapter)
    video = inflate(unet, adapter)
    save_motion_adapter(video, tmp_path / "ma")
    assert (tmp_path / "ma" / "diffusion_pytorch_model.safetensors").is_file()
    again = inflate(unet, load_motion_adapter(tmp_path / "ma"))
    x, t, ehs = _inputs()
    torch.testing.assert_close(video_forward(again, x, t, ehs), video_forward(video, x, t, ehs))
    with pytest.raises(FileNotFoundError, match="MotionAdapter"):
        load_motion_adapter(tmp_path / "nope")


def test_frame_reshapes_are_inverse():
    x = torch.randn(2, 4, 3, 5, 5)
    assert torch.equal(from_frames(to_frames(x), 3), x)
    assert torch.equal(to_frames(x)[1], x[0, :, 1])
