"""Personalising an AnimateDiff pipeline directory: spatial weights swapped for another image UNet's, motion modules
and the LoRA kept, incompatible UNets and existing outputs refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from contracts.digests import sha256_file
from models.personalize import LORA_FILE, RECORD_FILE, personalize, tensor_digest
from models.video_unet import MOTION_KEY, new_motion_adapter
from toyworld.image_teacher import DEFAULT_DIR as TEACHER_DIR

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny AnimateLCM-like pipeline directory (toy teacher + random motion modules + a spatial LoRA) and a UNet
    directory whose weights differ from the teacher's everywhere."""
    import peft
    from diffusers import AnimateDiffPipeline, UNet2DConditionModel
    from peft.utils import get_peft_model_state_dict

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("personalize")
    unet = UNet2DConditionModel.from_pretrained(str(TEACHER_DIR), subfolder="unet", local_files_only=True)
    adapter = new_motion_adapter(dict(unet.config), heads=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero motion weights, so "unchanged" means something
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    pipe = AnimateDiffPipeline.from_pretrained(str(TEACHER_DIR), motion_adapter=adapter, local_files_only=True)
    pipe.save_pretrained(str(root / "pipe"), safe_serialization=True)

    lora_unet = UNet2DConditionModel.from_pretrained(str(TEACHER_DIR), subfolder="unet", local_files_only=True)
    lora_unet.add_adapter(peft.LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    lora = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(lora_unet).items()}
    (root / "pipe" / "lcm_lora").mkdir()
    save_file(lora, str(root / "pipe" / LORA_FILE))

    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    unet.save_pretrained(str(root / "style_unet"), safe_serialization=True)
    return {"root": root, "pipe": root / "pipe", "style": root / "style_unet"}


@pytest.fixture(scope="module")
def personalised(dirs) -> tuple[Path, dict]:
    out = dirs["root"] / "personalised"
    return out, personalize(dirs["pipe"], dirs["style"], out)


def test_spatial_weights_are_the_new_unets_and_motion_weights_are_unchanged(dirs, personalised):
    out, record = personalised
    before, after = _state(dirs["pipe"] / UNET_FILE), _state(out / UNET_FILE)
    style = _state(dirs["style"] / "diffusion_pytorch_model.safetensors")
    assert set(after) == set(before)
    spatial = [k for k in after if MOTION_KEY not in k]
    motion = [k for k in after if MOTION_KEY in k]
    assert len(spatial) == len(style) == record["spatial_tensors"] and len(motion) == record["motion_tensors"] > 0
    for k in spatial:
        assert torch.equal(after[k], style[k]), k
        assert not torch.equal(after[k], before[k]) or before[k].abs().sum() == 0, k
    for k in motion:
        assert torch.equal(after[k], before[k]), k
    assert record["new_spatial_digest"] == tensor_digest(style) == record["unet_tensor_digest"]
    assert record["replaced_spatial_digest"] == tensor_digest({k: before[k] for k in spatial})
    assert record["motion_digest"] == tensor_digest({k: before[k] for k in motion})


def test_everything_but_the_unet_weights_is_copied_byte_for_byte_and_the_record_is_written(dirs, personalised):
    out, record = personalised
    src = sorted(p.relative_to(dirs["pipe"]).as_posix() for p in dirs["pipe"].rglob("*") if p.is_file())
    dst = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert dst == sorted([*src, RECORD_FILE])
    for rel in src:
        if rel != UNET_FILE:
            assert sha256_file(dirs["pipe"] / rel) == sha256_file(out / rel), rel
    assert json.loads((out / RECORD_FILE).read_text()) == record
    assert record["unet_dir"] == str(dirs["style"].resolve())
    assert record["lcm_lora"] == {"file": LORA_FILE, "sha256": sha256_file(dirs["pipe"] / LORA_FILE)}
    assert record["files"][UNET_FILE] == {
        "before": sha256_file(dirs["pipe"] / UNET_FILE),
        "after": sha256_file(out / UNET_FILE),
    }
    assert record["dtype_casts"] == []
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp dir left


def test_the_personalised_pipeline_loads_with_its_lora_and_generates_a_video(dirs, personalised):
    from diffusers import AnimateDiffPipeline

    out, _ = personalised
    pipe = AnimateDiffPipeline.from_pretrained(str(out), local_files_only=True)
    pipe.load_lora_weights(str(out / "lcm_lora"))
    pipe.set_progress_bar_config(disable=True)
    style = _state(dirs["style"] / "diffusion_pytorch_model.safetensors")
    loaded = pipe.unet.state_dict()
    assert torch.equal(loaded["conv_in.weight"], style["conv_in.weight"])
    key = "down_blocks.1.attentions.0.proj_in.weight"
    assert torch.equal(loaded[key], style[key])
    lora = [name for name in loaded if "lora_A" in name]
    assert lora and not [name for name in lora if MOTION_KEY in name]
    frames = pipe(
        "a red circle moving right on a white background", num_frames=2, num_inference_steps=1, guidance_scale=1.0,
        output_type="np", height=64, width=64, generator=torch.Generator().manual_seed(0),
    ).frames[0]  # fmt: skip
    frames = np.asarray(frames)
    assert frames.shape == (2, 64, 64, 3) and np.isfinite(frames).all()


def test_a_pipeline_directory_is_accepted_as_the_unet_source(dirs):
    out = dirs["root"] / "same_teacher"
    record = personalize(dirs["pipe"], TEACHER_DIR, out)
    assert record["unet_dir"] == str((TEACHER_DIR / "unet").resolve())
    assert record["new_spatial_digest"] == record["replaced_spatial_digest"]  # the pipeline was built on it


def test_an_existing_out_dir_is_refused_and_left_alone(dirs):
    out = dirs["root"] / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never overwrites"):
        personalize(dirs["pipe"], dirs["style"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _edited_unet(dirs, name: str, *, config: dict | None = None, edit=None) -> Path:
    target = dirs["root"] / name
    shutil.copytree(dirs["style"], target)
    if config:
        cfg = json.loads((target / "config.json").read_text())
        cfg.update(config)
        (target / "config.json").write_text(json.dumps(cfg))
    if edit:
        path = target / "diffusion_pytorch_model.safetensors"
        state = _state(path)
        edit(state)
        save_file(state, str(path))
    return target


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"cross_attention_dim": 32}, "cross_attention_dim"),
        ({"block_out_channels": [32, 64, 64]}, "block_out_channels"),
        ({"layers_per_block": 2}, "layers_per_block"),
        ({"down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types"),
        ({"attention_head_dim": 8}, "num_attention_heads"),
    ],
)
def test_an_incompatible_unet_config_is_refused_naming_the_field(dirs, config, field):
    source = _edited_unet(dirs, f"bad_{field}", config=config)
    out = dirs["root"] / f"out_{field}"
    with pytest.raises(ValueError, match=f"config field '{field}'"):
        personalize(dirs["pipe"], source, out)
    assert not out.exists()


def test_a_missing_extra_or_reshaped_tensor_is_refused_naming_the_key(dirs):
    cases = {
        "reshaped": (lambda s: s.__setitem__("conv_in.bias", torch.zeros(7)), "'conv_in.bias': shape"),
        "missing": (lambda s: s.pop("conv_out.weight"), "'conv_out.weight' of the pipeline unet is missing"),
        "extra": (lambda s: s.__setitem__("class_embedding.weight", torch.zeros(2)), "'class_embedding.weight'"),
    }
    for name, (edit, message) in cases.items():
        source = _edited_unet(dirs, f"tensor_{name}", edit=edit)
        with pytest.raises(ValueError, match=message):
            personalize(dirs["pipe"], source, dirs["root"] / f"out_tensor_{name}")


def test_a_motion_unet_or_pickled_weights_are_refused(dirs):
    with pytest.raises(ValueError, match="_class_name='UNetMotionModel'"):
        personalize(dirs["pipe"], dirs["pipe"], dirs["root"] / "out_motion")
    pickled = _edited_unet(dirs, "pickled")
    torch.save({}, pickled / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only"):
        personalize(dirs["pipe"], pickled, dirs["root"] / "out_pickled")
