"""The evaluation's prompt sets are data (:mod:`contracts.evalset`): the toy world makes them, the eval job reads them
without importing the toy world; the committed toy set is what the toy world makes, and a set made for other
settings than the evaluation's is refused naming the key."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from contracts.evalset import item_seed, read_reference
from pipelines.config import load_config
from pipelines.evaluate import load_prompts, plan, references
from pipelines.stages import stage
from toyworld.eval_set import DEFAULT_DIR, ground_truth, write_eval_set


def settings(*overrides: str):
    return stage("evaluate").settings_of(load_config("toy", list(overrides)))


def test_the_eval_job_does_not_import_the_toy_world():
    code = "import sys, pipelines.evaluate; print(sorted(m for m in sys.modules if m.startswith('toyworld')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", ["image", "video"])
def test_the_committed_toy_set_is_what_the_toy_world_makes_for_the_toy_profile(tmp_path, kind):
    toy = load_config("toy")
    e = toy.evaluate
    fresh = write_eval_set(tmp_path / kind, kind, seed=e.seed, prompts=e.num_prompts,
                           videos_per_prompt=e.videos_per_prompt, frames=toy.distill_video.frames)  # fmt: skip
    committed = json.loads((DEFAULT_DIR / kind / "manifest.json").read_text())
    assert committed["files"] == fresh["files"] and committed["config"] == fresh["config"]


@pytest.mark.parametrize("kind, frames", [("image", None), ("video", 8)])
def test_each_item_reads_back_as_the_toy_worlds_render_for_its_own_seed(kind, frames):
    cfg = settings()
    prompt_set = load_prompts(cfg, kind)
    assert prompt_set.reference == DEFAULT_DIR / kind and len(prompt_set.prompts) == 8
    items = plan(cfg, prompt_set.prompts)
    renders = references(prompt_set, items, frames)
    import yaml

    toy_prompts = yaml.safe_load((DEFAULT_DIR / kind / "prompts.yaml").read_text())
    for it, render in zip(items, renders, strict=True):
        assert it["seed"] == item_seed(cfg.evaluate.seed, it["index"])
        expected = ground_truth(kind, toy_prompts[it["prompt"]], it["seed"], frames or 1)
        np.testing.assert_array_equal(render, expected)
    assert renders[0].shape == ((frames or 1), 64, 64, 3)
    assert not np.array_equal(read_reference(DEFAULT_DIR / kind, 0, 64), read_reference(DEFAULT_DIR / kind, 1, 64))


@pytest.mark.parametrize("kind, frames", [("image", None), ("video", 8)])
def test_set_b_renders_the_same_prompts_from_seeds_disjoint_from_set_a(kind, frames):
    from contracts.evalset import REFERENCE_B, has_set_b
    from toyworld.eval_set import SET_B_OFFSET

    cfg = settings()
    prompt_set = load_prompts(cfg, kind)
    assert has_set_b(prompt_set.reference)
    items = plan(cfg, prompt_set.prompts)
    a, b = references(prompt_set, items, frames), references(prompt_set, items, frames, which=REFERENCE_B)
    import yaml

    toy_prompts = yaml.safe_load((DEFAULT_DIR / kind / "prompts.yaml").read_text())
    for it, render_a, render_b in zip(items, a, b, strict=True):
        expected = ground_truth(kind, toy_prompts[it["prompt"]], it["seed"] + SET_B_OFFSET, frames or 1)
        np.testing.assert_array_equal(render_b, expected)
        assert render_b.shape == render_a.shape
    assert sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)) >= len(items) // 2  # other draws


def test_fewer_prompts_use_the_first_items_of_the_set():
    assert len(load_prompts(settings("evaluate.num_prompts=3"), "video").prompts) == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.seed=2", "evaluate.seed=2: the prompt set"),
        ("evaluate.videos_per_prompt=2", "evaluate.videos_per_prompt=2: the prompt set"),
        ("evaluate.num_prompts=9", "evaluate.num_prompts=9: the prompt set"),
    ],
)
def test_a_set_made_for_other_settings_is_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_prompts(settings(override), "video")


def test_renders_of_other_frames_than_the_checkpoint_samples_are_refused():
    cfg = settings()
    prompt_set = load_prompts(cfg, "video")
    with pytest.raises(ValueError, match="renders 8 frames, the checkpoint samples 4"):
        references(prompt_set, plan(cfg, prompt_set.prompts), 4)
