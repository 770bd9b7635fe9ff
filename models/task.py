"""The Task contract: what one training stage is, so that one shared loop (``pipelines.train_loop``) runs them all.

A Task holds the student (the module DeepSpeed wraps and whose trainable parameters it optimises), any frozen
teacher, the loss, and the state that follows the student. The loop calls, per step::

    loss, metrics = task.loss(batch, step)     # forward through student (and teacher / target), no backward
    engine.backward(loss); engine.step()       # DeepSpeed
    task.after_step(step)                      # the EMA update of the target from the student

What every Task shares is written here, once:

- **the EMA target** (:meth:`Task.follow`): a module whose named parameters ``names`` follow the student's of the
  same names, ``target ← μ·target + (1 − μ)·student`` after every optimiser step, counted in :attr:`Task.updates`;
  under ZeRO-3 the student's partitioned parameters are gathered for it (every rank takes part, as DeepSpeed
  requires). :meth:`Task.on_update` is the hook for what follows the count (stage 2's LoRA scale). The average is
  kept in float32 masters whatever the target's dtype: in bf16 an update of (1 − μ) = 5% of a weight's rounding
  step would be rounded away, and the target is the deliverable. A bf16 target's weights are the masters rounded
  once per update.
- **the seeded draws** (:meth:`Task.draws`): a generator seeded per (run seed, rank, step, micro-batch, the Task's
  :attr:`~Task.salt`), so ranks draw differently, every draw is reproducible, and a resumed run draws exactly what
  an uninterrupted one would. The loop tells the Task its seed and rank (:meth:`Task.configure`).
- **gradient checkpointing** (:meth:`Task.checkpoint_activations`): the networks the backward pass runs through
  recompute their activations instead of keeping them (diffusers' ``enable_gradient_checkpointing``).
- **the checkpoint state** (:meth:`Task.extra_state`): the target's EMA masters and the update count, which the
  loop's checkpointer saves beside the engine's state and restores with :meth:`Task.load_extra_state`.
- **the replica fingerprint** (:meth:`Task.fingerprint`): a few numbers summarising the trainable and target
  weights, which the loop compares across ranks (every rank must hold the same weights).

A subclass sets :attr:`student` (and calls :meth:`follow` when it keeps a target) and implements :meth:`loss` and
:meth:`export`. ``export(out_dir)`` writes the deliverable (e.g. a LoRA) at the end.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn


def gathered(params: list[nn.Parameter]):
    """Under ZeRO-3 the student's parameters are partitioned across ranks (``ds_id`` marks them): gather them for
    reading (every rank calls this, as DeepSpeed requires); otherwise a no-op."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class Task:
    """Base class of a training stage (see the module docstring)."""

    student: nn.Module
    """The module DeepSpeed wraps; only its parameters with ``requires_grad`` are optimised."""
    target: nn.Module | None = None
    """The EMA target, when the Task keeps one (:meth:`follow`)."""
    ema_decay: float = 0.0
    """μ of the EMA target."""
    ema_names: tuple[str, ...] = ()
    """The student's parameters the target follows (by name)."""
    updates: int = 0
    """EMA updates done (optimiser steps taken)."""
    salt: tuple[int, ...] = ()
    """Mixed into every draw's seed, so that two Tasks with the same run seed draw differently."""
    seed: int = 0
    rank: int = 0

    # ------------------------------------------------------------------------------------------- the run

    def configure(self, *, seed: int, rank: int, world_size: int) -> None:
        """Called by the loop on every worker before training: the run's seed, this worker's rank and the world
        size (the draws depend on them)."""
        self.seed, self.rank = seed, rank

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Scalar loss of one micro-batch and metrics to log (numbers or 0-d tensors, which the loop reads with
        ``float`` when it logs: a Task never forces a device sync of its own)."""
        raise NotImplementedError

    def export(self, out_dir: Path) -> dict:
        """Write the stage's deliverable under ``out_dir``; return a description for the manifest."""
        return {}

    # ------------------------------------------------------------------------------------------- draws

    def draws(self, step: int) -> torch.Generator:
        """The generator of one micro-batch's draws: seeded from (seed, rank, step, micro-batch index within the
        step, :attr:`salt`); call once per micro-batch, before drawing."""
        micro = self._micro[1] + 1 if getattr(self, "_micro", (-1, 0))[0] == step else 0
        self._micro = (step, micro)
        entropy = [self.seed, self.rank, step, micro, *self.salt]
        if not hasattr(self, "_generator"):
            self._generator = torch.Generator()
        return self._generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    # ------------------------------------------------------------------------------------------- the EMA target

    def follow(self, target: nn.Module, names: list[str], decay: float) -> None:
        """Keep ``target`` as the EMA (decay ``decay``) of the student's parameters ``names``; its parameters are
        frozen."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay!r}: must be in [0, 1)")
        student = dict(self.student.named_parameters())
        missing = [n for n in names if n not in student or n not in dict(target.named_parameters())]
        if missing:
            raise ValueError(f"the EMA target follows parameters that student and target do not both have: {missing}")
        self.target, self.ema_names, self.ema_decay = target.eval().requires_grad_(False), tuple(names), decay
        tgt = dict(self.target.named_parameters())
        # float32 masters of the average (the target's own parameters when they are float32 already)
        self.ema_masters = {n: tgt[n] if tgt[n].dtype == torch.float32 else tgt[n].detach().float().clone()
                            for n in names}  # fmt: skip

    @staticmethod
    def frozen_copy(module: nn.Module) -> nn.Module:
        """A frozen copy of ``module`` (what a target starts as)."""
        return copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after every optimiser step: the EMA update of the target, then :meth:`on_update`."""
        if self.target is None:
            return
        online = dict(self.student.named_parameters())
        with gathered([online[n] for n in self.ema_names]):
            tgt = dict(self.target.named_parameters())
            for name in self.ema_names:
                master = self.ema_masters[name]
                master.mul_(self.ema_decay).add_(online[name].detach().float(), alpha=1.0 - self.ema_decay)
                if master is not tgt[name]:
                    tgt[name].copy_(master)
        self.updates += 1
        self.on_update()

    def on_update(self) -> None:
        """Called after every EMA update and after a restore (what depends on :attr:`updates`)."""

    @staticmethod
    def checkpoint_activations(*modules: nn.Module) -> int:
        """Turn on gradient checkpointing in every module that supports it (diffusers models, and the models inside
        a PEFT wrapper); returns how many. Only forward passes with gradients recompute: a frozen target or teacher
        under ``no_grad`` runs as before."""
        done = 0
        for module in modules:
            for sub in module.modules():
                supported = getattr(sub, "_supports_gradient_checkpointing", False)
                if supported and hasattr(sub, "enable_gradient_checkpointing"):
                    sub.enable_gradient_checkpointing()
                    done += 1
        if not done:
            raise ValueError("gradient_checkpointing=true, but no network of this stage supports it")
        return done

    # ------------------------------------------------------------------------------------------- state

    def extra_state(self) -> dict[str, torch.Tensor]:
        """State outside the DeepSpeed engine that a checkpoint keeps: the target's EMA masters (float32) and the
        update count (tensors only)."""
        if self.target is None:
            return {}
        state = {f"target.{n}": self.ema_masters[n].detach().cpu().clone() for n in self.ema_names}
        state["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return state

    @torch.no_grad()
    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`extra_state`."""
        if self.target is None:
            return
        tgt = dict(self.target.named_parameters())
        unknown = sorted(k for k in state if k.startswith("target.") and k.removeprefix("target.") not in tgt)
        if unknown:
            raise ValueError(f"checkpoint state for target parameters this Task does not have: {unknown[:5]}")
        for key, value in state.items():
            if key.startswith("target."):
                name = key.removeprefix("target.")
                tgt[name].copy_(value)
                if name in self.ema_masters and self.ema_masters[name] is not tgt[name]:
                    self.ema_masters[name].copy_(value)  # a float32 checkpoint restores the masters exactly
        self.updates = int(state.get("updates", torch.tensor(0)))
        self.on_update()

    @torch.no_grad()
    def fingerprint(self) -> torch.Tensor:
        """A float64 summary of the trainable weights and the target's EMA weights (per module: sum, sum of squares
        and a position-weighted sum): ranks holding the same weights give the same numbers. Under ZeRO-3 every rank
        must call it (the student's parameters are gathered)."""
        params = self.trainable_parameters()
        groups = [params]
        if self.target is not None:
            groups.append([self.ema_masters[n] for n in self.ema_names])
        out = []
        with gathered(params):
            for group in groups:
                total = torch.zeros(3, dtype=torch.float64)
                for p in group:
                    x = p.detach().double().flatten().cpu()
                    position = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
                    total += torch.stack([x.sum(), x.square().sum(), (x * position).sum()])
                out.append(total)
        return torch.cat(out)


class ConsistencyTaskBase(Task):
    """What the consistency stages share besides the base: the points of the DDIM grid a step trains on
    (:meth:`grid_points`) and the prompt embeddings of a batch (precomputed ``encoder_hidden_states``, else the text
    encoder on ``input_ids``). Subclasses set ``self.parts`` (a :class:`models.factory.TeacherParts`) and
    ``self.grid`` (a :class:`models.consistency.DDIMGrid`)."""

    def grid_points(self, latents: torch.Tensor, gen: torch.Generator):
        """One consistency-distillation sample per row of ``latents``, drawn from ``gen`` in this order: a grid
        index n, then the noise; returns ``(index, t_{n+k}, t_n, noise, x_{t_{n+k}})``, the timesteps and tensors on
        ``latents``' device, the index on the CPU."""
        from models.consistency import add_noise

        index = self.grid.sample_index(latents.shape[0], gen)
        # The UNets take 1-D timesteps on the sample's device (diffusers moves only 0-d ones): a CPU tensor would
        # meet CUDA weights in the time embedding. The index stays on the CPU with the grid's tables.
        t_start = self.grid.start_timesteps(index).to(latents.device)
        t_prev = self.grid.prev_timesteps(index).to(latents.device)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        return index, t_start, t_prev, noise, add_noise(latents, noise, t_start, self.grid.alphas_cumprod)

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.parts.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return self.parts.text_encoder(ids.input_ids.to(self.parts.text_encoder.device))[0]

    @torch.no_grad()
    def _prompts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "encoder_hidden_states" in batch:
            return batch["encoder_hidden_states"].float()
        return self.parts.text_encoder(batch["input_ids"])[0].float()


class LinearProbeTask(Task):
    """A least-squares probe y = W x + b with an EMA copy: the smallest Task that exercises every part of the loop
    (DeepSpeed, data shards, EMA state in checkpoints, export). Used by the loop's own tests and benchmarks."""

    def __init__(self, dim: int = 8, ema_decay: float = 0.9) -> None:
        self.student = nn.Linear(dim, 1)
        self.follow(self.frozen_copy(self.student), [n for n, _ in self.student.named_parameters()], ema_decay)

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.student(batch["x"].float()).squeeze(-1)
        loss = (pred - batch["y"].float()).pow(2).mean()
        return loss, {"mse": float(loss.detach())}

    def export(self, out_dir: Path) -> dict:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.student.state_dict().items()},
                  str(out_dir / "probe.safetensors"))  # fmt: skip
        save_file({k: v.detach().contiguous() for k, v in self.target.state_dict().items()},
                  str(out_dir / "probe_ema.safetensors"))  # fmt: skip
        return {"files": ["probe.safetensors", "probe_ema.safetensors"]}
