"""Stage 2's Task: the paper's decoupled initialisation (the target receives the stage-1 LoRA through the EMA), the
closed-form LoRA scale against an explicit EMA, the ablation switches, and what trains."""

from __future__ import annotations

import pytest
import torch

from models.consistency_config import ConsistencyConfig
from models.factory import build_teacher
from models.lora import add_lora, lora_state_dict
from models.stage2 import STAGE1_ADAPTER, VideoConsistencyTask
from models.teacher_config import LoraConfig, TeacherConfig
from models.video_unet import MOTION_KEY, new_motion_adapter

TEACHER = TeacherConfig(pretrained_dir="toyworld/zoo/image_teacher", lora=LoraConfig(rank=4))
CONSISTENCY = ConsistencyConfig(w_min=1.0, w_max=4.0)


@pytest.fixture(scope="module")
def parts():
    return build_teacher(TEACHER)


@pytest.fixture(scope="module")
def motion_adapter(parts):
    adapter = new_motion_adapter(dict(parts.unet.config), heads=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return adapter


@pytest.fixture(scope="module")
def stage1_lora(parts):
    """A stage-1 LoRA with non-zero B (as after training), in PEFT layout."""
    import copy

    unet = add_lora(copy.deepcopy(parts.unet), TEACHER.lora)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in lora_state_dict(unet).items()}


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(1, 4, 3, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, 77, 64, generator=g),
    }


def _task(parts, motion_adapter, stage1_lora, **kw):
    kw.setdefault("ema_decay", 0.5)
    return VideoConsistencyTask(parts, motion_adapter, CONSISTENCY, stage1_lora=stage1_lora, lora=TEACHER.lora, **kw)


def _delta(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A LoRA module's update B·A (linear or conv factors)."""
    return b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)


def _train(task, steps: int) -> None:
    opt = torch.optim.SGD(task.trainable_parameters(), lr=0.05)
    for step in range(steps):
        loss, _ = task.loss(_batch(step), step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        task.after_step(step)


@torch.no_grad()
def _target_out(task):
    b = _batch(99)
    return task._model(task.target, b["latents"], torch.tensor([500]), b["encoder_hidden_states"], torch.tensor([2.0]))


def test_only_the_temporal_layers_train_and_the_lora_never_enters_the_motion_modules(
    parts, motion_adapter, stage1_lora
):
    task = _task(parts, motion_adapter, stage1_lora)
    names = [n for n, p in task.student.named_parameters() if p.requires_grad]
    assert names and all(MOTION_KEY in n and "lora_" not in n for n in names)
    lora_names = [n for n, _ in task.student.named_parameters() if f".{STAGE1_ADAPTER}." in n]
    assert len(lora_names) == len(stage1_lora)
    assert not any(MOTION_KEY in n for n in lora_names)


def test_online_only_target_starts_without_the_lora_and_receives_it_at_scale_one_minus_mu_n_squared(
    parts, motion_adapter, stage1_lora
):
    task = _task(parts, motion_adapter, stage1_lora, init="online_only", ema_decay=0.5)
    assert task.target_lora_scale() == 0.0
    # at n = 0 the target behaves as the model without the LoRA: the teacher's inflation (same motion init)
    b = _batch(99)
    with torch.no_grad():
        no_lora = task._model(task.teacher, b["latents"], torch.tensor([500]), b["encoder_hidden_states"],
                              torch.tensor([2.0]))  # fmt: skip
    torch.testing.assert_close(_target_out(task), no_lora, atol=1e-5, rtol=1e-4)
    _train(task, 3)
    assert task.target_lora_scale() == pytest.approx((1 - 0.5**3) ** 2)


def test_the_closed_form_lora_scale_equals_an_explicit_ema_of_the_lora_factors(parts, motion_adapter, stage1_lora):
    scale = _task(parts, motion_adapter, stage1_lora, lora_ema="scale")
    explicit = _task(parts, motion_adapter, stage1_lora, lora_ema="explicit")
    _train(scale, 3)
    _train(explicit, 3)
    out_s, out_e = _target_out(scale), _target_out(explicit)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=1e-4)
    # and the LoRA matters: with the full-scale LoRA the target would differ
    both = _task(parts, motion_adapter, stage1_lora, init="both")
    _train(both, 3)
    assert (_target_out(both) - out_s).abs().max() > 1e-4
    # the exported spatial LoRA folds the scale: explicit factors (1-μⁿ)·A, (1-μⁿ)·B give the same B·A
    ls, le = scale.spatial_lora(), explicit.spatial_lora()
    for key in ls:
        if key.endswith(".lora_B.weight"):
            a_key = key.replace("lora_B", "lora_A")
            torch.testing.assert_close(_delta(ls[key], ls[a_key]), _delta(le[key], le[a_key]), atol=1e-6, rtol=1e-4)


def test_init_none_uses_no_lora_and_decoupled_false_trains_a_spatial_lora(parts, motion_adapter, stage1_lora):
    none = _task(parts, motion_adapter, stage1_lora, init="none")
    assert not any("lora_" in n for n, _ in none.student.named_parameters())
    assert none.spatial_lora() is None
    coupled = _task(parts, motion_adapter, None, init="none", decoupled=False)
    trainable = [n for n, p in coupled.student.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any(MOTION_KEY in n for n in trainable)
    assert not any(MOTION_KEY in n and "lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="init=none"):
        _task(parts, motion_adapter, None, init="online_only", decoupled=False)
    with pytest.raises(ValueError, match="stage-1 LoRA"):
        _task(parts, motion_adapter, None, init="online_only")
    with pytest.raises(ValueError, match="init="):
        _task(parts, motion_adapter, stage1_lora, init="sometimes")


def test_checkpointed_state_restores_the_target_and_its_update_count(parts, motion_adapter, stage1_lora):
    a = _task(parts, motion_adapter, stage1_lora)
    _train(a, 2)
    state = a.extra_state()
    b = _task(parts, motion_adapter, stage1_lora)
    b.load_extra_state(state)
    assert b.updates == 2 and b.target_lora_scale() == a.target_lora_scale()
    torch.testing.assert_close(_target_out(b), _target_out(a))


def test_draws_depend_on_seed_rank_and_step_only(parts, motion_adapter, stage1_lora):
    a, b, c = (_task(parts, motion_adapter, stage1_lora) for _ in range(3))
    la, lb = float(a.loss(_batch(0), 7)[0]), float(b.loss(_batch(0), 7)[0])
    assert la == lb
    c.configure(seed=0, rank=1, world_size=2)
    assert float(c.loss(_batch(0), 7)[0]) != la
