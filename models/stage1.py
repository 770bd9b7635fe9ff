"""Stage 1, image consistency distillation: a spatial LCM-LoRA distilled from a frozen Stable-Diffusion teacher.

The Task (:class:`models.task.Task`) holds:

- the **teacher**: the frozen UNet of :func:`models.factory.build_teacher`, with its VAE and text encoder;
- the **student**: a copy of the teacher UNet with a PEFT LoRA (:func:`models.lora.add_lora`; only the LoRA trains);
- the **target**: with ``target="ema"`` (default) a second copy whose LoRA is an exponential moving average of the
  student's (decay ``ema_decay``, 0.95), updated after every optimiser step; with ``target="student"`` the student
  itself under ``no_grad`` (diffusers' LCM-LoRA script, which keeps no separate target).

One step (:meth:`ImageConsistencyTask.loss`), per :mod:`models.consistency`: latents (precomputed ``latents`` in the
batch, else the VAE's mean × ``vae.config.scaling_factor``), prompt embeddings (precomputed
``encoder_hidden_states``, else the text encoder on ``input_ids``), a grid index n and guidance w per sample,
x_{t_{n+k}} from noise; the student's consistency function there; the teacher's CFG-augmented DDIM step (both prompts
in one forward) to x_{t_n}; the target's consistency function at x_{t_n}; the L2 or pseudo-Huber loss with λ_n.

Decisions: all three UNets are separate modules (simple and ZeRO-friendly; the teacher and target could share base
weights with the student through adapter switching; ``bench/sd15_fake_gpu.py`` measured that at SD v1-5 size every
stage fits an 80 GB GPU without it, see ``bench/RESULTS.md``). Under ZeRO-3 the
student's LoRA is partitioned across ranks; the EMA update gathers it first (every rank takes part). Noise, grid
indices and w are drawn per (seed, rank, step, micro-batch), so a resumed run repeats an uninterrupted one's draws.
The EMA target, the draws and the checkpoint state are the Task base's (:class:`models.task.Task`).
Stage 1 runs ZeRO-2 by default.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from models.consistency import (
    DDIMGrid,
    cfg_teacher_step,
    consistency_function,
    consistency_loss,
    guidance_embedding,
    loss_weights,
    sample_guidance,
)
from models.consistency_config import TARGETS, ConsistencyConfig
from models.factory import TeacherParts
from models.lora import add_lora, lora_state_dict, save_lora, to_diffusers_lora, to_kohya
from models.task import ConsistencyTaskBase
from models.teacher_config import LoraConfig


class ImageConsistencyTask(ConsistencyTaskBase):
    """Stage 1 (see the module docstring)."""

    def __init__(
        self,
        parts: TeacherParts,
        lora: LoraConfig,
        consistency: ConsistencyConfig,
        *,
        target: str = "ema",
        ema_decay: float = 0.95,
        gradient_checkpointing: bool = False,
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: choose one of {', '.join(TARGETS)}")
        self.parts, self.lora_cfg, self.cfg = parts, lora, consistency
        self.teacher = parts.unet.eval().requires_grad_(False)
        if consistency.w_embedding and not parts.unet.config.get("time_cond_proj_dim"):
            raise ValueError("consistency.w_embedding=true needs a student UNet with time_cond_proj_dim set")
        self.student = add_lora(copy.deepcopy(parts.unet), lora)
        self.student.train()
        if gradient_checkpointing:
            self.checkpoint_activations(self.student)
        self.target_mode = target
        if target == "ema":  # the target follows the LoRA; its base weights are the teacher's, frozen
            lora_names = [n for n, _ in self.student.named_parameters() if "lora_" in n]
            self.follow(self.frozen_copy(self.student), lora_names, ema_decay)
        self.grid = DDIMGrid(parts.alphas_cumprod, consistency.num_ddim_timesteps)
        self.uncond = self._encode_text([""])

    # ------------------------------------------------------------------------------------------- inputs

    @torch.no_grad()
    def _latents(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].float()
        vae = self.parts.vae
        # The posterior mean, not a sample: the frozen VAE's latents are then cacheable and identical across epochs.
        return vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor

    # ------------------------------------------------------------------------------------------- step

    def _unet(self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, w: torch.Tensor):
        dtype = next(unet.parameters()).dtype  # the student may be bf16 (cast for DeepSpeed) while inputs are fp32
        cond = guidance_embedding(w, self.cfg.w_embedding_dim).to(x.device, dtype) if self.cfg.w_embedding else None
        return unet(x.to(dtype), t, encoder_hidden_states=ehs.to(dtype), timestep_cond=cond).sample.float()

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        gen = self.draws(step)
        latents, ehs = self._latents(batch), self._prompts(batch)
        b = latents.shape[0]
        ac, ptype = self.grid.alphas_cumprod, self.parts.prediction_type
        index, t_start, t_prev, noise, x_t = self.grid_points(latents, gen)
        w = sample_guidance(b, self.cfg, gen, latents.device)
        student_out = self._unet(self.student, x_t, t_start, ehs, w)
        pred = consistency_function(student_out, t_start, x_t, ac, ptype, self.cfg)
        with torch.no_grad():
            uncond = self.uncond.to(ehs).expand(b, -1, -1)

            teacher_dtype = next(self.teacher.parameters()).dtype

            def teacher(x, t, e):
                return self.teacher(x.to(teacher_dtype), t, encoder_hidden_states=e.to(teacher_dtype)).sample.float()

            x_prev = cfg_teacher_step(teacher, x_t, index, ehs, uncond, w, self.grid, ptype)
            target_unet = self.target if self.target is not None else self.student
            target_out = self._unet(target_unet, x_prev, t_prev, ehs, w)
            target = consistency_function(target_out.float(), t_prev, x_prev, ac, ptype, self.cfg)
        weights = loss_weights(self.grid, index, self.cfg.weighting)
        loss = consistency_loss(pred.float(), target, self.cfg, weights)
        return loss, {"t_mean": t_start.float().mean(), "w_mean": w.mean()}

    def distilled(self) -> torch.nn.Module:
        """The consistency model the stage delivers: the EMA target, or the student when there is none."""
        return self.target if self.target is not None else self.student

    def export(self, out_dir: Path) -> dict:
        """The LoRA in diffusers format (``pytorch_lora_weights.safetensors``) and the kohya layout."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = lora_state_dict(self.distilled())
        alpha = self.lora_cfg.lora_alpha
        save_lora(to_diffusers_lora(state, alpha=alpha), out_dir / "pytorch_lora_weights.safetensors")
        save_lora(to_kohya(state, alpha=alpha), out_dir / "lcm_lora_kohya.safetensors")
        return {
            "files": ["pytorch_lora_weights.safetensors", "lcm_lora_kohya.safetensors"],
            "rank": self.lora_cfg.rank,
            "alpha": alpha,
            "from": "ema_target" if self.target is not None else "student",
        }
