"""What a real sd15 run needs beyond the toy world: EMA targets averaged in float32, the motion module's own noise
schedule carried through training, export and stage 3, and gradient checkpointing that changes memory, not math."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from models.export import lcm_scheduler, pipeline_schedule
from models.factory import with_schedule
from models.task import Task
from models.video_unet import motion_schedule
from pipelines.train_config import DistillVideoConfig
from tests.unit.test_stage1_task import SCHEDULE, _batch, _parts, _task


class _Bf16Task(Task):
    def __init__(self, decay: float) -> None:
        self.student = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
        nn.init.constant_(self.student.weight, 1.0)
        self.follow(self.frozen_copy(self.student), ["weight"], decay)


def test_a_bf16_target_follows_small_updates_through_float32_masters():
    task = _Bf16Task(0.95)
    with torch.no_grad():
        task.student.weight.fill_(1.0078125)  # one bf16 step above 1.0: each update moves the EMA by 5% of it
    for step in range(20):
        task.after_step(step)
    expected = 1.0 + 0.0078125 * (1 - 0.95**20)
    master = task.ema_masters["weight"]
    assert master.dtype == torch.float32
    assert master.mean().item() == pytest.approx(expected, rel=1e-6)
    assert task.target.weight.dtype == torch.bfloat16
    assert task.target.weight.float().mean().item() == pytest.approx(expected, abs=0.0079)  # the master, rounded
    # in bf16 the same 20 updates leave the weight where it started: each is rounded away
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    for _ in range(20):
        w.mul_(0.95).add_(torch.full_like(w, 1.0078125), alpha=0.05)
    assert w.float().mean().item() == 1.0
    state = task.extra_state()
    assert state["target.weight"].dtype == torch.float32  # checkpoints keep the masters, not their rounding
    fresh = _Bf16Task(0.95)
    fresh.load_extra_state(state)
    assert torch.equal(fresh.ema_masters["weight"], master) and fresh.updates == 20


def test_the_motion_schedule_comes_from_the_module_then_the_config(tmp_path):
    assert motion_schedule(tmp_path, None) == {}  # the teacher's
    assert motion_schedule(tmp_path, "linear") == {"beta_schedule": "linear"}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
         "clip_sample": False}))  # fmt: skip
    shipped = {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012}
    assert motion_schedule(tmp_path, None) == shipped == motion_schedule(tmp_path, "linear")
    with pytest.raises(ValueError, match="distill_video.beta_schedule='scaled_linear'.*linear"):
        motion_schedule(tmp_path, "scaled_linear")
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        DistillVideoConfig(beta_schedule="cosine")


def test_a_stage_trains_and_exports_on_the_motion_schedule(tmp_path):
    parts = _parts()
    linear = with_schedule(parts, {"beta_schedule": "linear"})
    expected = DDIMScheduler(**{**SCHEDULE, "beta_schedule": "linear"}).alphas_cumprod
    assert torch.allclose(linear.alphas_cumprod, expected)
    assert not torch.allclose(linear.alphas_cumprod, parts.alphas_cumprod)  # SNR differs at every t
    assert linear.unet is parts.unet and with_schedule(parts, {}) is parts
    with pytest.raises(ValueError, match="prediction_type"):
        with_schedule(parts, {"prediction_type": "v_prediction"})
    sampler = lcm_scheduler(SCHEDULE, {"beta_schedule": "linear"})
    sampler.save_pretrained(str(tmp_path / "scheduler"))  # what the exported pipeline holds
    assert sampler.config.timestep_spacing == "trailing"
    assert pipeline_schedule(tmp_path)["beta_schedule"] == "linear"  # what stage 3 and evaluation read back


def test_gradient_checkpointing_changes_memory_not_the_step():
    plain, ckpt = _task(), _task(gradient_checkpointing=True)
    assert ckpt.student.is_gradient_checkpointing and not plain.student.is_gradient_checkpointing
    assert not ckpt.teacher.is_gradient_checkpointing  # the frozen teacher runs as before
    results = []
    for task in (plain, ckpt):
        task.configure(seed=0, rank=0, world_size=1)
        loss, _ = task.loss(_batch(), 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in task.trainable_parameters()]))
    assert torch.allclose(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1], strict=True))
