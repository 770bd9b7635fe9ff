"""The figures the stage-3 and personalisation benches report: paired gains with their intervals, how far an
adapter's zero-started layers moved, and the style score per video (pure functions, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.adapter_fidelity import gains
from bench.personalize_video import figures, style_per_video
from bench.stage3_budget import bench_data, markdown, zero_started_norm
from toyworld.motion_teacher import render_prompt_clip, validation_prompts
from toyworld.style_teacher import stylise


def test_gains_are_paired_video_by_video_and_their_interval_brackets_the_mean():
    rng = np.random.default_rng(0)
    without = rng.uniform(10, 30, 40)  # videos differ a lot from each other ...
    with_adapter = without + 3.0 + rng.normal(0, 0.1, 40)  # ... but the adapter adds ~3 to each
    out = gains({"per_video": {"psnr": list(with_adapter)}}, {"per_video": {"psnr": list(without)}}, n=500)
    lo, hi = out["psnr"]["ci95"]
    assert out["psnr"]["mean"] == pytest.approx(3.0, abs=0.05)
    assert lo < out["psnr"]["mean"] < hi and hi - lo < 0.2  # paired: the spread between videos cancels


def test_a_gain_that_is_noise_has_an_interval_across_zero():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(0, 1, 30)
    lo, hi = gains({"per_video": {"figure_iou": list(a)}}, {"per_video": {"figure_iou": list(b)}})["figure_iou"]["ci95"]
    assert lo < 0 < hi


def _write(path, tensors):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, str(path))


def test_zero_started_norm_counts_only_the_zero_started_layers(tmp_path):
    _write(tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors", {
        "controlnet_down_blocks.0.weight": np.full((2, 2), 1.0),  # 4 × 1² = 4
        "controlnet_mid_block.bias": np.array([3.0]),  # 9
        "controlnet_cond_embedding.conv_out.weight": np.array([0.0, 0.0]),
        "controlnet_cond_embedding.conv_in.weight": np.full((10,), 100.0),  # not zero-started: ignored
        "down_blocks.0.resnets.0.conv1.weight": np.full((10,), 100.0),  # copied from the UNet: ignored
    })  # fmt: skip
    _write(tmp_path / "image_to_video_adapter" / "image_to_video_adapter.safetensors", {
        "out_convs.0.weight": np.array([0.6, 0.8]), "conv_in.weight": np.full((3,), 50.0)})  # fmt: skip
    norms = zero_started_norm(tmp_path)
    assert norms["control"] == pytest.approx(np.sqrt(13.0))
    assert norms["image_to_video"] == pytest.approx(1.0)


def test_zero_started_norm_refuses_a_file_without_those_layers(tmp_path):
    _write(tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors", {"conv_in.weight": np.ones(3)})
    with pytest.raises(SystemExit, match="controlnet_down_blocks"):
        zero_started_norm(tmp_path)
    assert zero_started_norm(tmp_path / "missing") == {}


def test_style_per_video_separates_styled_clips_from_plain_ones_and_figures_read_them_back():
    prompts = validation_prompts(3, 6)
    rng = np.random.default_rng(0)
    plain = np.stack([render_prompt_clip(p, rng, frames=8, stride=1) for p in prompts])
    styled = np.stack([[stylise(f, p["background"]) for f in clip] for clip, p in zip(plain, prompts, strict=True)])
    assert style_per_video(plain).max() < 5.0 < 15.0 < style_per_video(styled).min()
    for videos in (plain, styled):  # the style leaves the prompt's content readable
        fig = figures(videos, prompts, n=100, seed=0)
        assert fig["direction"] == fig["colour"] == fig["coherent"] == 1.0
        lo, hi = fig["ci95"]["style"]
        assert len(fig["per_video"]["style"]) == 6 and lo <= fig["style"] <= hi


def test_the_stage3_curves_table_has_a_row_per_export_with_both_sides():
    def fid(w, wo):
        side = {"shirt_iou": w, "pants_iou": w, "figure_iou": w, "psnr": 10 * w, "mae": 1.0, "colour": 1.0,
                "direction": 0.0}  # fmt: skip
        other = {k: (wo if k.endswith("iou") else 10 * wo if k == "psnr" else v) for k, v in side.items()}
        return {a: {"with_adapter": side, "without_adapter": other, "vae_round_trip": side}
                for a in ("control", "image_to_video")}  # fmt: skip

    report = {"model": "m", "dancers": 10, "clips": 20, "micro_batch": 2, "workers": 2, "n": 4, "at": [100, 200],
              "points": {100: {"fidelity": fid(0.2, 0.1), "zero_started_norm": {"control": 0.5}},
                         200: {"fidelity": fid(0.4, 0.1), "zero_started_norm": {"control": 0.9}}},
              "loss_history": {"control": [[10, 0.5], [20, 0.25]]}}  # fmt: skip
    md = markdown(report)
    assert "| 100 | 0.500 | 0.200 / 0.100 |" in md and "| 200 | 0.900 | 0.400 / 0.100 |" in md
    assert "| 200 | 0.000 | 4.000 / 1.000 |" in md  # image-to-video psnr; no norm recorded reads 0
    assert "- control: 10: 0.5000" in md


def test_the_stage3_bench_refuses_data_made_at_other_sizes(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "world.json").write_text(json.dumps({"counts": {"dancers": 10, "videos": 30, "images": 0}}))
    with pytest.raises(SystemExit, match=r"--dancers 10.*asks for 20"):
        bench_data(tmp_path, dancers=20, clips=30, seed=0)
    with pytest.raises(SystemExit, match=r"--clips 30.*asks for 40"):
        bench_data(tmp_path, dancers=10, clips=40, seed=0)


def test_the_stage2_bench_refuses_clips_made_at_another_count(tmp_path):
    from bench.stage2_budget import curated_data

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "world.json").write_text(json.dumps({"counts": {"dancers": 0, "videos": 600, "images": 0}}))
    with pytest.raises(SystemExit, match=r"--clips 600.*asks for 300"):
        curated_data(tmp_path, clips=300, seed=0)
