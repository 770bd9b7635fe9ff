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

Every rank writes into a fresh temporary directory and calls ``ray.train.report(metrics, checkpoint=...)``; Ray
merges them. Resume reads the latest checkpoint Ray hands over (a re-run with the same run name and storage, or a
restart after a worker failure): the engine state through ``torch.load(weights_only=True)``
(:func:`models.safe_load.load_deepspeed_checkpoint`: no arbitrary unpickling), then the Task's state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path

import ray.train

log = logging.getLogger(__name__)

TASK_STATE = "task_state.safetensors"
CKPT_TAG = "ckpt"
EXPORT_DIR = "export"


class Checkpointer:
    """Save and resume one worker's engine and Task (see the module docstring)."""

    def __init__(self, engine, task, *, zero3: bool = False) -> None:
        self.engine, self.task, self.zero3 = engine, task, zero3

    def restore(self) -> int:
        """Load the latest checkpoint if there is one; return the step to continue from (0 without one)."""
        from safetensors.torch import load_file

        from models.safe_load import load_deepspeed_checkpoint

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return 0
        with ckpt.as_directory() as d:
            client = load_deepspeed_checkpoint(self.engine, d, tag=CKPT_TAG)  # weights_only: no arbitrary unpickling
            state_file = os.path.join(d, TASK_STATE)
            if os.path.exists(state_file):
                self.task.load_extra_state(load_file(state_file))
        step = int(client.get("step", 0))
        log.info("resumed from checkpoint at step %d", step)
        return step

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
            ray.train.report({**metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
