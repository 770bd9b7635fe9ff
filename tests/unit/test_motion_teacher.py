"""The toy motion teacher: motion read back from pixels, its trainer's layout, and the committed teacher's quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toyworld.motion_teacher import (
    DEFAULT_DIR,
    MotionTeacherTrainingConfig,
    motion_fidelity,
    read_motion,
    render_prompt_clip,
    validation_prompts,
)
from toyworld.videos import DIRECTIONS


def test_motion_is_read_back_from_ground_truth_clips_of_every_direction():
    prompts = validation_prompts(3, 60)
    assert {p["direction"] for p in prompts} == set(DIRECTIONS)
    rng = np.random.default_rng(0)
    clips = [render_prompt_clip(p, rng, frames=8, stride=1) for p in prompts]
    fid = motion_fidelity(clips, prompts)
    assert fid == {"direction_accuracy": 1.0, "colour_accuracy": 1.0, "drew_something": 1.0, "coherent": 1.0}


def test_a_static_or_empty_clip_has_no_direction():
    rng = np.random.default_rng(1)
    prompt = validation_prompts(0, 1)[0]
    clip = render_prompt_clip(prompt, rng, frames=8, stride=1)
    assert read_motion(np.repeat(clip[:1], 8, axis=0), prompt["background"])["direction"] is None
    blank = np.full_like(clip, 255 if prompt["background"] == "white" else 0)
    assert read_motion(blank, prompt["background"])["direction"] is None


def test_settings_are_validated_naming_the_field():
    with pytest.raises(ValueError, match="steps"):
        MotionTeacherTrainingConfig(steps=0)
    with pytest.raises(ValueError, match="frames=16"):
        MotionTeacherTrainingConfig(frames=16, stride=2)


def test_a_tiny_training_run_writes_a_motion_adapter_directory(tmp_path: Path):
    from diffusers import MotionAdapter

    from toyworld.motion_teacher import train_motion_teacher

    m = train_motion_teacher(tmp_path / "mt", train_clips=8, steps=2, batch=2, val_prompts=1, val_steps=1, threads=1)
    out = tmp_path / "mt"
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert MotionAdapter.from_pretrained(str(out), local_files_only=True) is not None
    assert set(m["metrics"]) == {"ddim1_cfg5", "zero_init_motion_module", "ground_truth_renders"}
    assert json.loads((out / "manifest.json").read_text())["files"]


@pytest.mark.skipif(not (DEFAULT_DIR / "manifest.json").is_file(), reason="no committed motion teacher")
def test_the_committed_motion_teacher_makes_clips_coherent():
    """Validated on held-out prompts through diffusers' AnimateDiffPipeline: with the trained motion module one object
    persists and moves smoothly in half the clips; with a zero-initialised one every frame is an independent sample
    (never coherent). The prompted direction is NOT learned (measured 0.08, below chance): with the spatial layers
    frozen, the temporal layers see the direction words only through image features that carry them weakly."""
    metrics = json.loads((DEFAULT_DIR / "manifest.json").read_text())["metrics"]
    trained = next(v for k, v in metrics.items() if k.startswith("ddim"))
    assert trained["coherent"] >= 0.4
    assert trained["coherent"] >= metrics["zero_init_motion_module"]["coherent"] + 0.3
    assert trained["colour_accuracy"] >= 0.6 and metrics["ground_truth_renders"]["coherent"] == 1.0
