"""Configuration of consistency distillation (torch-free, so flows and the CLI can validate it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

LOSSES = ("l2", "huber")
"""Consistency losses: squared error, or the pseudo-Huber ``sqrt((x - y)² + c²) - c``."""
WEIGHTINGS = ("uniform", "sigma_gap")
"""Per-sample loss weights λ_n: 1, or the consistency-models weighting 1 / (σ(t_{n+k}) - σ(t_n)) normalised to mean 1
over the DDIM grid."""

TARGETS = ("ema", "student")
"""Consistency targets: an EMA of the student's trainable weights, or the student itself under ``no_grad``."""


@dataclass(frozen=True)
class ConsistencyConfig:
    """The consistency-distillation objective (LCM form), shared by the training stages."""

    num_ddim_timesteps: int = 50
    """N: points of the DDIM grid on the teacher's training schedule (1000 steps / 50 = skip k of 20)."""
    timestep_scaling: float = 10.0
    """Scale of the timestep in the boundary-condition scalings c_skip, c_out (LCM's 10)."""
    sigma_data: float = 0.5
    """σ_data in the boundary-condition scalings."""
    w_min: float = 5.0
    """Lowest guidance scale w sampled per sample (LCM form: ε = ε_c + w·(ε_c − ε_u))."""
    w_max: float = 15.0
    """Highest guidance scale w sampled per sample."""
    w_embedding: bool = False
    """Give the student a guidance-scale embedding (UNet ``time_cond_proj_dim``); LCM-LoRA does not."""
    w_embedding_dim: int = 256
    """Width of the guidance-scale embedding when ``w_embedding`` is on."""
    loss: str = "huber"
    """``huber`` (pseudo-Huber) or ``l2``."""
    huber_c: float = 0.001
    """c of the pseudo-Huber loss."""
    weighting: str = "uniform"
    """λ_n: ``uniform`` or ``sigma_gap`` (see :data:`WEIGHTINGS`)."""

    def __post_init__(self) -> None:
        if self.num_ddim_timesteps < 2:
            raise ValueError(f"num_ddim_timesteps={self.num_ddim_timesteps!r}: must be ≥ 2 (50 is LCM's)")
        if self.timestep_scaling <= 0:
            raise ValueError(f"timestep_scaling={self.timestep_scaling!r}: must be > 0")
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data={self.sigma_data!r}: must be > 0")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"w_min={self.w_min!r}, w_max={self.w_max!r}: need 0 ≤ w_min ≤ w_max")
        if self.w_embedding_dim < 2 or self.w_embedding_dim % 2:
            raise ValueError(f"w_embedding_dim={self.w_embedding_dim!r}: must be an even number ≥ 2")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.huber_c <= 0:
            raise ValueError(f"huber_c={self.huber_c!r}: must be > 0")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}: choose one of {', '.join(WEIGHTINGS)}")

    @property
    def teacher_guidance_scale(self) -> float:
        """The CFG scale the teacher is sampled with when it is compared with the student (previews, evaluation):
        diffusers' ``guidance_scale`` (1 + w) at the middle of the w range the student was distilled on."""
        return 1.0 + 0.5 * (self.w_min + self.w_max)
