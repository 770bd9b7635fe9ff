"""The sd15 training steps on a fake CUDA device (``bench/sd15_fake_gpu.py``), at a reduced width with the identical
code path: every stage's Task is built and stepped where a CPU tensor meeting a CUDA weight raises, as on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

pytestmark = pytest.mark.slow  # whole fake-GPU runs of every stage: make test, not make test-fast

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *args: str) -> dict:
    """The bench in its own process (torch's fake tensors crash a process that frees fake video models)."""
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "bench.sd15_fake_gpu", "--arch", "small", *args, "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_stage_and_the_pipeline_run_on_fake_cuda(tmp_path):
    found = _bench(tmp_path, "--check-devices")
    for stage in ("distill_image", "distill_video", "adapt_control", "adapt_image_to_video"):
        assert found[stage]["loss_device"] == "cuda:0", stage
        assert found[stage]["ema_master_dtypes"] == ["torch.float32"], stage  # bf16 targets, fp32 masters
    sampling = found["sampling"]
    assert sampling["frames_shape"] == [1, 4, 3, 64, 64]
    assert sampling["beta_schedule"] == "linear"  # the sd15 profile's motion schedule reaches the exported sampler
    assert sampling["flops"] > 0


def test_cpu_timesteps_would_have_crashed_on_the_gpu(monkeypatch):
    """The defect the fake device exists for: the grid's timesteps built on the CPU and handed to CUDA UNets."""
    from bench.sd15_fake_gpu import device_check, small_arch
    from models.consistency import add_noise
    from models.task import ConsistencyTaskBase
    from pipelines.config import load_config

    def old_grid_points(self, latents, gen):  # the code before the fix: 1-D timesteps left on the CPU
        index = self.grid.sample_index(latents.shape[0], gen)
        t_start, t_prev = self.grid.start_timesteps(index), self.grid.prev_timesteps(index)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        return index, t_start, t_prev, noise, add_noise(latents, noise, t_start, self.grid.alphas_cumprod)

    cfg = load_config("sd15")
    assert device_check("distill_image", small_arch(cfg), cfg)["loss_device"] == "cuda:0"  # the fixed code runs
    monkeypatch.setattr(ConsistencyTaskBase, "grid_points", old_grid_points)
    with pytest.raises(FakeTensorDeviceMismatchError):
        device_check("distill_image", small_arch(cfg), cfg)


def test_a_video_step_is_measured_with_and_without_checkpointing(tmp_path):
    row = _bench(tmp_path, "--part", "distill_video")
    off, on = row["no_checkpointing"], row["checkpointing"]
    assert off["trainable"] == on["trainable"] > 0 and on["total"] > on["trainable"]
    assert on["peak_bytes"] < off["peak_bytes"]  # recomputing activations keeps fewer of them
    assert on["flops"] > off["flops"]  # ... at the price of another forward pass
    assert on["budget"]["total"] == pytest.approx(
        on["peak_bytes"] + 16 * on["trainable"] / row["profile"]["num_workers"] + on["budget"]["buckets"]
    )
    assert row["profile"]["gradient_checkpointing"] is True  # the sd15 profile's setting
