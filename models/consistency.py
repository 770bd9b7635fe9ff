"""Consistency-distillation math (LCM form), shared by every training stage. Pure tensor functions, no models.

Notation: the teacher's discrete schedule has T steps (1000 for SD) with ᾱ_t = ``alphas_cumprod[t]``. Distillation
works on a DDIM grid of N points (``num_ddim_timesteps``, 50 by default) with skip k = T // N:
t ∈ {k−1, 2k−1, ..., T−1}. A training sample draws a grid index n, noises x0 to x_{t_{n+k}} (the grid point), lets
the teacher take one CFG-augmented DDIM step to x_{t_n} (t_n = t_{n+k} − k, clamped at 0), and asks the student's
consistency function at (x_{t_{n+k}}, t_{n+k}) to match the target's at (x_{t_n}, t_n).

- Boundary condition (LCM): with s = t · ``timestep_scaling``, c_skip(t) = σ_d² / (s² + σ_d²) and
  c_out(t) = s / sqrt(s² + σ_d²), so f(x, 0) = x. The consistency function is f = c_skip·x_t + c_out·x̂0.
- x̂0 from the model output: ε-prediction x̂0 = (x_t − sqrt(1−ᾱ)·ε) / sqrt(ᾱ); v-prediction
  x̂0 = sqrt(ᾱ)·x_t − sqrt(1−ᾱ)·v, whose ε is sqrt(ᾱ)·v + sqrt(1−ᾱ)·x_t.
- Teacher step: ε for the conditional and unconditional prompts in ONE batched forward, combined with per-sample
  guidance w in LCM's form (cond + w·(cond − uncond), i.e. CFG scale w + 1) for both x̂0 and ε, then the DDIM step
  x_{t_n} = sqrt(ᾱ_{t_n})·x̂0 + sqrt(1 − ᾱ_{t_n})·ε (η = 0).
- Losses: L2 or pseudo-Huber sqrt((x − y)² + c²) − c (mean over elements), optionally weighted per sample by λ_n.

Checked against diffusers' ``LCMScheduler`` (scalings, denoised output) and ``DDIMScheduler`` with trailing spacing
(the step), on random inputs (``tests/unit/test_consistency.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from models.consistency_config import ConsistencyConfig

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, ...) broadcastable against ``like`` (images or videos)."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(dtype=like.dtype, device=like.device)


class DDIMGrid:
    """The N-point DDIM grid on a teacher schedule, and the deterministic DDIM step along it."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_ddim_timesteps: int = 50) -> None:
        total = int(alphas_cumprod.shape[0])
        if not 2 <= num_ddim_timesteps <= total:
            raise ValueError(f"num_ddim_timesteps={num_ddim_timesteps}: must be in [2, {total}]")
        self.alphas_cumprod = alphas_cumprod.float()
        self.skip = total // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * self.skip - 1
        self.alpha_t = self.alphas_cumprod[self.timesteps]
        # The step from the first grid point lands on t = 0 (ᾱ_0, not 1: SD's set_alpha_to_one=False).
        self.alpha_prev = torch.cat([self.alphas_cumprod[:1], self.alphas_cumprod[self.timesteps[:-1]]])

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def sample_index(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` grid indices drawn uniformly."""
        return torch.randint(0, len(self), (n,), generator=generator)

    def start_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """t_{n+k}: the grid points of ``index``."""
        return self.timesteps[index]

    def prev_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """t_n = t_{n+k} − k, clamped at 0."""
        return (self.timesteps[index] - self.skip).clamp(min=0)

    def ddim_step(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x_{t_n} = sqrt(ᾱ_{t_n})·x̂0 + sqrt(1 − ᾱ_{t_n})·ε (η = 0)."""
        a_prev = _per_sample(self.alpha_prev.to(pred_x0.device)[index.to(pred_x0.device)], pred_x0)
        return a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * pred_eps

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ(t) = sqrt((1 − ᾱ_t) / ᾱ_t), the noise level in the variance-exploding view."""
        a = self.alphas_cumprod[t]
        return ((1 - a) / a).sqrt()


def boundary_scalings(
    t: torch.Tensor, *, timestep_scaling: float = 10.0, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip(t), c_out(t) (see the module docstring)."""
    s = t.double() * timestep_scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / (s**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


def _alphas(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _per_sample(alphas_cumprod.to(like.device)[t.to(like.device)], like)


def predicted_x0(
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """x̂0 from an ε- or v-prediction at timesteps ``t`` (one per sample)."""
    a = _alphas(alphas_cumprod, t, sample)
    if prediction_type == "epsilon":
        return (sample - (1 - a).sqrt() * model_output) / a.sqrt()
    elif prediction_type == "v_prediction":
        return a.sqrt() * sample - (1 - a).sqrt() * model_output
    else:
        raise ValueError(f"prediction_type={prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}")


def predicted_eps(
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """ε from an ε- or v-prediction at timesteps ``t``."""
    if prediction_type == "epsilon":
        return model_output
    elif prediction_type == "v_prediction":
        a = _alphas(alphas_cumprod, t, sample)
        return a.sqrt() * model_output + (1 - a).sqrt() * sample
    else:
        raise ValueError(f"prediction_type={prediction_type!r}: choose one of {', '.join(PREDICTION_TYPES)}")


def consistency_function(
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    cfg: ConsistencyConfig,
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂0."""
    c_skip, c_out = boundary_scalings(t, timestep_scaling=cfg.timestep_scaling, sigma_data=cfg.sigma_data)
    x0 = predicted_x0(model_output, t, sample, alphas_cumprod, prediction_type)
    return _per_sample(c_skip, sample) * sample + _per_sample(c_out, sample) * x0


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (the forward process, as the teacher was trained)."""
    a = _alphas(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def sample_guidance(
    n: int, cfg: ConsistencyConfig, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-sample guidance scales w ~ U[w_min, w_max]."""
    u = torch.rand(n, generator=generator)
    return (cfg.w_min + (cfg.w_max - cfg.w_min) * u).to(device)


def guidance_embedding(w: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of w (as for timesteps, on w·1000), for students with ``time_cond_proj_dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=w.device) / (half - 1))
    args = (w.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


TeacherFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""teacher(x_t, t, encoder_hidden_states) → model output (ε or v)."""


def cfg_teacher_step(
    teacher: TeacherFn,
    x_t: torch.Tensor,
    index: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    w: torch.Tensor,
    grid: DDIMGrid,
    prediction_type: str,
) -> torch.Tensor:
    """One CFG-augmented DDIM step of the teacher from t_{n+k} to t_n, both prompts in one batched forward."""
    t = grid.start_timesteps(index).to(x_t.device)
    out = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
    out_c, out_u = out.chunk(2)
    ac = grid.alphas_cumprod
    x0_c, x0_u = (predicted_x0(o, t, x_t, ac, prediction_type) for o in (out_c, out_u))
    eps_c, eps_u = (predicted_eps(o, t, x_t, ac, prediction_type) for o in (out_c, out_u))
    ww = _per_sample(w, x_t)
    x0 = x0_c + ww * (x0_c - x0_u)
    eps = eps_c + ww * (eps_c - eps_u)
    return grid.ddim_step(x0, eps, index)


def loss_weights(grid: DDIMGrid, index: torch.Tensor, weighting: str) -> torch.Tensor:
    """λ_n per sample (see :data:`models.consistency_config.WEIGHTINGS`)."""
    if weighting == "uniform":
        return torch.ones(index.shape[0])
    elif weighting == "sigma_gap":
        all_idx = torch.arange(len(grid))
        gaps = grid.sigma(grid.start_timesteps(all_idx)) - grid.sigma(grid.prev_timesteps(all_idx))
        lam = 1.0 / gaps
        return (lam / lam.mean())[index]
    else:
        raise ValueError(f"weighting={weighting!r}: choose uniform or sigma_gap")


def consistency_loss(
    pred: torch.Tensor, target: torch.Tensor, cfg: ConsistencyConfig, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean L2 or pseudo-Huber distance between student and target, weighted per sample by ``weights``."""
    diff = pred.float() - target.float()
    if cfg.loss == "l2":
        per = diff.pow(2)
    elif cfg.loss == "huber":
        per = (diff.pow(2) + cfg.huber_c**2).sqrt() - cfg.huber_c
    else:
        raise ValueError(f"loss={cfg.loss!r}: choose l2 or huber")
    per_sample = per.reshape(per.shape[0], -1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
