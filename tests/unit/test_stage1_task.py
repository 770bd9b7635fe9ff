"""The stage-1 Task on a tiny random teacher: LoRA-only gradients, one batched teacher forward, EMA target, state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from models.consistency_config import ConsistencyConfig
from models.factory import TeacherParts
from models.stage1 import ImageConsistencyTask
from models.teacher_config import LoraConfig

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


class _Tokenizer:
    model_max_length = 8

    def __call__(self, prompts, **kwargs):
        return SimpleNamespace(input_ids=torch.zeros(len(prompts), self.model_max_length, dtype=torch.long))


def _parts() -> TeacherParts:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(32,), latent_channels=4, norm_num_groups=8)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=8,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    for m in (unet, vae, text):
        m.requires_grad_(False).eval()
    return TeacherParts(vae=vae, text_encoder=text, tokenizer=_Tokenizer(), unet=unet, scheduler_config=SCHEDULE,
                        alphas_cumprod=DDPMScheduler(**SCHEDULE).alphas_cumprod, prediction_type="epsilon")  # fmt: skip


def _task(**kwargs) -> ImageConsistencyTask:
    return ImageConsistencyTask(_parts(), LoraConfig(rank=4), ConsistencyConfig(w_min=1.0, w_max=4.0), **kwargs)


def _batch(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "latents": torch.randn(b, 4, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(b, 8, 32, generator=g),
    }


def _perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.add_(scale * torch.randn_like(p))


def test_a_fresh_student_and_target_equal_the_teacher():
    task = _task()
    b = _batch()
    x, t = b["latents"], torch.tensor([10, 500])
    ref = task.teacher(x, t, encoder_hidden_states=b["encoder_hidden_states"]).sample
    for unet in (task.student, task.target):
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=b["encoder_hidden_states"]).sample, ref)


def test_the_loss_trains_only_the_lora_and_runs_the_teacher_once_on_both_prompts():
    task = _task()
    _perturb(task.student)
    calls = []
    task.teacher.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    loss, _ = task.loss(_batch(2), 0)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and calls == [4]
    grads = {n for n, p in task.student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads)
    assert all(p.grad is None for p in task.teacher.parameters()) and all(
        p.grad is None for p in task.target.parameters()
    )


def test_the_target_follows_the_student_as_an_exponential_moving_average():
    task = _task(ema_decay=0.9)
    name = next(n for n, _ in task.student.named_parameters() if "lora_B" in n)
    before = dict(task.target.named_parameters())[name].detach().clone()
    _perturb(task.student)
    task.after_step(0)
    student = dict(task.student.named_parameters())[name].detach()
    torch.testing.assert_close(dict(task.target.named_parameters())[name], 0.9 * before + 0.1 * student)


def test_the_target_state_round_trips_through_a_checkpoint():
    task = _task()
    _perturb(task.student)
    task.after_step(0)
    state = task.extra_state()
    fresh = _task()
    fresh.load_extra_state(state)
    assert all(torch.equal(state[f"target.{n}"], p) for n, p in fresh.target.named_parameters() if "lora_" in n)


def test_without_a_separate_target_the_student_is_the_target_and_is_exported(tmp_path):
    task = _task(target="student")
    assert task.target is None and task.extra_state() == {} and task.distilled() is task.student
    info = task.export(tmp_path)
    assert info["from"] == "student"
    kohya = load_file(str(tmp_path / "lcm_lora_kohya.safetensors"))
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    assert all(k.startswith("unet.") for k in load_file(str(tmp_path / "pytorch_lora_weights.safetensors")))


def test_bad_task_settings_are_refused():
    with pytest.raises(ValueError, match="target='teacher'"):
        _task(target="teacher")
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        ImageConsistencyTask(_parts(), LoraConfig(rank=4), ConsistencyConfig(w_embedding=True))
