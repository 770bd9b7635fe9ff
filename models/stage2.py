"""Stage 2, video consistency distillation: motion layers distilled from an image UNet + motion module teacher, with
the paper's decoupled initialisation.

Models (all ``UNetMotionModel``, :func:`models.video_unet.inflate`):

- **teacher**: the frozen image UNet inflated with the pretrained motion module (AnimateDiff in production, the toy
  motion teacher on the toy profile). Its step is stage 1's CFG-augmented DDIM step, over video latents.
- **online** (the student DeepSpeed trains): the same inflation (``motion_init="teacher"``, default) or a fresh,
  zero-initialised temporal stack (``motion_init="zero"``); spatial weights frozen; the stage-1 LoRA inserted and
  frozen (adapter ``stage1``, never on ``motion_modules``); only the temporal layers train.
- **target**: an EMA (``ema_decay``) of the online model's temporal layers.

The stage-1 LoRA and the target (``init``):

- ``online_only`` (the paper): the LoRA is in the online model only; the target starts without it and receives it
  through the EMA update. The online LoRA is frozen, so the EMA of each factor after n updates from zero is
  (1 − μⁿ)·factor: the target's LoRA is the same LoRA with both A and B scaled by (1 − μⁿ), i.e. its update
  B·A scaled by (1 − μⁿ)². ``lora_ema="scale"`` (default) implements it that way (PEFT's adapter scale, no copy);
  ``lora_ema="explicit"`` keeps zero-initialised LoRA factors in the target and EMA-updates them like any weight. The
  two agree (tested).
- ``both``: the LoRA at full scale in the online model and the target from the start.
- ``none``: no stage-1 LoRA anywhere (the temporal layers are distilled on the raw spatial weights).
- ``decoupled=False`` (the coupled baseline): no stage-1 LoRA; a fresh spatial LoRA (stage 1's LoRA settings, not on
  the motion modules) and the temporal layers train jointly from the raw teacher on video data, the target an EMA of
  both. Needs ``init="none"``.

The deliverable (:meth:`VideoConsistencyTask.distilled`) is the target. Noise, grid index and w are drawn per
(seed, rank, step, micro-batch), as in stage 1.
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
from models.consistency_config import ConsistencyConfig
from models.factory import TeacherParts
from models.lora import (
    EXCLUDE_MOTION,
    add_lora,
    insert_lora,
    lora_state_dict,
    save_lora,
    set_lora_scale,
    to_diffusers_lora,
)
from models.task import ConsistencyTaskBase
from models.teacher_config import LoraConfig
from models.video_unet import MOTION_KEY, inflate, save_motion_adapter, video_forward

INITS = ("online_only", "both", "none")
"""Where the stage-1 LoRA starts (see the module docstring)."""
LORA_EMAS = ("scale", "explicit")
"""How the target receives the stage-1 LoRA under ``init=online_only``."""
MOTION_INITS = ("teacher", "zero")
"""How the online model's temporal layers start: the teacher's motion module, or zero-initialised new layers."""
STAGE1_ADAPTER = "stage1"
SPATIAL_ADAPTER = "spatial"


class VideoConsistencyTask(ConsistencyTaskBase):
    """Stage 2 (see the module docstring)."""

    def __init__(
        self,
        parts: TeacherParts,
        motion_adapter: torch.nn.Module,
        consistency: ConsistencyConfig,
        *,
        stage1_lora: dict[str, torch.Tensor] | None = None,
        lora: LoraConfig | None = None,
        init: str = "online_only",
        decoupled: bool = True,
        lora_ema: str = "scale",
        motion_init: str = "teacher",
        ema_decay: float = 0.95,
        gradient_checkpointing: bool = False,
    ) -> None:
        if init not in INITS:
            raise ValueError(f"init={init!r}: choose one of {', '.join(INITS)}")
        if lora_ema not in LORA_EMAS:
            raise ValueError(f"lora_ema={lora_ema!r}: choose one of {', '.join(LORA_EMAS)}")
        if motion_init not in MOTION_INITS:
            raise ValueError(f"motion_init={motion_init!r}: choose one of {', '.join(MOTION_INITS)}")
        if decoupled and init != "none" and stage1_lora is None:
            raise ValueError(f"init={init!r} needs the stage-1 LoRA (or init=none)")
        if not decoupled and init != "none":
            raise ValueError("decoupled=false trains a spatial LoRA from scratch with the motion layers: set init=none")
        if not decoupled and lora is None:
            raise ValueError("decoupled=false needs the LoRA settings of the spatial LoRA it trains")
        self.parts, self.cfg, self.lora_cfg = parts, consistency, lora
        self.init, self.decoupled, self.lora_ema = init, decoupled, lora_ema
        self.motion_init = motion_init
        self.teacher = inflate(parts.unet, motion_adapter).eval().requires_grad_(False)
        online = inflate(parts.unet, motion_adapter if motion_init == "teacher" else None)
        online.requires_grad_(False)
        target = copy.deepcopy(online)
        self.stage1_lora = stage1_lora if decoupled and init != "none" else None
        if self.stage1_lora is not None:
            insert_lora(online, self.stage1_lora, adapter_name=STAGE1_ADAPTER)
            if init == "both" or lora_ema == "scale":
                insert_lora(target, self.stage1_lora, adapter_name=STAGE1_ADAPTER)
            else:  # explicit EMA from a zero LoRA
                insert_lora(target, {k: torch.zeros_like(v) for k, v in self.stage1_lora.items()},
                            adapter_name=STAGE1_ADAPTER)  # fmt: skip
        if not decoupled:
            add_lora(online, lora, adapter_name=SPATIAL_ADAPTER, exclude=EXCLUDE_MOTION)
            add_lora(target, lora, adapter_name=SPATIAL_ADAPTER, exclude=EXCLUDE_MOTION)
            with torch.no_grad():  # the target starts where the online model starts
                src = dict(online.named_parameters())
                for n, p in target.named_parameters():
                    if f".{SPATIAL_ADAPTER}." in n:
                        p.copy_(src[n])
        online.requires_grad_(False)
        for name, p in online.named_parameters():
            if (MOTION_KEY in name and "lora_" not in name) or f".{SPATIAL_ADAPTER}." in name:
                p.requires_grad_(True)
        self.student = online.train()
        if gradient_checkpointing:
            self.checkpoint_activations(self.student)
        names = [n for n, p in self.student.named_parameters() if p.requires_grad]
        if init == "online_only" and lora_ema == "explicit":
            names += [n for n, _ in self.student.named_parameters() if f".{STAGE1_ADAPTER}." in n]
        self.follow(target, names, ema_decay)  # n of the target's LoRA scale (1 − μⁿ)² is the base's ``updates``
        self.on_update()
        self.grid = DDIMGrid(parts.alphas_cumprod, consistency.num_ddim_timesteps)
        self.salt = (2,)
        self.uncond = self._encode_text([""])

    # ------------------------------------------------------------------------------------------- set-up

    def target_lora_scale(self) -> float:
        """The target's stage-1 LoRA scale: (1 − μⁿ)² under ``online_only`` (see the module docstring), else 1."""
        if self.stage1_lora is None or self.init == "both":
            return 1.0
        return (1.0 - self.ema_decay**self.updates) ** 2

    def on_update(self) -> None:
        """The target's stage-1 LoRA scale follows the update count (``lora_ema="scale"``)."""
        if self.stage1_lora is not None and self.init == "online_only" and self.lora_ema == "scale":
            set_lora_scale(self.target, STAGE1_ADAPTER, self.target_lora_scale())

    @torch.no_grad()
    def _latents(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Video latents (B, C, F, h, w): precomputed ``latents``, or the VAE's mean of ``pixel_values``
        (B, F, 3, H, W) × scaling_factor."""
        if "latents" in batch:
            return batch["latents"].float()
        vae, px = self.parts.vae, batch["pixel_values"]
        b, f = px.shape[:2]
        lat = vae.encode(px.reshape(b * f, *px.shape[2:]).to(vae.dtype)).latent_dist.mean.float()
        lat = lat * vae.config.scaling_factor
        return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4)

    def _model(self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, ehs: torch.Tensor, w: torch.Tensor):
        cond = guidance_embedding(w, self.cfg.w_embedding_dim) if self.cfg.w_embedding else None
        return video_forward(unet, x, t, ehs, timestep_cond=cond)

    # ------------------------------------------------------------------------------------------- step

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        gen = self.draws(step)
        latents, ehs = self._latents(batch), self._prompts(batch)
        b = latents.shape[0]
        ac, ptype = self.grid.alphas_cumprod, self.parts.prediction_type
        index, t_start, t_prev, noise, x_t = self.grid_points(latents, gen)
        w = sample_guidance(b, self.cfg, gen, latents.device)
        pred = consistency_function(self._model(self.student, x_t, t_start, ehs, w), t_start, x_t, ac, ptype, self.cfg)
        with torch.no_grad():
            uncond = self.uncond.to(ehs).expand(b, -1, -1)
            x_prev = cfg_teacher_step(
                lambda x, t, e: video_forward(self.teacher, x, t, e), x_t, index, ehs, uncond, w, self.grid, ptype
            )
            target_out = self._model(self.target, x_prev, t_prev, ehs, w)
            target = consistency_function(target_out, t_prev, x_prev, ac, ptype, self.cfg)
        loss = consistency_loss(pred, target, self.cfg, loss_weights(self.grid, index, self.cfg.weighting))
        return loss, {"t_mean": t_start.float().mean(), "target_lora_scale": self.target_lora_scale()}

    # ------------------------------------------------------------------------------------------- deliverable

    def distilled(self) -> torch.nn.Module:
        """The video consistency model the stage delivers: the target."""
        return self.target

    def spatial_lora(self) -> dict[str, torch.Tensor] | None:
        """The spatial LoRA of the delivered model in PEFT layout, scale folded into B (None with ``init=none``)."""
        if not self.decoupled:
            return lora_state_dict(self.target, adapter_name=SPATIAL_ADAPTER)
        if self.stage1_lora is None:
            return None
        state = lora_state_dict(self.target, adapter_name=STAGE1_ADAPTER)
        scale = self.target_lora_scale() if self.lora_ema == "scale" else 1.0
        return {k: v * scale if k.endswith(".lora_B.weight") else v for k, v in state.items()}

    def export(self, out_dir: Path) -> dict:
        """``motion_adapter/`` (a diffusers MotionAdapter directory of the target's temporal layers) and, unless
        ``init=none``, ``lcm_lora/pytorch_lora_weights.safetensors`` (the target's spatial LoRA, diffusers format)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_motion_adapter(self.target, out_dir / "motion_adapter")
        files = ["motion_adapter/config.json", "motion_adapter/diffusion_pytorch_model.safetensors"]
        spatial = self.spatial_lora()
        alpha = self.lora_cfg.lora_alpha if (not self.decoupled and self.lora_cfg) else None
        if spatial is not None:
            save_lora(
                to_diffusers_lora(spatial, alpha=alpha), out_dir / "lcm_lora" / "pytorch_lora_weights.safetensors"
            )
            files.append("lcm_lora/pytorch_lora_weights.safetensors")
        return {
            "files": files,
            "init": self.init,
            "decoupled": self.decoupled,
            "lora_ema": self.lora_ema,
            "motion_init": self.motion_init,
            "target_lora_scale": round(self.target_lora_scale(), 6),
            "updates": self.updates,
            "from": "ema_target",
        }
