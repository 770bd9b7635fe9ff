"""Configuration of the shared training loop (:mod:`pipelines.train_loop`); imports neither torch nor Ray, so that
``pipelines.config`` can hold it."""

from __future__ import annotations

from dataclasses import dataclass, field

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The shared loop: scale, optimisation, DeepSpeed, logging, checkpoints."""

    name: str = "run"
    """Run name under ``storage_path``; re-running with the same name resumes from its latest checkpoint."""
    storage_path: str = "data/runs"
    """Where Ray Train keeps checkpoints: a local directory or an object-store URI (``s3://bucket/prefix``)."""
    num_workers: int = 2
    """Ray Train workers (DeepSpeed ranks)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = 1.0
    """CPUs reserved by each worker."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker also reserves, e.g. ``{gpu_node: 0.01}`` to keep CPU training on the nodes
    of the cluster's GPU group (the KubeRay groups declare ``gpu_node`` / ``cpu_node``)."""
    steps: int = 100
    """Optimiser steps."""
    micro_batch_size: int = 4
    """Samples per worker per forward (DeepSpeed ``train_micro_batch_size_per_gpu``)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to ``lr``."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-Offload; builds DeepSpeed's CPU Adam on first use)."""
    precision: str = "auto"
    """``auto`` (bf16 on GPUs, fp32 on CPUs), ``fp32`` or ``bf16``."""
    log_every: int = 10
    """Log a line every N steps (rank 0)."""
    checkpoint_every: int = 100
    """Checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept by Ray Train (the newest)."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from (restarting from the latest checkpoint)."""
    seed: int = 0
    """Seed of each worker's torch RNG (offset by rank)."""
    replay_mb: float = 256.0
    """A worker whose whole data shard fits in this many MB keeps the first pass's micro-batches and replays them
    on later passes instead of reading the shard again (0 = always read). Same batches, same order; it saves the
    Ray Data pass set-up (1–5 s per pass) that dominates training on small datasets."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "steps", "micro_batch_size", "grad_accum", "log_every", "checkpoint_every",
                     "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 1")
        # seed: the Tasks draw noise through numpy SeedSequence([seed, rank, step, ...]), which rejects negatives.
        for name in ("warmup_steps", "max_failures", "seed", "weight_decay", "grad_clip", "replay_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be ≥ 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker!r}: must be > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage!r}: choose 0, 1, 2 or 3")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if any(v < 0 for v in self.resources.values()) or {"CPU", "GPU"} & set(self.resources):
            raise ValueError(f"resources={self.resources!r}: custom resources ≥ 0 only (CPU and GPU have their keys)")
