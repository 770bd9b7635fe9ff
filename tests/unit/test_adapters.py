"""Stage-3 adapters on the toy UNet: a fresh pose ControlNet or image-to-video adapter leaves the video UNet's output
unchanged, a trained one changes it; residual shapes match the UNet's skip connections; saved adapters load back."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from models.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ImageToVideoAdapter,
    build_controlnet,
    conditioning_channels_for,
    controlnet_residuals,
    count_residuals,
    load_i2v_adapter,
    save_i2v_adapter,
)
from models.factory import sd15_unet_config, unet_from_config
from models.video_unet import inflate, video_forward
from toyworld.image_teacher import DEFAULT_DIR

B, FRAMES, LATENT, VAE_DOWN, TOKENS = 1, 4, 16, 4, 8


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread():
    """These forwards are tiny: on a shared CPU, OpenMP threads waiting on each other make them 10-100× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet2d() -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(str(DEFAULT_DIR), subfolder="unet", local_files_only=True).eval()


@pytest.fixture(scope="module")
def video_unet(unet2d):
    return inflate(unet2d, heads=4).eval()


@pytest.fixture(scope="module")
def inputs(unet2d) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(B, 4, FRAMES, LATENT, LATENT, generator=g),
        "t": torch.tensor([500] * B),
        "ehs": torch.randn(B, TOKENS, unet2d.config.cross_attention_dim, generator=g),
        "cond": torch.rand(B, 3, FRAMES, LATENT * VAE_DOWN, LATENT * VAE_DOWN, generator=g),
        "z0": torch.randn(B, 4, LATENT, LATENT, generator=g),
    }


@pytest.fixture(scope="module")
def plain(video_unet, inputs) -> torch.Tensor:
    """The video UNet's output without any residual: what a fresh adapter must leave unchanged."""
    with torch.no_grad():
        return video_forward(video_unet, inputs["x"], inputs["t"], inputs["ehs"])


def _randomise(modules, *, seed: int, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _down_block_res_samples(model, x: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, *, video: bool):
    """The shapes of ``model``'s ``down_block_res_samples``, recorded by hooks on ``conv_in`` and each down block."""
    shapes = []
    hooks = [model.conv_in.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    for block in model.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, o: shapes.extend(tuple(r.shape) for r in o[1])))
    try:
        with torch.no_grad():
            if video:
                video_forward(model, x, t, ehs)
            else:
                model(x, t, encoder_hidden_states=ehs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


# ---------------------------------------------------------------------------------------------------------- ControlNet


def test_conditioning_embedding_channels_follow_the_vae_downsampling():
    assert conditioning_channels_for(8) == (16, 32, 96, 256)
    assert conditioning_channels_for(4) == (16, 32, 96)
    with pytest.raises(ValueError, match="conditioning_embedding_out_channels"):
        conditioning_channels_for(16)


def test_a_fresh_controlnet_adds_nothing_and_perturbed_zero_convs_change_the_output(unet2d, video_unet, inputs, plain):
    controlnet = build_controlnet(unet2d, vae_downsample=VAE_DOWN).eval()
    x, t, ehs, cond = inputs["x"], inputs["t"], inputs["ehs"], inputs["cond"]
    with torch.no_grad():
        down, mid = controlnet_residuals(controlnet, x, t, ehs, cond)
        assert all(torch.count_nonzero(r) == 0 for r in (*down, mid))
        torch.testing.assert_close(
            video_forward(video_unet, x, t, ehs, down_residuals=down, mid_residual=mid), plain, atol=1e-5, rtol=0
        )

        _randomise(
            [
                controlnet.controlnet_down_blocks,
                controlnet.controlnet_mid_block,
                controlnet.controlnet_cond_embedding.conv_out,
            ],
            seed=1,
        )
        down, mid = controlnet_residuals(controlnet, x, t, ehs, cond)
        controlled = video_forward(video_unet, x, t, ehs, down_residuals=down, mid_residual=mid)
        assert (controlled - plain).abs().max() > 1e-3
        other_pose, _ = controlnet_residuals(controlnet, x, t, ehs, 1 - cond)
        assert (other_pose[0] - down[0]).abs().max() > 1e-4
        half_down, half_mid = controlnet_residuals(controlnet, x, t, ehs, cond, scale=0.5)
        torch.testing.assert_close(half_down[0], 0.5 * down[0])
        torch.testing.assert_close(half_mid, 0.5 * mid)


def test_the_conditioning_embedding_downsamples_control_frames_by_the_toy_vae_factor(unet2d, inputs):
    controlnet = build_controlnet(unet2d, vae_downsample=VAE_DOWN).eval()
    x, t, ehs, cond = inputs["x"], inputs["t"], inputs["ehs"], inputs["cond"]
    assert cond.shape[-1] == 64
    with torch.no_grad():
        assert controlnet.controlnet_cond_embedding(cond[:, :, 0]).shape[-2:] == (LATENT, LATENT)
        down, mid = controlnet_residuals(controlnet, x.double(), t, ehs, cond)
    expected = [(B * FRAMES, c, LATENT // k, LATENT // k) for c, k in count_residuals(dict(unet2d.config))]
    assert [tuple(r.shape) for r in down] == expected
    assert tuple(mid.shape) == (B * FRAMES, 128, 4, 4)
    assert all(r.dtype == torch.float64 for r in (*down, mid))
    with pytest.raises(ValueError, match="downsamples by 4"):
        controlnet_residuals(controlnet, x, t, ehs, cond[..., ::2, ::2])


def test_controlnet_residuals_of_a_batch_are_each_videos_residuals_in_frame_order(unet2d):
    controlnet = build_controlnet(unet2d, vae_downsample=VAE_DOWN).eval()
    _randomise([controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block], seed=6)
    g = torch.Generator().manual_seed(7)
    x, ehs = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, TOKENS, 64, generator=g)
    cond, t = torch.rand(2, 3, 2, 32, 32, generator=g), torch.tensor([100, 900])
    with torch.no_grad():
        down, mid = controlnet_residuals(controlnet, x, t, ehs, cond)
        for b in range(2):
            one_down, one_mid = controlnet_residuals(
                controlnet, x[b : b + 1], t[b : b + 1], ehs[b : b + 1], cond[b : b + 1]
            )
            torch.testing.assert_close(mid[2 * b : 2 * b + 2], one_mid, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(down[0][2 * b : 2 * b + 2], one_down[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def saved_controlnet(unet2d, tmp_path_factory):
    controlnet = build_controlnet(unet2d, vae_downsample=VAE_DOWN)
    _randomise([controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block], seed=2)
    out = tmp_path_factory.mktemp("controlnet")
    controlnet.save_pretrained(str(out), safe_serialization=True)
    return controlnet, out


def test_a_saved_controlnet_loads_back_with_equal_weights(unet2d, saved_controlnet):
    controlnet, path = saved_controlnet
    assert (path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = build_controlnet(unet2d, from_dir=path, vae_downsample=VAE_DOWN)
    expected = controlnet.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=0, rtol=0, msg=key)


def test_a_controlnet_for_another_unet_or_vae_is_refused_naming_the_mismatch(unet2d, saved_controlnet, tmp_path):
    sd15 = tmp_path / "sd15_controlnet"
    with torch.device("meta"):
        ControlNetModel.from_unet(
            unet_from_config(sd15_unet_config(), meta=True), load_weights_from_unet=False
        ).save_config(str(sd15))
    with pytest.raises(
        ValueError, match=r"block_out_channels: ControlNet \[320, 640, 1280, 1280\] vs UNet \[32, 64, 128\]"
    ):
        build_controlnet(unet2d, from_dir=sd15, vae_downsample=VAE_DOWN)
    with pytest.raises(ValueError, match="downsamples control frames by 4 .* vae_downsample=8"):
        build_controlnet(unet2d, from_dir=saved_controlnet[1], vae_downsample=8)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_controlnet(unet2d, from_dir=tmp_path / "absent")


# ----------------------------------------------------------------------------------------------- image-to-video adapter


def test_adapter_residuals_match_the_toy_video_unets_down_block_res_samples(unet2d, video_unet, inputs):
    x, t, ehs = inputs["x"], inputs["t"], inputs["ehs"]
    real = _down_block_res_samples(video_unet, x, t, ehs, video=True)
    assert count_residuals(dict(unet2d.config)) == [(32, 1), (32, 1), (32, 2), (64, 2), (64, 4), (128, 4)]
    assert real == [(B * FRAMES, c, LATENT // k, LATENT // k) for c, k in count_residuals(dict(unet2d.config))]
    adapter = ImageToVideoAdapter.from_unet_config(dict(unet2d.config))
    with torch.no_grad():
        assert [tuple(r.shape) for r in adapter(inputs["z0"], FRAMES)] == real


def test_count_residuals_gives_sd15s_twelve_residuals_as_its_unet_makes_them_on_meta():
    config = sd15_unet_config()
    residuals = count_residuals(config)
    assert [c for c, _ in residuals] == [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]
    assert [k for _, k in residuals] == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]
    unet = unet_from_config(config, meta=True)
    with torch.device("meta"):
        x, t, ehs = torch.empty(2, 4, 64, 64), torch.tensor([1, 2]), torch.empty(2, 77, 768)
    real = _down_block_res_samples(unet, x, t, ehs, video=False)
    assert real == [(2, c, 64 // k, 64 // k) for c, k in residuals]
    with torch.device("meta"):
        adapter = ImageToVideoAdapter.from_unet_config(config)
    assert [tuple(c.weight.shape[:2]) for c in adapter.out_convs] == [
        (c, config["block_out_channels"][k.bit_length() - 1]) for c, k in residuals
    ]


def test_a_fresh_adapter_leaves_the_video_unet_unchanged_and_trained_out_convs_change_it(video_unet, inputs, plain):
    x, t, ehs, z0 = inputs["x"], inputs["t"], inputs["ehs"], inputs["z0"]
    adapter = ImageToVideoAdapter.from_unet_config(dict(video_unet.config))
    with torch.no_grad():
        residuals = adapter(z0, FRAMES)
        assert all(torch.count_nonzero(r) == 0 for r in residuals)
        torch.testing.assert_close(
            video_forward(video_unet, x, t, ehs, down_residuals=residuals), plain, atol=1e-5, rtol=0
        )
        _randomise([adapter.conv_in, *adapter.out_convs], seed=3)
        changed = video_forward(video_unet, x, t, ehs, down_residuals=adapter(z0, FRAMES))
    assert (changed - plain).abs().max() > 1e-3


def test_motion_scale_zero_makes_every_frames_features_identical_and_nonzero_makes_them_differ(unet2d, inputs):
    adapter = ImageToVideoAdapter.from_unet_config(dict(unet2d.config), max_frames=8, motion_scale=0.0)
    _randomise([adapter], seed=4, std=0.2)
    with torch.no_grad():
        still = adapter(inputs["z0"], FRAMES)
        moving = adapter(inputs["z0"], FRAMES, motion_scale=1.0)
    for r in still:
        assert torch.count_nonzero(r) > 0
        torch.testing.assert_close(r, r[:1].expand_as(r), atol=0, rtol=0)
    for r in moving:
        assert all((r[f] - r[0]).abs().max() > 1e-4 for f in range(1, FRAMES))
    with pytest.raises(ValueError, match="max_frames=8"):
        adapter(inputs["z0"], 9)


def test_frame_positions_follow_the_video_unets_frame_order_for_a_batch(unet2d):
    adapter = ImageToVideoAdapter.from_unet_config(dict(unet2d.config), max_frames=8)
    _randomise([adapter.blocks, adapter.downsamplers, adapter.out_convs], seed=8)
    with torch.no_grad():  # conv_in still zero: the features depend on the frame index only
        first = adapter(torch.randn(2, 4, 8, 8), FRAMES)[0]
    torch.testing.assert_close(first[:FRAMES], first[FRAMES:], atol=0, rtol=0)
    assert (first[1] - first[0]).abs().max() > 1e-4


def test_an_adapter_saved_and_loaded_gives_equal_outputs(unet2d, inputs, tmp_path):
    adapter = ImageToVideoAdapter.from_unet_config(dict(unet2d.config), max_frames=8, motion_scale=0.5)
    _randomise([adapter], seed=5)
    save_i2v_adapter(adapter, tmp_path / "i2v")
    assert sorted(p.name for p in (tmp_path / "i2v").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((tmp_path / "i2v" / CONFIG_NAME).read_text()) == adapter.config
    assert load_file(str(tmp_path / "i2v" / WEIGHTS_NAME)).keys() == adapter.state_dict().keys()
    loaded = load_i2v_adapter(tmp_path / "i2v")
    assert loaded.config == adapter.config
    with torch.no_grad():
        for a, b in zip(adapter(inputs["z0"], FRAMES), loaded(inputs["z0"], FRAMES), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert next(load_i2v_adapter(tmp_path / "i2v", dtype=torch.float16).parameters()).dtype == torch.float16


def test_loading_an_adapter_with_a_missing_bad_or_tampered_file_raises_naming_the_file(unet2d, tmp_path):
    adapter = ImageToVideoAdapter.from_unet_config(dict(unet2d.config))
    path = save_i2v_adapter(adapter, tmp_path / "i2v")
    weights = path / WEIGHTS_NAME
    tensors = load_file(str(weights))

    tensors["frame_pos"] = tensors.pop("frame_position")
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME}.*missing \['frame_position'\].*unexpected \['frame_pos'\]"):
        load_i2v_adapter(path)

    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=WEIGHTS_NAME):
        load_i2v_adapter(path)

    weights.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_i2v_adapter(path)

    save_i2v_adapter(adapter, tmp_path / "other")
    (tmp_path / "other" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=CONFIG_NAME):
        load_i2v_adapter(tmp_path / "other")


def test_an_adapter_config_with_residuals_that_do_not_fit_its_unet_is_refused(unet2d):
    config = ImageToVideoAdapter.from_unet_config(dict(unet2d.config)).config
    json.dumps(config)
    with pytest.raises(ValueError, match="residuals="):
        ImageToVideoAdapter({**config, "residuals": config["residuals"][:-1]})
    with pytest.raises(ValueError, match="max_frames"):
        ImageToVideoAdapter({k: v for k, v in config.items() if k != "max_frames"})
