"""Eval metrics against hand-computed values, the I3D extractor contract, prompt files, config validation, and the
report's aggregation and tables from hand-made per-item results."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from models.evaluation import I3DFeatures, clip_video_features, clipsim, frechet_distance, temporal_consistency
from pipelines.config import ConfigError, load_config
from pipelines.evaluate import UNPAIRED


def test_frechet_distance_is_zero_for_one_set_and_the_squared_mean_shift_for_a_translated_one():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(a[:1], a)


def test_frechet_distance_of_scaled_gaussians_matches_the_closed_form():
    # N(0, I) vs N(0, 4I) in d dims: tr(I + 4I - 2·(4I)^½) = d(1 + 4 - 4) = d
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 2))
    assert frechet_distance(a, 2.0 * a) == pytest.approx(2.0, rel=0.02)


def test_clipsim_temporal_and_video_features_by_hand():
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    frames = np.array([[e1, e1, e2]])  # one video, three frames
    text = np.array([e1])
    assert clipsim(frames, text)[0] == pytest.approx(100 * 2 / 3)
    assert temporal_consistency(frames)[0] == pytest.approx(0.5)  # (1 + 0) / 2
    assert np.isnan(temporal_consistency(frames[:, :1])[0])  # an image has no consecutive frames
    np.testing.assert_allclose(clip_video_features(frames)[0], [2 / 3, 1 / 3, -1.0, 1.0])


class _TinyI3D(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, T, H, W) → (N, 3 + 2)
        return torch.cat([x.mean(dim=(2, 3, 4)), torch.tensor([[x.shape[3], x.shape[4]]], dtype=x.dtype).expand(
            x.shape[0], 2)], dim=1)  # fmt: skip


def test_the_i3d_extractor_feeds_resized_videos_in_minus_one_to_one(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.save(torch.jit.script(_TinyI3D()), str(path))
    videos = np.zeros((2, 4, 32, 32, 3), dtype=np.uint8)
    videos[1] = 255
    feats = I3DFeatures(path, size=56)(videos)
    np.testing.assert_allclose(feats[:, :3], [[-1, -1, -1], [1, 1, 1]], atol=1e-5)
    np.testing.assert_allclose(feats[:, 3:], [[56, 56], [56, 56]])
    with pytest.raises(FileNotFoundError, match="evaluate.i3d_path"):
        I3DFeatures(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluate.reference_steps=30", "reference_steps=30: must be one of teacher_steps"),
        ("evaluate.teacher_methods=[euler]", "teacher_methods=['euler']"),
        ("evaluate.fvd_extractor=i3d", "needs i3d_path"),
        ("evaluate.student_steps=[1, 1]", "distinct step counts"),
        ("evaluate.num_prompts=1", "at least 2 samples"),
        ("promotion.video=[{metric: fvd, direction: lower, margin: 0}]", "expected metric@steps"),
    ],
)
def test_invalid_eval_and_gate_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config("toy", [override])
    assert override.split("=")[0].split(".")[0] in str(info.value)


def test_a_prompt_file_is_read_and_a_bad_one_is_named(tmp_path):
    from pipelines.evaluate import load_prompts, plan

    good = tmp_path / "prompts.yaml"
    good.write_text("- a person playing the violin\n- {caption: a horse riding}\n")
    cfg = load_config("toy", [f"evaluate.prompts={good}", "evaluate.fvd_reference=teacher", "evaluate.num_prompts=0",
                              "evaluate.videos_per_prompt=2"])  # fmt: skip
    prompt_set = load_prompts(cfg, "video")
    prompts = prompt_set.prompts
    assert prompt_set.reference is None
    assert [p["caption"] for p in prompts] == ["a person playing the violin", "a horse riding"]
    items = plan(cfg, prompts)
    assert [(it["prompt"], it["index"]) for it in items] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert len({it["seed"] for it in items}) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("- ok\n- {title: no caption}\n")
    with pytest.raises(ValueError, match="item 1 has no caption"):
        load_prompts(load_config("toy", [f"evaluate.prompts={bad}", "evaluate.fvd_reference=teacher"]), "video")
    with pytest.raises(ConfigError, match="fvd_reference=real needs reference renders"):
        load_config("toy", [f"evaluate.prompts={good}"])


def _shard(methods: dict, items: list[int], offset: float) -> dict:
    per_item = {}
    for (method, steps), base in methods.items():
        per_item[(method, steps)] = {i: {"feature": np.array([base + i, offset * i]), "clipsim": 10.0 * steps,
                                         "temporal": 0.5, "latent_mse": base, "latency_s": 0.1 * steps}
                                     for i in items}  # fmt: skip
    # the teacher's reference from disjoint seeds: DDIM-4's features moved by 2 in the second coordinate
    per_item[UNPAIRED] = {i: {"feature": np.array([i, offset * i + 2.0])} for i in items}
    return {"per_item": per_item, "peak_mem_mb": {k: 100.0 + offset for k in methods}, "grid": {}}


def test_aggregation_reads_every_shard_and_the_headline_is_the_checkpoints_own_row():
    """The teacher reference is the teacher's output from disjoint seeds (not DDIM's own samples): the same
    sampler from other noise is at a distance of its own; only latent_mse is paired."""
    from pipelines.evaluate import aggregate, headline_of, markdown

    cfg = load_config("toy", ["evaluate.student_steps=[1, 4]", "evaluate.teacher_steps=[2, 4]",
                              "evaluate.reference_steps=4", "evaluate.fvd_reference=teacher"])  # fmt: skip
    methods = {("animatelcm", 1): 3.0, ("animatelcm", 4): 1.0, ("ddim", 2): 2.0, ("ddim", 4): 0.0,
               ("dpmsolver++", 2): 2.5, ("dpmsolver++", 4): 0.5}  # fmt: skip
    items = [{"index": i} for i in range(4)]
    shards = [_shard(methods, [0, 2], 1.0), _shard(methods, [1, 3], 1.0)]
    results = aggregate(cfg, "video", shards, items, None)
    assert results["ddim"][4]["fvd"] == pytest.approx(4.0) and results["ddim"][4]["fvd_teacher"] == pytest.approx(4.0)
    assert results["ddim"][4]["latent_mse"] == 0.0  # paired with itself
    assert results["animatelcm"][1]["fvd"] == pytest.approx(9.0 + 4.0)  # features moved by 3 and by 2
    assert results["animatelcm"][4]["unet_evals"] == 4 and results["ddim"][4]["unet_evals"] == 8
    assert results["ddim"][2]["peak_mem_mb"] == 101.0
    # Every figure has its 95% bootstrap interval and N: around the figure, degenerate for a constant per-sample value.
    student = results["animatelcm"][1]
    assert student["n"] == 4 and student["ci95"]["fvd"][0] <= 13.0 <= student["ci95"]["fvd"][1]
    assert student["ci95"]["latent_mse"] == (3.0, 3.0) and student["ci95"]["clipsim"] == (10.0, 10.0)
    assert student["kid"] > results["animatelcm"][4]["kid"] and set(student["ci95"]) >= {"kid", "fvd_teacher"}
    headline = headline_of("video", results)
    assert headline["fvd@4"] == pytest.approx(1.0 + 4.0) and headline["clipsim@1"] == 10.0 and "fvd@2" not in headline
    assert headline["kid@1"] == pytest.approx(student["kid"], abs=1e-6)
    report = {
        "checkpoint": {"name": "t", "stage": "video_consistency_distillation", "path": "/x", "digest": "sha256:0"},
        "setup": {"prompts": "toy", "num_prompts": 4, "videos_per_prompt": 1, "frames": 8, "size": 64, "fd": "fvd",
                  "extractor": "toy", "reference": "teacher", "guidance_scale": 3.5, "reference_steps": 4},
        "metrics": ["fvd", "clipsim", "unet_evals"], "speedup": {"4": 2.0}, "samples": "samples.gif",
        "samples_layout": "rows", "results": {m: {str(s): r for s, r in per.items()} for m, per in results.items()},
        "floor": {"fvd": 0.5, "ci95": {"fvd": (0.25, 1.0)}, "n": 4},
    }  # fmt: skip
    md = markdown(report)
    assert "| method | 1 | 2 | 4 |" in md
    lo, hi = student["ci95"]["fvd"]
    assert f"| animatelcm | 13.000 [{lo:.3f}, {hi:.3f}] | – | 5.000 [" in md and "| ddim | – | 8 | 8 |" not in md
    assert "| floor: reference A vs B | 0.500 [0.250, 1.000] | 0.500 [0.250, 1.000] | 0.500 [0.250, 1.000] |" in md
    assert "| ddim | – | 4 | 8 |" in md  # unet_evals: CFG doubles the teacher's
