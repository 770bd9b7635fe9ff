"""Save and resume for the shared training loop: one :class:`Checkpointer` per worker, beside the loop.

A checkpoint is what Ray Train keeps under the run's storage path (``checkpoint_NNNNNN/``), merged from every rank's
files:

- ``ckpt/``: DeepSpeed's engine state (module, optimizer and its ZeRO partitions, scheduler), written by
  ``engine.save_checkpoint`` on every rank with the step in its client state;
- ``task_state.safetensors``: the Task's own state outside the engine (its EMA target and update count,
  :meth:`models.task.Task.extra_state`), written by rank 0;
- ``step.json``: the step, for people;
- ``export/`` in the final checkpoint only: the Task's deliverable (:meth:`models.task.Task.export`) with its
  ``export.json`` description, so the deliverable reaches the run's storage (shared, or an object store, on a
  cluster) with the checkpoint. Under ZeRO-3 every rank takes part in gathering the parameters first.

- ``digests/rank-NNNNN.json``: the sha256 of every file that rank wrote (written last, by each rank).

Every rank writes into a fresh temporary directory and calls ``ray.train.report(metrics, checkpoint=...)``; Ray
merges them. Resume reads the latest checkpoint Ray hands over (a re-run with the same run name and storage, or a
restart after a worker failure): its files are checked against its digests first, and a checkpoint with a missing
or changed file is passed over for the one before it (the run keeps ``train.keep_checkpoints``), with a warning
naming the file; if none verifies the run fails naming each. Then the engine state through
``torch.load(weights_only=True)`` (:func:`models.safe_load.load_deepspeed_checkpoint`: no arbitrary unpickling), then
the Task's state. A checkpoint without digests (written before they were) is used as it is.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
from contextlib import nullcontext
from pathlib import Path

import ray.train

from contracts.digests import sha256_file

log = logging.getLogger(__name__)

TASK_STATE = "task_state.safetensors"
CKPT_TAG = "ckpt"
EXPORT_DIR = "export"
DIGESTS = "digests"


class Checkpointer:
    """Save and resume one worker's engine and Task (see the module docstring)."""

    def __init__(self, engine, task, *, zero3: bool = False) -> None:
        self.engine, self.task, self.zero3 = engine, task, zero3

    def restore(self) -> int:
        """Load the latest checkpoint that verifies, if there is one; return the step to continue from (0 without
        one)."""
        from safetensors.torch import load_file

        from models.safe_load import load_deepspeed_checkpoint

        latest = ray.train.get_checkpoint()
        if latest is None:
            return 0
        problems = []
        for ckpt in _newest_first(latest):
            with ckpt.as_directory() as d:
                problem = checkpoint_problem(d)
                if problem:
                    log.warning("checkpoint %s is not used: %s; trying the one before it", ckpt.path, problem)
                    problems.append(problem)
                    continue
                client = load_deepspeed_checkpoint(self.engine, d, tag=CKPT_TAG)  # weights_only: no unpickling
                state_file = os.path.join(d, TASK_STATE)
                if os.path.exists(state_file):
                    self.task.load_extra_state(load_file(state_file))
            step = int(client.get("step", 0))
            log.info("resumed from checkpoint %s at step %d", ckpt.path, step)
            return step
        raise RuntimeError(f"no checkpoint of this run verifies against its digests: {'; '.join(problems)}")

    def save(self, step: int, metrics: dict, *, final: bool = False) -> None:
        """Checkpoint every rank at ``step`` and report it with ``metrics``; ``final`` adds the Task's export."""
        import deepspeed
        from safetensors.torch import save_file

        rank = ray.train.get_context().get_world_rank()
        with tempfile.TemporaryDirectory(prefix="alcm-ckpt-") as tmp:
            self.engine.save_checkpoint(tmp, tag=CKPT_TAG, client_state={"step": step})
            if rank == 0:
                state = {k: v.detach().cpu().contiguous() for k, v in self.task.extra_state().items()}
                save_file(state, os.path.join(tmp, TASK_STATE))
                Path(tmp, "step.json").write_text(json.dumps({"step": step}))
            if final:
                params = list(self.task.student.parameters())
                gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero3 else nullcontext()
                with gather:
                    if rank == 0:
                        description = self.task.export(Path(tmp, EXPORT_DIR))
                        Path(tmp, EXPORT_DIR, "export.json").write_text(json.dumps(description or {}, indent=2))
            _write_digests(Path(tmp), rank)
            ray.train.report({**metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _write_digests(tmp: Path, rank: int) -> None:
    """Record the sha256 of every file this rank wrote into ``tmp`` (``digests/rank-NNNNN.json``)."""
    files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / DIGESTS).mkdir(exist_ok=True)
    (tmp / DIGESTS / f"rank-{rank:05d}.json").write_text(json.dumps(files, indent=1, sort_keys=True))


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why a checkpoint directory may not be resumed from: a file a rank's digests list that is missing or whose
    sha256 differs; None when every listed file verifies (or the checkpoint records no digests)."""
    for listing in sorted(Path(directory, DIGESTS).glob("rank-*.json")):
        for rel, expected in json.loads(listing.read_text()).items():
            path = Path(directory, rel)
            if not path.is_file():
                return f"{rel} is missing ({DIGESTS}/{listing.name} lists it)"
            actual = sha256_file(path)
            if actual != expected:
                return f"{rel}: sha256:{actual} does not match sha256:{expected} in {DIGESTS}/{listing.name}"
    return None


def _newest_first(latest: ray.train.Checkpoint):
    """``latest``, then the run's other checkpoints (its sibling ``checkpoint_*`` directories), newest first."""
    import pyarrow.fs

    yield latest
    parent = posixpath.dirname(latest.path.rstrip("/"))
    infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    older = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and posixpath.basename(i.path).startswith("checkpoint_") and i.path != latest.path),
                   reverse=True)  # fmt: skip
    for path in older:
        yield ray.train.Checkpoint(path=path, filesystem=latest.filesystem)
