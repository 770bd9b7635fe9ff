"""Consistency-distillation math against independent oracles: diffusers' LCMScheduler and DDIMScheduler, and
hand-computed losses."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from models.consistency import (
    DDIMGrid,
    add_noise,
    boundary_scalings,
    cfg_teacher_step,
    consistency_function,
    consistency_loss,
    guidance_embedding,
    loss_weights,
    predicted_eps,
    predicted_x0,
    sample_guidance,
)
from models.consistency_config import ConsistencyConfig

SD15_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


@pytest.fixture(scope="module")
def alphas():
    return DDPMScheduler(**SD15_SCHEDULE).alphas_cumprod


def test_the_ddim_grid_has_fifty_points_twenty_apart_ending_at_999(alphas):
    grid = DDIMGrid(alphas, 50)
    assert len(grid) == 50 and grid.skip == 20
    assert grid.timesteps[0] == 19 and grid.timesteps[-1] == 999
    assert torch.equal(grid.prev_timesteps(torch.tensor([0, 1, 49])), torch.tensor([0, 19, 979]))


def test_boundary_scalings_match_the_lcm_scheduler_at_every_timestep():
    lcm = LCMScheduler(**SD15_SCHEDULE, timestep_scaling=10.0)
    t = torch.arange(1000)
    c_skip, c_out = boundary_scalings(t, timestep_scaling=10.0)
    for i in (0, 1, 19, 500, 999):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(i)
        assert c_skip[i].item() == pytest.approx(ref_skip, rel=1e-6, abs=1e-9)
        assert c_out[i].item() == pytest.approx(ref_out, rel=1e-6, abs=1e-9)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # f(x, 0) = x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_consistency_function_equals_the_lcm_schedulers_denoised_output(alphas, prediction_type):
    cfg = ConsistencyConfig()
    lcm = LCMScheduler(**SD15_SCHEDULE, prediction_type=prediction_type, timestep_scaling=10.0)
    lcm.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for step_t in lcm.timesteps:
        ref = lcm.step(output, step_t, sample, generator=torch.Generator().manual_seed(1)).denoised
        t = torch.full((2,), int(step_t))
        ours = consistency_function(output, t, sample, alphas, prediction_type, cfg)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_ddim_step_along_the_grid_equals_the_ddim_scheduler(alphas, prediction_type):
    grid = DDIMGrid(alphas, 50)
    ddim = DDIMScheduler(
        **SD15_SCHEDULE, prediction_type=prediction_type, timestep_spacing="trailing", set_alpha_to_one=False,
        clip_sample=False,
    )  # fmt: skip
    ddim.set_timesteps(50)
    assert torch.equal(ddim.timesteps.sort().values, grid.timesteps)
    g = torch.Generator().manual_seed(2)
    for n in (0, 1, 24, 49):
        x_t, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
        t = grid.start_timesteps(torch.tensor([n]))
        ref = ddim.step(out, int(t), x_t, eta=0.0).prev_sample
        x0 = predicted_x0(out, t, x_t, alphas, prediction_type)
        eps = predicted_eps(out, t, x_t, alphas, prediction_type)
        torch.testing.assert_close(grid.ddim_step(x0, eps, torch.tensor([n])), ref, rtol=1e-5, atol=1e-5)


def test_v_prediction_and_epsilon_describe_the_same_noisy_sample(alphas):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = torch.tensor([5, 300, 990])
    x_t = add_noise(x0, eps, t, alphas)
    a = alphas[t].reshape(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(predicted_x0(v, t, x_t, alphas, "v_prediction"), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predicted_eps(v, t, x_t, alphas, "v_prediction"), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predicted_x0(eps, t, x_t, alphas, "epsilon"), x0, rtol=1e-4, atol=1e-3)


def test_the_teacher_step_runs_both_prompts_in_one_forward_and_applies_lcm_guidance(alphas):
    grid = DDIMGrid(alphas, 50)
    calls = []

    def teacher(x, t, ehs):  # output depends on the prompt, so guidance matters
        calls.append(x.shape[0])
        return 0.1 * x + ehs.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 7, 16, generator=g), torch.zeros(2, 7, 16)
    index, w = torch.tensor([10, 40]), torch.tensor([2.0, 7.0])
    got = cfg_teacher_step(teacher, x_t, index, cond, uncond, w, grid, "epsilon")
    assert calls == [4]
    t = grid.start_timesteps(index)
    eps_c, eps_u = teacher(x_t, t, cond), teacher(x_t, t, uncond)
    ww = w.reshape(-1, 1, 1, 1)
    x0_c, x0_u = predicted_x0(eps_c, t, x_t, alphas, "epsilon"), predicted_x0(eps_u, t, x_t, alphas, "epsilon")
    expected = grid.ddim_step(x0_c + ww * (x0_c - x0_u), eps_c + ww * (eps_c - eps_u), index)
    torch.testing.assert_close(got, expected)


def test_the_teacher_step_broadcasts_over_video_latents(alphas):
    grid = DDIMGrid(alphas, 50)
    x_t = torch.randn(2, 4, 3, 8, 8)  # (B, C, F, H, W)
    cond, uncond, w = torch.ones(2, 1, 2), torch.zeros(2, 1, 2), torch.tensor([1.0, 2.0])
    out = cfg_teacher_step(lambda x, t, e: x * 0.0, x_t, torch.tensor([3, 4]), cond, uncond, w, grid, "epsilon")
    assert out.shape == x_t.shape


def test_pseudo_huber_and_l2_losses_match_hand_computed_values():
    pred, target = torch.tensor([[3.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    c = 0.001
    huber = ((math.sqrt(9 + c * c) - c) + (math.sqrt(16 + c * c) - c)) / 2 / 2  # per-sample means, then the batch
    assert consistency_loss(pred, target, ConsistencyConfig(loss="huber", huber_c=c)).item() == pytest.approx(huber)
    assert consistency_loss(pred, target, ConsistencyConfig(loss="l2")).item() == pytest.approx((9 + 16) / 2 / 2)
    weighted = consistency_loss(pred, target, ConsistencyConfig(loss="l2"), weights=torch.tensor([2.0, 0.0]))
    assert weighted.item() == pytest.approx(2 * 12.5 / 2)


def test_sigma_gap_weights_average_one_over_the_grid_and_favour_low_noise(alphas):
    grid = DDIMGrid(alphas, 50)
    lam = loss_weights(grid, torch.arange(50), "sigma_gap")
    assert lam.mean().item() == pytest.approx(1.0) and lam[0] > lam[-1]
    assert torch.equal(loss_weights(grid, torch.tensor([3, 7]), "uniform"), torch.ones(2))


def test_guidance_is_sampled_in_its_range_and_embedded_like_a_timestep():
    cfg = ConsistencyConfig(w_min=5.0, w_max=15.0)
    w = sample_guidance(1000, cfg, torch.Generator().manual_seed(0))
    assert 5.0 <= w.min() and w.max() <= 15.0 and 9.0 < w.mean() < 11.0
    emb = guidance_embedding(torch.tensor([0.0, 7.5]), 256)
    assert emb.shape == (2, 256) and torch.equal(emb[0, :128], torch.zeros(128))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="loss='l1'"):
        ConsistencyConfig(loss="l1")
    with pytest.raises(ValueError, match="w_min"):
        ConsistencyConfig(w_min=3.0, w_max=1.0)
