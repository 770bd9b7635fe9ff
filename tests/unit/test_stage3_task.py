"""Stage 3's Task: consistency training without a teacher (same noise at both points), adapters that start adding
nothing, only the adapter (and an optional LoRA) training, and the exports' layouts."""

from __future__ import annotations

import pytest
import torch

from models.adapters import load_i2v_adapter
from models.consistency import add_noise
from models.consistency_config import ConsistencyConfig
from models.factory import build_teacher
from models.stage3 import AdapterConsistencyTask, vae_downsample
from models.teacher_config import LoraConfig, TeacherConfig
from models.video_unet import MOTION_KEY, inflate, video_forward

TEACHER = TeacherConfig(pretrained_dir="toyworld/zoo/image_teacher", lora=LoraConfig(rank=4))
CONSISTENCY = ConsistencyConfig(w_min=1.0, w_max=4.0)


@pytest.fixture(scope="module")
def parts():
    return build_teacher(TEACHER)


def _video_unet(parts):
    return inflate(parts.unet, heads=4)


def _batch(seed: int = 0, frames: int = 3):
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(1, 4, frames, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, 77, 64, generator=g),
        "control": torch.randint(0, 256, (1, 3, frames, 64, 64), generator=g, dtype=torch.uint8),
    }


@pytest.mark.parametrize("adapter", ["control", "image_to_video"])
@torch.no_grad()
def test_a_fresh_adapter_leaves_the_video_model_unchanged(parts, adapter):
    task = AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter=adapter)
    b = _batch()
    x, t, ehs = b["latents"], torch.tensor([400]), b["encoder_hidden_states"]
    cond = task.condition(adapter, b, x)
    with_adapter = task.forward(task.student, x, t, ehs, cond)
    torch.testing.assert_close(with_adapter, video_forward(task.student["unet"], x, t, ehs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("adapter", ["control", "image_to_video"])
def test_only_the_adapter_trains_and_a_step_moves_it(parts, adapter):
    task = AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter=adapter, ema_decay=0.5)
    names = [n for n, p in task.student.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("adapter.") for n in names)
    before = {n: p.detach().clone() for n, p in task.student.named_parameters()}
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.1)
    loss, _ = task.loss(_batch(), 0)
    loss.backward()
    opt.step()
    task.after_step(0)
    after = dict(task.student.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("unet."))
    assert any(not torch.equal(before[n], after[n]) for n in names)
    # the target moved half-way (μ = 0.5) towards the online adapter
    tgt = dict(task.target.named_parameters())
    n = next(n for n in names if not torch.equal(before[n], after[n]))
    torch.testing.assert_close(tgt[n], 0.5 * before[n] + 0.5 * after[n].detach())


def test_the_target_is_the_same_noise_at_the_earlier_grid_point(parts, monkeypatch):
    """Consistency training: x̂_{t_n} is the clean latent noised with the SAME ε as x_{t_{n+k}} (no teacher)."""
    task = AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter="image_to_video")
    seen = []
    original = task.forward

    def spy(model, x, t, ehs, cond):
        seen.append((model is task.target, x.detach().clone(), t.clone()))
        return original(model, x, t, ehs, cond)

    monkeypatch.setattr(task, "forward", spy)
    b = _batch()
    task.loss(b, 0)
    (s_is_target, x_t, t_start), (t_is_target, x_prev, t_prev) = seen
    assert not s_is_target and t_is_target and bool((t_start > t_prev).all())
    ac = task.grid.alphas_cumprod
    a_s, a_p = ac[t_start].view(-1, 1, 1, 1, 1), ac[t_prev].view(-1, 1, 1, 1, 1)
    eps = (x_t - a_s.sqrt() * b["latents"]) / (1 - a_s).sqrt()
    torch.testing.assert_close(x_prev, add_noise(b["latents"], eps, t_prev, ac), atol=1e-4, rtol=1e-4)
    del a_p


def test_tune_lora_trains_a_spatial_lora_with_the_adapter_and_exports_it(parts, tmp_path):
    task = AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter="image_to_video",
                                  tune_lora=TEACHER.lora)  # fmt: skip
    names = [n for n, p in task.student.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and not any(MOTION_KEY in n for n in lora)
    info = task.export(tmp_path)
    assert "image_to_video_lora/pytorch_lora_weights.safetensors" in info["files"]
    assert (tmp_path / "image_to_video_lora" / "pytorch_lora_weights.safetensors").is_file()
    loaded = load_i2v_adapter(tmp_path / "image_to_video_adapter")
    b = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(b["latents"][:, :, 0], 3)[0], task.target["adapter"](b["latents"][:, :, 0], 3)[0]
        )


def test_the_control_adapter_exports_a_controlnet_directory(parts, tmp_path):
    from diffusers import ControlNetModel

    task = AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter="control")
    info = task.export(tmp_path)
    assert info["adapter"] == "control" and (tmp_path / "controlnet" / "config.json").is_file()
    cn = ControlNetModel.from_pretrained(str(tmp_path / "controlnet"), local_files_only=True)
    assert len(cn.config.conditioning_embedding_out_channels) - 1 == 2 == vae_downsample(parts.vae).bit_length() - 1


def test_bad_settings_are_refused(parts):
    with pytest.raises(ValueError, match="adapter="):
        AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter="depth")
    with pytest.raises(ValueError, match="ema_decay"):
        AdapterConsistencyTask(parts, _video_unet(parts), CONSISTENCY, adapter="control", ema_decay=1.0)
