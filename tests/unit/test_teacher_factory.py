"""The teacher factory, the SD v1-5 architecture on the meta device, and the student's LoRA with its two exports.

The SD v1-5 checks run on the meta device (no weights exist here); the load and export round trips run on tiny
random parts saved the way ``StableDiffusionPipeline.save_pretrained`` saves them, with a CLIP tokenizer built
offline from the BPE vocabulary open_clip ships.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models import teacher_config
from models.factory import build_teacher, sd15_unet_config, unet_from_config
from models.lora import (
    DIFFUSERS_LORA_FILE,
    add_lora,
    lora_modules,
    lora_state_dict,
    save_lora,
    to_diffusers_lora,
    to_kohya,
)
from models.teacher_config import LCM_LORA_TARGET_MODULES, LoraConfig, TeacherConfig
from pipelines.config import ConfigError, build
from toyworld.image_teacher import write_clip_tokenizer

SD15_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}

# --------------------------------------------------------------------------------------------------- config


def test_the_default_lora_is_lcm_lora_rank_64_alpha_64_gaussian():
    cfg = LoraConfig()
    assert (cfg.rank, cfg.lora_alpha, cfg.dropout, cfg.init) == (64, 64.0, 0.0, "gaussian")
    assert cfg.target_modules == LCM_LORA_TARGET_MODULES
    assert LoraConfig(rank=16, alpha=8).lora_alpha == 8.0


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (LoraConfig, "rank", 0),
        (LoraConfig, "alpha", 0.0),
        (LoraConfig, "dropout", 1.0),
        (LoraConfig, "target_modules", ()),
        (LoraConfig, "target_modules", ("to_q", " ")),
        (LoraConfig, "init", "xavier"),
        (TeacherConfig, "pretrained_dir", ""),
        (TeacherConfig, "dtype", "fp8"),
        (TeacherConfig, "prediction_type", "sample"),
    ],
)
def test_invalid_config_values_raise_naming_the_field(cls, field, value):
    with pytest.raises(ValueError, match=rf"^{field}="):
        cls(**{field: value})


def test_the_teacher_config_builds_from_a_profile_mapping_with_its_path_resolved():
    cfg = build(TeacherConfig, {"pretrained_dir": "weights/sd15", "lora": {"rank": 32, "alpha": 16}}, "teacher")
    assert cfg.pretrained_dir.endswith("/weights/sd15") and cfg.pretrained_dir.startswith("/")
    assert (cfg.lora.rank, cfg.lora.lora_alpha) == (32, 16.0)
    with pytest.raises(ConfigError, match=r"teacher\.lora\.rank=0"):
        build(TeacherConfig, {"lora": {"rank": 0}}, "teacher")


# --------------------------------------------------------------------------------------------------- SD v1-5 (meta)


@pytest.fixture(scope="module")
def sd15_lora_unet():
    return add_lora(unet_from_config(sd15_unet_config(), meta=True), LoraConfig())


def test_the_sd15_unet_builds_on_meta_with_859_5m_parameters():
    unet = unet_from_config(sd15_unet_config(), meta=True)
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


def _expected_lcm_lora_modules(unet: torch.nn.Module) -> dict[str, str]:
    """Every module LCM-LoRA adapts, found by walking the architecture by class (not by name matching)."""
    found = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                found[f"{name}.{proj}"] = "attention"
        elif isinstance(module, FeedForward):
            found[f"{name}.net.0.proj"] = found[f"{name}.net.2"] = "feed_forward"
        elif isinstance(module, Transformer2DModel):
            found[f"{name}.proj_in"] = found[f"{name}.proj_out"] = "transformer_proj"
        elif isinstance(module, ResnetBlock2D):
            for layer in ("conv1", "conv2", "time_emb_proj"):
                found[f"{name}.{layer}"] = "resnet"
            if module.conv_shortcut is not None:
                found[f"{name}.conv_shortcut"] = "shortcut"
        elif re.fullmatch(r"(down|up)_blocks\.\d\.(down|up)samplers\.0", name):
            found[f"{name}.conv"] = "resampler"
    return found


def test_default_lora_puts_rank_64_adapters_on_exactly_the_278_lcm_lora_modules(sd15_lora_unet):
    ranks = lora_modules(sd15_lora_unet)
    expected = _expected_lcm_lora_modules(sd15_lora_unet)
    assert set(ranks) == set(expected)
    assert set(ranks.values()) == {64}
    # 16 transformers × (2 attentions × 4 + 2 feed-forward + 2 projections); 22 resnets × 3; 14 shortcuts;
    # 3 downsamplers + 3 upsamplers.
    assert Counter(expected.values()) == {
        "attention": 128,
        "feed_forward": 32,
        "transformer_proj": 32,
        "resnet": 66,
        "shortcut": 14,
        "resampler": 6,
    }
    assert len(ranks) == 278
    trainable = [p for p in sd15_lora_unet.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 67_252_224
    assert len(trainable) == 2 * 278


def test_the_kohya_export_of_the_sd15_lora_has_the_lcm_lora_layout(sd15_lora_unet):
    kohya = to_kohya(lora_state_dict(sd15_lora_unet))
    assert len(kohya) == 3 * 278
    assert all(k.startswith("lora_unet_") for k in kohya)
    modules = {k.split(".", 1)[0] for k in kohya}
    assert len(modules) == 278
    for module in modules:
        assert {k for k in kohya if k.split(".", 1)[0] == module} == {
            f"{module}.lora_down.weight",
            f"{module}.lora_up.weight",
            f"{module}.alpha",
        }
        assert "." not in module
        assert kohya[f"{module}.alpha"].item() == 64.0
        assert kohya[f"{module}.lora_down.weight"].shape[0] == 64
        assert kohya[f"{module}.lora_up.weight"].shape[1] == 64
    for module in (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_up_blocks_3_attentions_2_proj_out",
        "lora_unet_mid_block_resnets_1_time_emb_proj",
        "lora_unet_up_blocks_0_resnets_2_conv_shortcut",
        "lora_unet_down_blocks_2_downsamplers_0_conv",
        "lora_unet_up_blocks_2_upsamplers_0_conv",
    ):
        assert module in modules
    down = kohya["lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight"]
    up = kohya["lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight"]
    assert (tuple(down.shape), tuple(up.shape)) == ((64, 320, 3, 3), (640, 64, 1, 1))
    assert to_kohya(lora_state_dict(sd15_lora_unet), alpha=32)["lora_unet_mid_block_resnets_1_conv2.alpha"] == 32.0


# --------------------------------------------------------------------------------------------------- tiny parts


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory) -> CLIPTokenizer:
    """SD's CLIP tokenizer (49408 tokens) written from open_clip's bundled BPE vocabulary, offline."""
    tokenizer = write_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    assert len(tokenizer) == 49408 and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer("a large red circle").input_ids == [49406, 320, 3638, 736, 7117, 49407]
    return tokenizer


def tiny_pipeline(tokenizer: CLIPTokenizer, unet: UNet2DConditionModel | None = None) -> StableDiffusionPipeline:
    torch.manual_seed(1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet if unet is not None else tiny_unet(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def unet_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999, 421]), torch.randn(2, 77, 32, generator=g)


def perturb_lora(unet: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("init", ["gaussian", "kaiming"])
def test_a_fresh_lora_leaves_the_unet_output_unchanged_and_only_lora_trains(init):
    x, t, ehs = unet_inputs()
    with torch.no_grad():
        before = tiny_unet()(x, t, ehs).sample
        student = add_lora(tiny_unet(), LoraConfig(rank=4, init=init))
        after = student(x, t, ehs).sample
    assert torch.equal(before, after)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    b_matrices = [p for n, p in student.named_parameters() if ".lora_B." in n]
    assert b_matrices and not any(p.any() for p in b_matrices)


def test_lora_targets_that_match_nothing_raise_naming_the_field():
    with pytest.raises(ValueError, match=r"lora\.target_modules"):
        add_lora(tiny_unet(), LoraConfig(rank=4, target_modules=("no_such_layer",)))


@pytest.fixture(scope="module")
def trained_student():
    """A tiny student whose LoRA (rank 4, alpha 8: scale 2) moved away from zero, and its outputs."""
    cfg = LoraConfig(rank=4, alpha=8)
    student = add_lora(tiny_unet(), cfg)
    perturb_lora(student)
    x, t, ehs = unet_inputs()
    with torch.no_grad():
        out = student(x, t, ehs).sample
        base = tiny_unet()(x, t, ehs).sample
    assert (out - base).abs().max() > 0.05
    return student, cfg, out


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_an_exported_lora_loaded_into_a_fresh_pipeline_reproduces_the_student(
    layout, trained_student, clip_tokenizer, tmp_path
):
    student, cfg, expected = trained_student
    state = lora_state_dict(student)
    exported = (to_diffusers_lora if layout == "diffusers" else to_kohya)(state, alpha=cfg.lora_alpha)
    save_lora(exported, tmp_path / DIFFUSERS_LORA_FILE)
    pipe = tiny_pipeline(clip_tokenizer)
    pipe.load_lora_weights(str(tmp_path))
    x, t, ehs = unet_inputs()
    with torch.no_grad():
        loaded = pipe.unet(x, t, ehs).sample
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-5)
    assert len(lora_modules(pipe.unet)) == len(lora_modules(student))

    # The whole pipeline (tokenizer → text encoder → 2 DDIM steps) agrees with one that runs the student itself.
    reference = tiny_pipeline(clip_tokenizer, unet=student)
    kwargs = {"prompt": "a red circle", "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "latent"}
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    b = reference(**kwargs, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_diffusers_export_is_the_peft_state_prefixed_with_unet_and_b_scaled_by_alpha_over_rank(trained_student):
    student, cfg, _ = trained_student
    state = lora_state_dict(student)
    exported = to_diffusers_lora(state, alpha=cfg.lora_alpha)
    assert set(exported) == {f"unet.{k}" for k in state}
    key = next(k for k in state if k.endswith(".lora_B.weight"))
    torch.testing.assert_close(exported[f"unet.{key}"], 2 * state[key])
    key = next(k for k in state if k.endswith(".lora_A.weight"))
    assert torch.equal(exported[f"unet.{key}"], state[key])


# --------------------------------------------------------------------------------------------------- factory


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory, clip_tokenizer):
    """A tiny Stable Diffusion directory as ``save_pretrained`` writes it, and the pipeline it came from."""
    pipe = tiny_pipeline(clip_tokenizer)
    d = tmp_path_factory.mktemp("teacher")
    pipe.save_pretrained(str(d))
    return d, pipe


def test_build_teacher_loads_every_part_frozen_with_the_schedule_and_weight_digests(saved_teacher):
    d, pipe = saved_teacher
    parts = build_teacher(TeacherConfig(pretrained_dir=str(d)))
    for module in (parts.vae, parts.text_encoder, parts.unet):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert len(parts.tokenizer) == 49408
    x, t, ehs = unet_inputs()
    with torch.no_grad():
        torch.testing.assert_close(parts.unet(x, t, ehs).sample, pipe.unet(x, t, ehs).sample)
    assert parts.vae.config.scaling_factor == pipe.vae.config.scaling_factor
    assert parts.prediction_type == "epsilon"
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear"
    torch.testing.assert_close(parts.alphas_cumprod, DDPMScheduler(**SD15_SCHEDULE).alphas_cumprod)
    assert set(parts.digests) == {
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    }
    for rel, digest in parts.digests.items():
        assert digest == hashlib.sha256((d / rel).read_bytes()).hexdigest()


def test_build_teacher_loads_in_the_configured_dtype_and_prediction_type(saved_teacher):
    d, _ = saved_teacher
    parts = build_teacher(TeacherConfig(pretrained_dir=str(d), dtype="bfloat16", prediction_type="v_prediction"))
    assert {p.dtype for m in (parts.vae, parts.text_encoder, parts.unet) for p in m.parameters()} == {torch.bfloat16}
    assert parts.prediction_type == "v_prediction"


def test_build_teacher_on_meta_builds_the_architectures_without_weights(saved_teacher):
    d, pipe = saved_teacher
    parts = build_teacher(TeacherConfig(pretrained_dir=str(d)), meta=True)
    assert parts.digests == {}
    for name in ("vae", "text_encoder", "unet"):
        built, original = getattr(parts, name), getattr(pipe, name)
        assert all(p.device.type == "meta" for p in built.parameters())
        assert [(n, p.shape) for n, p in built.named_parameters()] == [
            (n, p.shape) for n, p in original.named_parameters()
        ]


@pytest.mark.parametrize("where", [None, "missing"])
def test_a_missing_pretrained_dir_raises_naming_the_key(where, tmp_path):
    cfg = TeacherConfig(pretrained_dir=None if where is None else str(tmp_path / where))
    with pytest.raises(FileNotFoundError, match=r"teacher\.pretrained_dir"):
        build_teacher(cfg)


def test_a_teacher_directory_missing_a_part_raises_naming_the_key_and_the_part(tmp_path):
    for part in ("vae", "text_encoder", "tokenizer", "unet"):
        (tmp_path / part).mkdir()
    with pytest.raises(FileNotFoundError, match=r"teacher\.pretrained_dir=.*no scheduler/"):
        build_teacher(TeacherConfig(pretrained_dir=str(tmp_path)))


def test_a_teacher_without_safetensors_weights_is_refused(saved_teacher, tmp_path):
    d, _ = saved_teacher
    copy = Path(shutil.copytree(d, tmp_path / "teacher"))
    (copy / "unet" / "diffusion_pytorch_model.safetensors").rename(copy / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"teacher\.pretrained_dir=.*unet/.*safetensors only"):
        build_teacher(TeacherConfig(pretrained_dir=str(copy)))


def test_an_unsupported_scheduler_prediction_type_raises_naming_the_key(saved_teacher, tmp_path):
    d, _ = saved_teacher
    copy = Path(shutil.copytree(d, tmp_path / "teacher"))
    config_file = copy / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "sample"}))
    with pytest.raises(ValueError, match=r"teacher\.prediction_type"):
        build_teacher(TeacherConfig(pretrained_dir=str(copy)))
    parts = build_teacher(TeacherConfig(pretrained_dir=str(copy), prediction_type="epsilon"), meta=True)
    assert parts.prediction_type == "epsilon"


def test_teacher_config_fields_each_have_a_docstring():
    source = inspect.getsource(teacher_config)
    for cls in (TeacherConfig, LoraConfig):
        for f in dataclasses.fields(cls):
            assert re.search(rf"\n    {f.name}: [^\n]+\n    \"\"\"", source), f"{cls.__name__}.{f.name}"
