"""Unit tests for models.scorers: sd15 architectures by construction (meta device), toy round trips, config errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contracts.digests import sha256_file
from models.scorers import (
    BUNDLED_OPEN_CLIP_CONFIG_DIR,
    AestheticConfig,
    AestheticMLP,
    ClipConfig,
    ImageTextScorer,
    ScorersConfig,
    WatermarkConfig,
    build_clip,
    build_watermark,
    load_state_dict_file,
    save_weights,
)

TOY_HIDDEN = (32, 16, 16, 8)


def toy_config(clip_weights=None, aesthetic_weights=None, watermark_weights=None, **overrides) -> ScorersConfig:
    cfg = ScorersConfig(
        clip=ClipConfig(
            model="alcm-toy-clip",
            weights=clip_weights,
            model_config_dir=str(BUNDLED_OPEN_CLIP_CONFIG_DIR),
            image_size=64,
        ),
        aesthetic=AestheticConfig(weights=aesthetic_weights, input_dim=64, hidden=TOY_HIDDEN),
        watermark=WatermarkConfig(arch="toy_cnn", weights=watermark_weights, input_size=64),
        batch_size=3,
    )
    return dataclasses.replace(cfg, **overrides)


def random_images(n: int, seed: int = 0, shape=(64, 64, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


CAPTIONS = [
    "a large red circle on the left on a white background",
    "a small blue square at the top on a black background",
    "a small green triangle in the center on a gray background",
    "a large yellow circle on the right on a gray background",
    "a small purple square at the bottom on a white background",
]


@pytest.fixture(scope="module")
def random_toy_scorer() -> ImageTextScorer:
    torch.manual_seed(0)
    return ImageTextScorer(toy_config())


def test_sd15_clip_vit_l14_has_the_public_parameter_names_and_shapes():
    model, size, tokenizer = build_clip(ClipConfig(model="ViT-L-14", weights=None), meta=True)
    params = dict(model.named_parameters())
    assert size == 224
    assert params["visual.proj"].shape == (1024, 768)
    assert params["text_projection"].shape == (768, 768)
    assert params["visual.conv1.weight"].shape == (1024, 3, 14, 14)
    assert params["token_embedding.weight"].shape == (49408, 768)
    assert params["positional_embedding"].shape == (77, 768)
    assert "logit_scale" in params
    n_params = sum(p.numel() for p in params.values())
    assert n_params == pytest.approx(427.6e6, rel=1e-3)
    assert tokenizer(["a photo"]).shape == (1, 77)


def test_sd15_aesthetic_mlp_has_laion_keys_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in AestheticMLP(768).state_dict().items()}
    assert shapes == {
        "layers.0.weight": (1024, 768),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }


def test_sd15_watermark_detector_has_laion_head_keys_and_shapes():
    detector = build_watermark(WatermarkConfig(arch="efficientnet_b3a"), meta=True)
    shapes = {k: tuple(v.shape) for k, v in detector.net.state_dict().items() if k.startswith("classifier.")}
    assert shapes == {
        "classifier.0.weight": (625, 1536),
        "classifier.0.bias": (625,),
        "classifier.3.weight": (256, 625),
        "classifier.3.bias": (256,),
        "classifier.5.weight": (2, 256),
        "classifier.5.bias": (2,),
    }
    assert "conv_stem.weight" in detector.net.state_dict()  # bare timm keys, no wrapper prefix


def test_random_toy_scorer_returns_float32_scores_in_range(random_toy_scorer):
    scores = random_toy_scorer.score(random_images(5), CAPTIONS)
    assert set(scores) == {"clip_score", "aesthetic_score", "watermark_prob"}
    for values in scores.values():
        assert values.dtype == np.float32 and values.shape == (5,) and np.isfinite(values).all()
    assert (np.abs(scores["clip_score"]) <= 100.0 + 1e-3).all()
    assert ((scores["watermark_prob"] >= 0) & (scores["watermark_prob"] <= 1)).all()


def test_scores_do_not_depend_on_batch_chunking(random_toy_scorer):
    images = random_images(5, seed=1)
    chunked = random_toy_scorer.score(images, CAPTIONS)  # batch_size 3: chunks of 3 + 2
    singles = [random_toy_scorer.score([img], [cap]) for img, cap in zip(images, CAPTIONS, strict=True)]
    for name, values in chunked.items():
        np.testing.assert_allclose(values, [s[name][0] for s in singles], rtol=1e-4, atol=1e-4)


def test_clip_score_is_100_times_cosine_of_the_embeddings(random_toy_scorer):
    images = random_images(2, seed=2)
    image_emb = random_toy_scorer.image_embeddings(images)
    text_emb = random_toy_scorer.text_embeddings(CAPTIONS[:2])
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
    expected = 100.0 * (image_emb * text_emb).sum(axis=1)
    np.testing.assert_allclose(random_toy_scorer.score(images, CAPTIONS[:2])["clip_score"], expected, atol=1e-3)


def _clip_view(img: np.ndarray, size: int) -> np.ndarray:
    """open_clip's eval transform written out with PIL: bicubic resize of the shortest side to ``size``, centre crop."""
    h, w = img.shape[:2]
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def _watermark_view(img: np.ndarray, size: int) -> np.ndarray:
    """LAION's watermark transform written out with PIL: a bilinear resize to ``size x size``, aspect ignored."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))


def test_images_of_any_size_are_resized_inside(random_toy_scorer):
    # A wide image whose left and right thirds differ from its middle (the centre crop keeps the middle only), and a
    # small one that has to be enlarged.
    wide = random_images(1, seed=3, shape=(90, 130, 3))[0]
    wide[:, :40] = (250, 20, 20)
    wide[:, 90:] = (20, 20, 250)
    images = [wide, random_images(1, seed=4, shape=(40, 48, 3))[0]]
    size = 64  # clip.image_size and watermark.input_size of the toy config
    scores = random_toy_scorer.score(images, CAPTIONS[:2])
    cropped = random_toy_scorer.score([_clip_view(img, size) for img in images], CAPTIONS[:2])
    squashed = random_toy_scorer.score([_watermark_view(img, size) for img in images], CAPTIONS[:2])

    # CLIP (and the aesthetic head on its embedding) sees the shortest-side resize + centre crop; the watermark
    # detector sees the whole image squashed to a square. Each score equals that model's view resized beforehand.
    np.testing.assert_allclose(scores["clip_score"], cropped["clip_score"], atol=1e-4)
    np.testing.assert_allclose(scores["aesthetic_score"], cropped["aesthetic_score"], atol=1e-6)
    np.testing.assert_allclose(scores["watermark_prob"], squashed["watermark_prob"], atol=1e-6)
    # The two views really differ, so the equalities above pin which resize each model gets.
    assert abs(cropped["clip_score"][0] - squashed["clip_score"][0]) > 1e-2
    assert abs(cropped["watermark_prob"][0] - squashed["watermark_prob"][0]) > 1e-4


def test_toy_scorer_save_load_round_trip_gives_identical_scores(random_toy_scorer, tmp_path: Path):
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("clip", "aesthetic", "watermark")}
    save_weights(random_toy_scorer.clip, paths["clip"])
    save_weights(random_toy_scorer.aesthetic, paths["aesthetic"])
    save_weights(random_toy_scorer.watermark.net, paths["watermark"])
    torch.manual_seed(123)  # a different random init, overwritten by the loaded weights
    loaded = ImageTextScorer(toy_config(*(str(paths[n]) for n in ("clip", "aesthetic", "watermark"))))
    images = random_images(4, seed=5)
    before, after = random_toy_scorer.score(images, CAPTIONS[:4]), loaded.score(images, CAPTIONS[:4])
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert len(sha256_file(paths["clip"])) == 64


def test_torch_pt_weights_load_with_weights_only(random_toy_scorer, tmp_path: Path):
    path = tmp_path / "aesthetic.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_toy_scorer.aesthetic.state_dict().items()}}, path)
    state = load_state_dict_file(path)
    assert set(state) == set(random_toy_scorer.aesthetic.state_dict())


@pytest.mark.parametrize("which", ["clip", "aesthetic", "watermark"])
def test_missing_weights_path_raises_file_not_found_naming_the_path(which, tmp_path: Path):
    missing = str(tmp_path / f"no-such-{which}.safetensors")
    cfg = toy_config(**{"clip_weights": None, f"{which}_weights": missing})
    with pytest.raises(FileNotFoundError, match=f"no-such-{which}"):
        ImageTextScorer(cfg)


def test_weights_that_do_not_match_the_architecture_are_rejected(random_toy_scorer, tmp_path: Path):
    path = tmp_path / "wrong.safetensors"
    save_weights(random_toy_scorer.watermark.net, path)
    with pytest.raises(RuntimeError, match="wrong.safetensors"):
        ImageTextScorer(toy_config(aesthetic_weights=str(path)))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: WatermarkConfig(arch="vit"), "watermark.arch='vit'"),
        (lambda: WatermarkConfig(positive_index=2), "watermark.positive_index=2"),
        (lambda: WatermarkConfig(input_size=0), "watermark.input_size=0"),
        (lambda: WatermarkConfig(weights="detector.onnx"), "watermark.weights='detector.onnx'"),
        (lambda: ClipConfig(model="", weights=None), "clip.model=''"),
        (lambda: ClipConfig(model="ViT-L-14", weights=None, image_size=-1), "clip.image_size=-1"),
        (lambda: AestheticConfig(weights=None, hidden=(1024, 128)), "aesthetic.hidden"),
        (lambda: AestheticConfig(weights=None, input_dim=0), "aesthetic.input_dim=0"),
        (lambda: dataclasses.replace(toy_config(), batch_size=0), "batch_size=0"),
        (lambda: dataclasses.replace(toy_config(), torch_threads=0), "torch_threads=0"),
        (lambda: dataclasses.replace(toy_config(), device="gpu-please"), "device='gpu-please'"),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(build, field):
    with pytest.raises(ValueError, match=f"^{field.replace('(', '[(]').replace(')', '[)]')}"):
        build()


def test_model_mismatches_raise_value_error_with_the_fix():
    with pytest.raises(ValueError, match="aesthetic.input_dim=768.*set aesthetic.input_dim to 64"):
        ImageTextScorer(dataclasses.replace(toy_config(), aesthetic=AestheticConfig(weights=None)))
    with pytest.raises(ValueError, match="clip.image_size=224.*set clip.image_size to 64"):
        build_clip(ClipConfig(model="alcm-toy-clip", weights=None), meta=True)
    with pytest.raises(ValueError, match="clip.model='no-such-clip'"):
        build_clip(ClipConfig(model="no-such-clip", weights=None), meta=True)


def test_bad_score_inputs_raise_value_error(random_toy_scorer):
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        random_toy_scorer.score(random_images(2), CAPTIONS[:1])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        random_toy_scorer.score([np.zeros((64, 64), dtype=np.uint8)], CAPTIONS[:1])


def test_scorers_config_from_dict_round_trips_and_rejects_unknown_keys():
    cfg = toy_config()
    assert ScorersConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="clip.weight: unknown setting"):
        ScorersConfig.from_dict({**cfg.to_dict(), "clip": {"model": "ViT-L-14", "weight": None}})


# ------------------------------------------------------------------ the committed toy zoo scorers (toyworld/scorers.py)


@pytest.fixture(scope="module")
def zoo_scorer_and_manifest():
    from toyworld.scorer_config import DEFAULT_SCORERS_DIR, toy_scorers_config

    manifest = json.loads((DEFAULT_SCORERS_DIR / "manifest.json").read_text())
    cfg = toy_scorers_config(str(DEFAULT_SCORERS_DIR), model_config_dir=str(BUNDLED_OPEN_CLIP_CONFIG_DIR))
    return ImageTextScorer(cfg), manifest


def test_committed_toy_scorer_files_match_their_manifest_digests(zoo_scorer_and_manifest):
    from toyworld.scorer_config import DEFAULT_SCORERS_DIR

    _, manifest = zoo_scorer_and_manifest
    for name, entry in manifest["files"].items():
        assert sha256_file(DEFAULT_SCORERS_DIR / entry["file"]) == entry["sha256"], name
    assert set(manifest["thresholds"]) == {"clip_min", "aesthetic_min", "watermark_max"}


def test_committed_toy_scorers_flag_mismatched_captions_blur_and_watermarks(zoo_scorer_and_manifest):
    from toyworld.degrade import add_watermark, blur
    from toyworld.scenes import caption_for, mismatched_caption, render_scene, sample_scene

    scorer, manifest = zoo_scorer_and_manifest
    thresholds = manifest["thresholds"]
    rng = np.random.default_rng(12345)  # neither the training nor the validation seed
    scenes = [sample_scene(rng) for _ in range(24)]
    clean = [render_scene(scene) for scene in scenes]
    images = [np.asarray(img) for img in clean]
    captions = [caption_for(scene) for scene in scenes]
    right = scorer.score(images, captions)
    wrong = scorer.score(images, [mismatched_caption(scene, rng) for scene in scenes])
    blurred = scorer.score([np.asarray(blur(img, rng)) for img in clean], captions)
    marked = scorer.score([np.asarray(add_watermark(img, rng)) for img in clean], captions)

    assert np.mean(right["clip_score"] >= thresholds["clip_min"]) >= 0.8
    assert np.mean(wrong["clip_score"] < thresholds["clip_min"]) >= 0.6
    assert np.mean(right["clip_score"] > wrong["clip_score"]) >= 0.8
    assert np.mean(right["aesthetic_score"] >= thresholds["aesthetic_min"]) >= 0.9
    assert np.mean(blurred["aesthetic_score"] < thresholds["aesthetic_min"]) >= 0.9
    assert np.mean(right["watermark_prob"] < thresholds["watermark_max"]) >= 0.9
    assert np.mean(marked["watermark_prob"] >= thresholds["watermark_max"]) >= 0.85
