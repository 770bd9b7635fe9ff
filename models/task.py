"""The Task contract: what one training stage is, so that one shared loop (``pipelines.train_loop``) runs them all.

A Task holds the student (the module DeepSpeed wraps and whose trainable parameters it optimises), any frozen
teacher, the loss, and any state that follows the student (an EMA target). The loop calls, per step::

    loss, metrics = task.loss(batch, step)     # forward through student (and teacher / target), no backward
    engine.backward(loss); engine.step()       # DeepSpeed
    task.after_step(step)                      # e.g. EMA update of the target from the student

and checkpoints ``task.extra_state()`` (target weights, anything not inside the engine) beside the engine state,
restoring it with ``task.load_extra_state``. ``export(out_dir)`` writes the deliverable (e.g. a LoRA) at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class Task:
    """Base class of a training stage. Subclasses set ``self.student`` and implement :meth:`loss`."""

    student: nn.Module
    """The module DeepSpeed wraps; only its parameters with ``requires_grad`` are optimised."""

    def configure(self, *, seed: int, rank: int, world_size: int) -> None:
        """Called by the loop on every worker before training: the run's seed, this worker's rank and the world size
        (Tasks that draw noise seed it from these and the step, so ranks differ and resumed runs repeat)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one micro-batch and metrics to log."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (EMA targets update here)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """State outside the DeepSpeed engine that a checkpoint must keep (tensors only)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`extra_state`."""

    def export(self, out_dir: Path) -> dict:
        """Write the stage's deliverable under ``out_dir``; return a description for the manifest."""
        return {}


class ConsistencyTaskBase(Task):
    """What the consistency-distillation stages share: per-(seed, rank, step, micro-batch) draws, so ranks draw
    differently and a resumed run draws exactly what an uninterrupted one would; the prompt embeddings of a batch
    (precomputed ``encoder_hidden_states``, else the text encoder on ``input_ids``). Subclasses set ``self.parts``
    (a :class:`models.factory.TeacherParts`) and call :meth:`_init_draws`."""

    def _init_draws(self, seed: int, salt: tuple[int, ...] = ()) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.seed, self.rank, self._salt = seed, 0, salt
        self._micro = (-1, 0)  # (step, micro-batch index within it)

    def configure(self, *, seed: int, rank: int, world_size: int) -> None:
        self.seed, self.rank = seed, rank

    def _reseed(self, step: int) -> None:
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        entropy = [self.seed, self.rank, step, micro, *self._salt]
        self.generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

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
    """A least-squares probe y = W x + b with an EMA copy of W: the smallest Task that exercises every part of the
    loop (DeepSpeed, data shards, EMA state in checkpoints, export). Used by the loop's own tests and benchmarks."""

    def __init__(self, dim: int = 8, ema_decay: float = 0.9, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.student = nn.Linear(dim, 1)
        self.ema_decay = ema_decay
        self.ema = {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pred = self.student(batch["x"].float()).squeeze(-1)
        loss = (pred - batch["y"].float()).pow(2).mean()
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        for k, v in self.student.state_dict().items():
            self.ema[k].mul_(self.ema_decay).add_(v.detach().float(), alpha=1 - self.ema_decay)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"ema.{k}": v.clone() for k, v in self.ema.items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.ema = {k.removeprefix("ema."): v.clone() for k, v in state.items() if k.startswith("ema.")}

    def export(self, out_dir: Path) -> dict:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in self.student.state_dict().items()}
        save_file(weights, str(out_dir / "probe.safetensors"))
        save_file({k: v.contiguous() for k, v in self.ema.items()}, str(out_dir / "probe_ema.safetensors"))
        return {"files": ["probe.safetensors", "probe_ema.safetensors"]}
