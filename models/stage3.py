"""Stage 3, teacher-free adaptation: a control or image-to-video adapter trained directly against the frozen video
consistency model, by consistency training (no teacher), so that it keeps working at 1–4 steps.

- **Base**: stage 2's video consistency model (``UNetMotionModel``: spatial weights with the LCM-LoRA fused, the
  distilled motion modules), frozen.
- **Adapter** (trainable): ``control``, a ControlNet branch (:func:`models.adapters.build_controlnet`: a copy of the
  image UNet's encoder, or an existing image ControlNet to adapt) on pose control frames; or ``image_to_video``, the
  :class:`models.adapters.ImageToVideoAdapter` on the first frame's latent. Both start adding exactly 0.
- Optionally (``tune_lora``) a LoRA on the base's spatial layers (never the motion modules) trains with the adapter,
  as the paper does for compatibility.
- **Loss** (consistency training): one noise ε for both points, x_{t_{n+k}} = √ᾱ·x0 + √(1−ᾱ)·ε at t_{n+k} and
  x̂_{t_n} the same at t_n; the online model's consistency function at x_{t_{n+k}} is pulled towards the EMA
  target's at x̂_{t_n} (L2 or pseudo-Huber, λ_n), with the grid, boundary scalings and loss of stage 1.
- **Target**: an EMA (``ema_decay``) of the trainable weights (adapter, and the LoRA when tuned).

The student DeepSpeed wraps is a ``ModuleDict`` holding the adapter and the (frozen) base, so a tuned LoRA inside the
base is optimised with the adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.adapters import ImageToVideoAdapter, build_controlnet, controlnet_residuals, save_i2v_adapter
from models.consistency import (
    DDIMGrid,
    add_noise,
    consistency_function,
    consistency_loss,
    guidance_embedding,
    loss_weights,
)
from models.consistency_config import ConsistencyConfig
from models.factory import TeacherParts
from models.lora import EXCLUDE_MOTION, add_lora, lora_state_dict, save_lora, to_diffusers_lora
from models.task import ConsistencyTaskBase
from models.teacher_config import LoraConfig
from models.video_unet import video_forward

ADAPTER_KINDS = ("control", "image_to_video")


def vae_downsample(vae: torch.nn.Module) -> int:
    """The VAE's spatial downsampling (a diffusers pipeline's ``vae_scale_factor``)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class AdapterConsistencyTask(ConsistencyTaskBase):
    """Stage 3 for one adapter (see the module docstring)."""

    def __init__(
        self,
        parts: TeacherParts,
        video_unet: torch.nn.Module,
        consistency: ConsistencyConfig,
        *,
        adapter: str,
        control_init_dir: str | None = None,
        control_scale: float = 1.0,
        motion_scale: float = 1.0,
        tune_lora: LoraConfig | None = None,
        ema_decay: float = 0.95,
        gradient_checkpointing: bool = False,
    ) -> None:
        if adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter={adapter!r}: choose one of {', '.join(ADAPTER_KINDS)}")
        self.parts, self.cfg, self.kind = parts, consistency, adapter
        self.control_scale, self.lora_cfg = control_scale, tune_lora
        base = video_unet.eval().requires_grad_(False)
        if tune_lora is not None:
            add_lora(base, tune_lora, exclude=EXCLUDE_MOTION)
        if adapter == "control":
            module = build_controlnet(parts.unet, from_dir=control_init_dir, vae_downsample=vae_downsample(parts.vae))
        else:
            module = ImageToVideoAdapter.from_unet_config(dict(parts.unet.config), motion_scale=motion_scale)
        module = module.to(base.device).train().requires_grad_(True)
        self.student = torch.nn.ModuleDict({"adapter": module, "unet": base})
        if tune_lora is None:  # the frozen base is shared (no second copy of a large UNet)
            target = torch.nn.ModuleDict({"adapter": self.frozen_copy(module), "unet": base})
        else:
            target = self.frozen_copy(self.student)
        self.follow(target, [n for n, p in self.student.named_parameters() if p.requires_grad], ema_decay)
        self.student.train()
        base.eval()
        if gradient_checkpointing:  # the adapter's backward runs through the frozen base too
            self.checkpoint_activations(self.student)
        self.grid = DDIMGrid(parts.alphas_cumprod, consistency.num_ddim_timesteps)
        self.salt = (3,)

    @staticmethod
    def condition(kind: str, batch: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
        """The adapter's input: control frames in [0, 1] (B, 3, F, H, W), or the first frame's latent (B, C, h, w)."""
        if kind == "control":
            control = batch["control"]
            return control.float() / 255.0 if control.dtype == torch.uint8 else control.float()
        return latents[:, :, 0]

    def forward(self, model: torch.nn.ModuleDict, x, t, ehs, cond) -> torch.Tensor:
        """The video consistency model's output with the adapter's residuals."""
        w_cond = None
        if self.cfg.w_embedding:
            w_cond = guidance_embedding(torch.full((x.shape[0],), self.cfg.w_min), self.cfg.w_embedding_dim)
        if self.kind == "control":
            down, mid = controlnet_residuals(model["adapter"], x, t, ehs, cond, scale=self.control_scale)
            return video_forward(model["unet"], x, t, ehs, timestep_cond=w_cond, down_residuals=down, mid_residual=mid)
        down = model["adapter"](cond, x.shape[2])
        return video_forward(model["unet"], x, t, ehs, timestep_cond=w_cond, down_residuals=down)

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        gen = self.draws(step)
        latents, ehs = batch["latents"].float(), self._prompts(batch)
        cond = self.condition(self.kind, batch, latents)
        ac, ptype = self.grid.alphas_cumprod, self.parts.prediction_type
        index, t_start, t_prev, noise, x_t = self.grid_points(latents, gen)
        x_prev = add_noise(latents, noise, t_prev, ac)  # consistency training: the same noise at t_n
        pred = consistency_function(self.forward(self.student, x_t, t_start, ehs, cond), t_start, x_t, ac, ptype,
                                    self.cfg)  # fmt: skip
        with torch.no_grad():
            out = self.forward(self.target, x_prev, t_prev, ehs, cond)
            target = consistency_function(out, t_prev, x_prev, ac, ptype, self.cfg)
        loss = consistency_loss(pred, target, self.cfg, loss_weights(self.grid, index, self.cfg.weighting))
        return loss, {"t_mean": t_start.float().mean()}

    def distilled(self) -> torch.nn.ModuleDict:
        """The adapted model the stage delivers: the EMA target (adapter + base)."""
        return self.target

    def export(self, out_dir: Path) -> dict:
        """``controlnet/`` (diffusers ControlNetModel directory, for ``AnimateDiffControlNetPipeline``) or
        ``image_to_video_adapter/`` (:func:`models.adapters.save_i2v_adapter`), and with ``tune_lora``
        ``<adapter>_lora/pytorch_lora_weights.safetensors`` (one per adapter: stage 3 may train both)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        adapter = self.target["adapter"]
        if self.kind == "control":
            adapter.save_pretrained(str(out_dir / "controlnet"), safe_serialization=True)
            files = ["controlnet/config.json", "controlnet/diffusion_pytorch_model.safetensors"]
        else:
            save_i2v_adapter(adapter, out_dir / "image_to_video_adapter")
            files = ["image_to_video_adapter/config.json", "image_to_video_adapter/image_to_video_adapter.safetensors"]
        if self.lora_cfg is not None:
            state = lora_state_dict(self.target["unet"])
            save_lora(to_diffusers_lora(state, alpha=self.lora_cfg.lora_alpha),
                      out_dir / f"{self.kind}_lora" / "pytorch_lora_weights.safetensors")  # fmt: skip
            files.append(f"{self.kind}_lora/pytorch_lora_weights.safetensors")
        return {"adapter": self.kind, "files": files, "from": "ema_target", "control_scale": self.control_scale}
