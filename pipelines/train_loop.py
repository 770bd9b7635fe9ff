"""The one training loop every stage shares: a :class:`models.task.Task` under DeepSpeed ZeRO on Ray Train.

How a run goes:

1. The driver builds a ``TorchTrainer`` with ``ScalingConfig(num_workers, use_gpu)``, ``RunConfig(name,
   storage_path, FailureConfig(max_failures), CheckpointConfig(num_to_keep))`` and the training data: a latent
   cache's description, or a Ray Dataset.

   A latent cache (:class:`pipelines.rank_data.CacheShards`: its Parquet files in order and its tensor columns, what
   every stage with a cache trains on) is read by each worker for its own rank only (:mod:`pipelines.rank_data`):
   with ``N`` encoded rows and ``m = micro_batch_size``, rank ``r`` trains on the encoded rows ``[r·P, (r+1)·P)``,
   ``P = ((N // num_workers) // m) · m``, in order, and global batch *k* is micro-batch *k* of every rank. Each
   worker reads every file's footer and ``error`` column (to index the encoded rows) and the tensor columns of the
   row groups its range overlaps, nothing else: a pass costs a worker about ``1/num_workers`` of the cache (the
   ``shard_bytes`` metric, rank 0's planned bytes per pass; ``shard_bytes_read``, the bytes its reader fetched).
   Which rows a rank gets depends on the cache's rows alone, not on block layout, timing or a restart.

   A Ray Dataset (the pixels of stage 1 without a cache, tests) is read whole by every worker in its order
   (``preserve_order``) in global batches of ``micro_batch_size × num_workers`` rows, each worker training on its
   rank's slice of each (:func:`_rank_batches`): global batch *k* is rows ``[k·G, (k+1)·G)`` whatever the dataset's
   block layout. (Ray Train's own split, ``streaming_split``, hands blocks to workers as its buffer fills: which
   rows a rank gets can change between runs and between a run and its restart, and a resumed run would not train
   what an uninterrupted one did.) Either way a shard that fits ``replay_mb`` is read once (5.).
2. Each worker builds its Task (``make_task()``: a top-level, importable callable) with torch's global generator
   seeded by the run's seed alone, so that every rank builds the same Task: the same random initialisations and
   the same EMA targets (DeepSpeed broadcasts only the engine's parameters from rank 0; a target built from
   another seed would differ per rank for good). Then ``deepspeed.initialize``
   with the JSON that :func:`deepspeed_config` generates from :class:`TrainConfig` (ZeRO stage 2 by default, 3 and
   CPU optimizer offload available; AdamW with ``torch_adam`` so no fused kernel is JIT-built; linear warmup; gradient
   clipping; bf16 on GPUs, fp32 on CPUs). Ray Train has set up ``torch.distributed`` (gloo on CPU, NCCL on GPU) and
   DeepSpeed reuses it.
3. Per step: ``task.loss`` → ``engine.backward`` → ``engine.step`` → ``task.after_step`` (EMA). Rank 0 logs step,
   loss, lr and samples/s every ``log_every`` steps.
4. Every ``checkpoint_every`` steps and at the end, the :class:`~pipelines.checkpointer.Checkpointer` saves the
   engine's and the Task's state from every rank and reports it; Ray merges the ranks' files into one checkpoint
   under the run's storage path.
5. Resume: re-running with the same ``name`` and ``storage_path`` (Ray 2.60's Train V2 has no ``Trainer.restore``),
   or a worker failure within ``max_failures``, starts the workers from the latest checkpoint: engine state (read
   with ``torch.load(weights_only=True)``: :func:`models.safe_load.load_deepspeed_checkpoint`), step counter and
   the Task's extra state. The data (the same rows per rank every run: 1.) is read from its start again,
   skipping, pass after pass, as many micro-batches as the checkpointed steps consumed, so the
   step count is never inflated and training continues on the batches an uninterrupted run would see next.
   A shard whose first pass fits in ``replay_mb`` on every worker is kept in memory and replayed on later passes
   (:class:`_Replay`): the same micro-batches in the same order, without a Ray Data pass per epoch.
6. The final checkpoint also holds the deliverable: rank 0 calls ``task.export`` into its ``export/`` (under ZeRO-3
   the parameters are gathered first, by every rank), so the export reaches the run's storage (shared, or an object
   store, on a cluster) with the checkpoint; the driver copies it from the result's checkpoint to ``export_dir``.
   Re-running a finished run trains nothing and exports the same files again.
7. Every worker's Task is told the run's seed and its rank (``task.configure``) before training, so that Tasks
   draw their noise per (seed, rank, step) and a resumed run draws what an uninterrupted one would.
8. At the start of a run and after its first step, every rank's weight fingerprint (trainable and EMA target
   weights) is compared across ranks (:func:`replica_spread`); the spread is reported in the metrics
   (``replica_spread_start``, ``replica_spread_step``) and must be 0.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.checkpointer import EXPORT_DIR, Checkpointer
from pipelines.progress import RemoteProgress
from pipelines.rank_data import CacheShards, RankReader
from pipelines.train_config import TrainConfig

log = logging.getLogger(__name__)



def worker_device():
    """The training device of this Ray Train worker: its GPU when it has one, else the CPU (what a stage's
    ``make_task`` builds its Task on)."""
    import torch

    if torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def uses_bf16(cfg: TrainConfig) -> bool:
    """Whether the run trains in bf16."""
    if cfg.precision == "auto":
        return cfg.use_gpu
    return cfg.precision == "bf16"


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for ``cfg`` (passed explicitly to ``deepspeed.initialize``)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's fused Adam would be JIT-compiled on first use (88 s measured on CPU).
            "params": {
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "torch_adam": not cfg.offload_optimizer,
            },
        },  # fmt: skip
        "scheduler": {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0 if cfg.warmup_steps else cfg.lr,  # no warmup: the full lr from step 1
                "warmup_max_lr": cfg.lr,
                "warmup_num_steps": max(1, cfg.warmup_steps),
                "warmup_type": "linear",
            },
        },  # fmt: skip
        "bf16": {"enabled": uses_bf16(cfg)},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def optimizer_state_bytes(engine) -> int:
    """Bytes of optimizer moments this rank holds (AdamW's exp_avg and exp_avg_sq): all of them without ZeRO, this
    rank's partition under ZeRO-1/2/3."""
    import torch

    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return int(
        sum(v.numel() * v.element_size() for st in base.state.values() for v in st.values() if torch.is_tensor(v))
    )


def worker_logging() -> None:
    """Send this worker process's project log lines (rank 0's progress, resumes, errors) to its stderr at INFO.

    Ray forwards a worker's stderr to the job's driver, whose log a submitted job streams to the Prefect run; but a
    Ray worker process has no logging handler, so without this every INFO line (the progress) would be dropped."""
    logger = logging.getLogger("pipelines")
    if not any(getattr(h, "_alcm_worker", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._alcm_worker = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a handler on the root (if Ray adds one) would print each line twice


def _worker(config: dict) -> None:
    """One Ray Train worker: build the Task, wrap it in DeepSpeed, resume, train ``cfg.steps`` optimiser steps."""
    import torch

    worker_logging()
    cfg: TrainConfig = config["train"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(cfg.seed)  # every rank builds the same Task: the same random inits, the same EMA targets
    task = config["make_task"]()
    task.configure(seed=cfg.seed, rank=rank, world_size=world)
    torch.manual_seed(cfg.seed + rank)  # what torch's global generator gives while training differs per rank
    engine = _engine(task, cfg)
    checkpointer = Checkpointer(engine, task, zero3=cfg.zero_stage == 3)
    step = start = checkpointer.restore()
    if step >= cfg.steps:
        if rank == 0:
            log.info("the run already reached step %d; nothing to train", start)
        return
    shown = config.get("progress") if rank == 0 else None  # the driver's bar (pipelines.progress)
    if shown is not None:
        shown.resumed_at(start)
    replicas = {"replica_spread_start": replica_spread(task)}
    read, reader = _source(config, cfg, rank, world)
    batches = _MicroBatches(read, cfg, world, skip=step * cfg.grad_accum)
    progress = _Progress(cfg, rank)
    for batch in batches:
        loss, metrics = task.loss(batch, step)
        engine.backward(loss)
        engine.step()
        progress.samples(cfg.micro_batch_size * world)
        if not engine.is_gradient_accumulation_boundary():
            continue
        task.after_step(step)
        step += 1
        if step == start + 1:
            replicas["replica_spread_step"] = replica_spread(task)
        last = {"loss": float(loss.detach()), "resumed_from": start, "shard_reads": batches.reads, **replicas,
                **_io_metrics(reader), **{name: float(value) for name, value in metrics.items()}}  # fmt: skip
        progress.log(step, last["loss"], engine)
        if shown is not None:
            shown.at(step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpointer.save(step, {**last, "optimizer_state_bytes": optimizer_state_bytes(engine),
                                     "loss_history": list(progress.history)}, final=step == cfg.steps)  # fmt: skip
        if step >= cfg.steps:
            break


def _source(config: dict, cfg: TrainConfig, rank: int, world: int
            ) -> tuple[Callable[[], Iterator[dict]], RankReader | None]:  # fmt: skip
    """One pass over this rank's micro-batches (called once per pass), and the cache reader when there is one
    (1. of the module docstring)."""
    shards: CacheShards | None = config.get("shards")
    m = cfg.micro_batch_size
    if shards is not None:
        reader = RankReader(shards, rank=rank, world=world, micro_batch_size=m)
        if rank == 0:
            p = reader.plan
            log.info("reading encoded rows [%d, %d) of %d on each of %d ranks: %d micro-batches, %.2f MB per pass "
                     "(the whole cache: %.2f MB)", p.first, p.first + p.rows, reader.index.encoded, world,
                     p.micro_batches, p.bytes / 1e6, reader.index.whole_bytes / 1e6)  # fmt: skip
        return reader.batches, reader
    data = ray.train.get_dataset_shard("train")
    return (lambda: _rank_batches(data, m, rank, world)), None


def _io_metrics(reader: RankReader | None) -> dict:
    """``shard_bytes`` (this rank's planned bytes per pass) and ``shard_bytes_read`` (what its reader fetched so
    far, the index included), for a cache."""
    if reader is None:
        return {}
    return {"shard_bytes": reader.plan.bytes, "shard_bytes_read": reader.bytes_read}


def _engine(task, cfg: TrainConfig):
    """``deepspeed.initialize`` on the Task's student and trainable parameters, with :func:`deepspeed_config`."""
    from pipelines.ds_ops import use_prebuilt

    use_prebuilt()  # the environment's ops, built by `make install`, not a JIT build in this worker
    import deepspeed
    import torch

    if uses_bf16(cfg):
        task.student.to(torch.bfloat16)  # DeepSpeed's bf16 needs the model cast before initialize
    engine, _, _, _ = deepspeed.initialize(
        model=task.student, model_parameters=task.trainable_parameters(), config=deepspeed_config(cfg)
    )
    return engine


def replica_spread(task) -> float:
    """The largest difference, across ranks, of the Task's weight fingerprint (:meth:`models.task.Task.fingerprint`):
    0 when every rank holds the same trainable and target weights, as data-parallel training needs. Every rank must
    call it (it gathers); a nonzero spread is logged as an error."""
    import torch
    import torch.distributed as dist

    mine = task.fingerprint()
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    everyone = [torch.zeros_like(mine, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine.to(device))
    spread = float(torch.stack(everyone).std(dim=0, correction=0).max()) if len(everyone) > 1 else 0.0
    if spread and dist.get_rank() == 0:
        log.error("the ranks hold different weights (fingerprint spread %.3g): every rank must build the same Task",
                  spread)  # fmt: skip
    return spread


class _Progress:
    """Rank 0's line every ``log_every`` steps: step, loss, lr, samples/s; the same points kept as
    :attr:`history` (``[step, loss, lr]``), reported with each checkpoint as the ``loss_history`` metric (the
    registry logs it as the run's loss curve; a resumed run's history starts at its resume step)."""

    def __init__(self, cfg: TrainConfig, rank: int) -> None:
        self.cfg, self.rank = cfg, rank
        self.t0, self.seen = time.monotonic(), 0
        self.history: list[list[float]] = []

    def samples(self, n: int) -> None:
        self.seen += n

    def log(self, step: int, loss: float, engine) -> None:
        if self.rank == 0 and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
            rate = self.seen / max(1e-9, time.monotonic() - self.t0)
            self.history.append([step, loss, float(engine.get_lr()[0])])
            log.info("step %d/%d loss %.5f lr %.2e %.1f samples/s", step, self.cfg.steps, loss, engine.get_lr()[0],
                     rate)  # fmt: skip


class _MicroBatches:
    """This rank's micro-batches, pass after pass over the data (``read()``: one pass; 1. of the module docstring),
    the first ``skip`` of them skipped (the micro-batches the checkpointed steps consumed), a pass that fit in
    ``replay_mb`` replayed from memory (:class:`_Replay`). Raises when a pass has no full global batch."""

    def __init__(self, read: Callable[[], Iterator[dict]], cfg: TrainConfig, world: int, *, skip: int) -> None:
        self.read, self.cfg, self.world, self.skip = read, cfg, world, skip
        self.replay = _Replay(cfg.replay_mb)

    @property
    def reads(self) -> int:
        """Passes read from the data (reported as the ``shard_reads`` metric)."""
        return self.replay.reads

    def __iter__(self):
        m = self.cfg.micro_batch_size
        while True:
            consumed = 0
            for batch in self.replay.batches(self.read):
                consumed += 1
                if self.skip > 0:
                    self.skip -= 1
                    continue
                yield batch
            if consumed == 0:
                raise RuntimeError(f"the training data has no full global batch of {m * self.world} rows "
                                   f"(micro_batch_size {m} × {self.world} workers)")  # fmt: skip
            self.replay.end_of_pass()


def _rank_batches(data, micro_batch_size: int, rank: int, world: int):
    """Rank ``rank``'s micro-batches of ``data`` (a Ray Data iterator over the whole dataset, in its order): rows
    ``[k·G + rank·m, k·G + (rank+1)·m)`` of global batch ``k`` (``G = m × world``); a last, partial global batch is
    dropped, so every rank yields the same number of micro-batches."""
    lo, hi = rank * micro_batch_size, (rank + 1) * micro_batch_size
    for batch in data.iter_torch_batches(batch_size=micro_batch_size * world, drop_last=True):
        yield {k: v[lo:hi] for k, v in batch.items()}


class _Replay:
    """Micro-batches of a worker's first full pass over its shard, replayed on later passes when every worker's
    pass fit in ``limit_mb`` (decided together: every worker replays, or every worker reads again, so the ranks
    stay in step). Batches are copied in and out, so a Task may modify its batch."""

    def __init__(self, limit_mb: float) -> None:
        self.limit = limit_mb * 2**20
        self.kept: list[dict] | None = [] if limit_mb > 0 else None
        self.size = 0
        self.replaying = False
        self.reads = 0
        """Passes read from the shard (reported as the ``shard_reads`` metric)."""

    @staticmethod
    def _copy(batch: dict) -> dict:
        return {k: v.clone() if hasattr(v, "clone") else (list(v) if isinstance(v, list) else v)
                for k, v in batch.items()}  # fmt: skip

    def batches(self, read: Callable[[], Any]):
        if self.replaying:
            for batch in self.kept:
                yield self._copy(batch)
            return
        self.reads += 1
        for batch in read():
            if self.kept is not None:
                self.size += sum(v.numel() * v.element_size() for v in batch.values() if hasattr(v, "numel"))
                if self.size <= self.limit:
                    self.kept.append(self._copy(batch))
                else:
                    self.kept = None
            yield batch

    def end_of_pass(self) -> None:
        """Called after each complete pass: after the first, decide with the other workers whether to replay."""
        if self.replaying or self.kept is None and self.limit == 0:
            return
        import torch
        import torch.distributed as dist

        fits = torch.tensor([1 if self.kept is not None else 0])
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":
                fits = fits.cuda()
            dist.all_reduce(fits, op=dist.ReduceOp.MIN)
        if int(fits) == 1:
            self.replaying = True
            log.info("replaying the shard's %d micro-batches (%.1f MB) from memory", len(self.kept), self.size / 2**20)
        else:
            self.kept, self.limit = None, 0


@dataclass(frozen=True)
class TrainResult:
    """What a run left: its latest checkpoint, last metrics and the export directory."""

    checkpoint_path: str | None
    metrics: dict
    export_dir: str | None


def train(
    make_task: Callable[[], Any],
    dataset: ray.data.Dataset | CacheShards,
    cfg: TrainConfig,
    *,
    export_dir: Path | None = None,
) -> TrainResult:
    """Run ``make_task``'s Task on ``dataset`` (a latent cache's :class:`~pipelines.rank_data.CacheShards`, or a Ray
    Dataset) under the shared loop (see the module docstring)."""
    storage = cfg.storage_path if "://" in cfg.storage_path else str(Path(cfg.storage_path).resolve())
    # The same rows per rank in the same order every run, restarts included (Ray Train otherwise takes the driver's
    # global Ray Data options, and its split assigns blocks as they arrive): not split, each rank slices (1. above).
    # That is what makes the skip-on-resume land on the micro-batches an uninterrupted run would train next.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    shards = dataset if isinstance(dataset, CacheShards) else None
    with RemoteProgress(f"train {cfg.name}", cfg.steps, "steps") as shown:  # rank 0 reports its steps
        trainer = TorchTrainer(
            train_loop_per_worker=_worker,
            dataset_config=ray.train.DataConfig(datasets_to_split=[], execution_options=ingest),
            train_loop_config={"train": cfg, "make_task": make_task, "progress": shown.reporter("rank0"),
                               "shards": shards},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **cfg.resources},
            ),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            ),
            datasets={"train": dataset} if shards is None else None,
        )
        result = trainer.fit()
    ckpt = result.checkpoint
    if export_dir is not None:
        if ckpt is None:
            raise RuntimeError(f"run {cfg.name!r} ended without a checkpoint: nothing to export")
        export_dir = Path(export_dir)
        with ckpt.as_directory() as d:
            source = Path(d, EXPORT_DIR)
            if not source.is_dir():
                raise RuntimeError(
                    f"run {cfg.name!r}: its latest checkpoint ({ckpt.path}) has no {EXPORT_DIR}/; it was not the "
                    f"final one (train.steps={cfg.steps})"
                )
            shutil.copytree(source, export_dir, dirs_exist_ok=True)
    return TrainResult(
        checkpoint_path=ckpt.path if ckpt is not None else None,
        metrics=dict(result.metrics or {}),
        export_dir=str(export_dir) if export_dir else None,
    )
