"""Stage 1's configuration, run identity and latent-cache key (no Ray, no training): both derived from what the job
receives (its settings and its encode step's spec)."""

from __future__ import annotations

import numpy as np
import pytest

from filters.decode import DecodeConfig
from pipelines.config import ConfigError, load_config
from pipelines.distill_image import encode_spec
from pipelines.latent_cache import cache_key, decode_square
from pipelines.stage_job import run_name
from pipelines.stages import stage
from toyworld.images import encode_png

DIGESTS = {"vae/diffusion_pytorch_model.safetensors": "a", "unet/diffusion_pytorch_model.safetensors": "b",
           "text_encoder/model.safetensors": "c"}  # fmt: skip


def test_the_profiles_configure_stage1_for_their_scale():
    toy, sd15 = load_config("toy"), load_config("sd15")
    assert toy.teacher.pretrained_dir.endswith("toyworld/zoo/image_teacher") and toy.distill_image.resolution == 64
    assert (sd15.teacher.lora.rank, sd15.teacher.lora.lora_alpha, sd15.distill_image.resolution) == (64, 64, 512)
    assert (sd15.consistency.w_min, sd15.consistency.w_max) == (5.0, 15.0)
    assert sd15.distill_image.train.use_gpu and sd15.distill_image.train.zero_stage == 2
    assert toy.distill_image.target == "ema" and toy.distill_image.ema_decay == 0.95


@pytest.mark.parametrize(
    "override, key",
    [
        ("distill_image.target=online", "distill_image.target"),
        ("distill_image.resolution=60", "distill_image.resolution"),
        ("distill_image.train.zero_stage=4", "distill_image.train.zero_stage"),
        ("distill_image.train.steps=0", "distill_image.train.steps"),
        ("consistency.w_min=9", "consistency"),
        ("teacher.lora.rank=0", "teacher.lora.rank"),
        ("distill_image.preview_prompts=['  ']", "distill_image.preview_prompts"),
    ],
)
def test_invalid_stage1_settings_raise_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("toy", [override])


def settings(*overrides: str):
    return stage("distill_image").settings_of(load_config("toy", list(overrides)))


def name(cfg, dataset: str = "sha256:d1", digests: dict = DIGESTS) -> str:
    return run_name(cfg, "distill_image", "out", {"dataset": dataset, "teacher": digests})


def test_the_run_name_resumes_across_more_steps_but_not_across_other_inputs_or_settings():
    first = name(settings())
    assert first.startswith("stage1-out-")
    assert name(settings("distill_image.train.steps=900", "distill_image.train.log_every=3")) == first
    assert name(settings("distill_image.preview_prompts=[a red circle]")) == first
    assert name(settings(), dataset="sha256:d2") != first
    assert name(settings(), digests={**DIGESTS, "unet/diffusion_pytorch_model.safetensors": "z"}) != first
    assert name(settings("distill_image.train.lr=0.01")) != first
    assert name(settings("decode.max_pixels=1000000")) != first  # the data it trains on is decoded differently


def test_the_cache_key_follows_the_data_the_encoders_and_the_resolution_only():
    key = cache_key(encode_spec(settings()), "sha256:d1", DIGESTS)
    assert cache_key(encode_spec(settings("distill_image.train.lr=0.01")), "sha256:d1", DIGESTS) == key
    assert (
        cache_key(encode_spec(settings()), "sha256:d1", {**DIGESTS, "unet/diffusion_pytorch_model.safetensors": "z"})
        == key
    )
    assert cache_key(encode_spec(settings()), "sha256:d2", DIGESTS) != key
    assert (
        cache_key(encode_spec(settings()), "sha256:d1", {**DIGESTS, "vae/diffusion_pytorch_model.safetensors": "z"})
        != key
    )
    assert cache_key(encode_spec(settings("distill_image.resolution=32")), "sha256:d1", DIGESTS) != key
    assert cache_key(encode_spec(settings("teacher.pretrained_dir=/elsewhere")), "sha256:d1", DIGESTS) == key


def test_decode_square_resizes_the_shorter_side_and_centre_crops():
    from PIL import Image

    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 30:50] = 255  # a white band in the middle of a wide image
    out, error = decode_square(encode_png(Image.fromarray(img)), 20, DecodeConfig())
    assert error == "" and out.shape == (20, 20, 3)
    assert out[:, 10].min() > 200 and out[:, 0].max() < 60  # centre kept, sides cropped
    missing, error = decode_square(b"not an image", 20, DecodeConfig())
    assert missing is None and error.startswith("undecodable:")
