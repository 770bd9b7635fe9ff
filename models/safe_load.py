"""Loading pickled checkpoints without unpickling arbitrary objects.

Weights in this project are safetensors. The one pickled format it reads back is DeepSpeed's own checkpoint
(``engine.save_checkpoint`` writes ``torch.save`` files), when a training run resumes. DeepSpeed 0.19.8 loads
those with ``torch.load(..., weights_only=False)`` (``TorchCheckpointEngine.load``): a checkpoint directory that
someone else could write (a shared run storage, an object store) would run whatever code its pickles name.
:func:`load_deepspeed_checkpoint` resumes through :class:`WeightsOnlyCheckpointEngine` instead, which loads every
file with ``torch.load(weights_only=True)`` and allows, besides tensors and plain containers, only the DeepSpeed
types listed in :data:`DEEPSPEED_GLOBALS`. Anything else is refused with :class:`UnsafePickleError`, naming the
file and the global it would have imported, before that global is ever called.

Which DeepSpeed types, and why. Found by saving a tiny engine's checkpoint with the loop's own DeepSpeed config
(AdamW, WarmupLR, client state ``{"step": n}``) under ZeRO 0, 1, 2 and 3 in fp32 and bf16, and ZeRO 2 and 3 with
CPU optimizer offload (one process, CPU), then loading each file with ``weights_only=True``; the model-states files
need nothing beyond tensors and plain containers, the optimizer-states files need:

- ``deepspeed.runtime.fp16.loss_scaler.LossScaler``: the optimizer state's ``loss_scaler`` (ZeRO 1, 2, 3; bf16 and
  fp32 use the static scaler). Rebuilt as a bare instance plus its attribute dict (``cur_scale``, ...).
- ``deepspeed.runtime.zero.config.ZeroStageEnum``: the optimizer state's ``zero_stage`` (an int enum).
- ``deepspeed.utils.tensor_fragment.fragment_address``: ZeRO-1/2's ``param_slice_mappings`` (a dataclass of two
  ints per parameter).

Building any of them from a pickle, even with arguments a hostile file chooses, only sets attributes (``LossScaler``
and the dataclass) or looks up an enum member, so allowing them keeps the guarantee. fp16's ``DynamicLossScaler``
is not allowed: no profile trains in fp16. Checked on CPU only: a type a GPU run added would be refused, by name,
never loaded unchecked.

Weights files are read through the same module so that a refusal always names the file: :func:`load_weights_only`
for the ``.pt``/``.pth``/``.bin`` files the scorers accept, :func:`load_safetensors` for safetensors. A pickle given a
``.safetensors`` name (or any file that is not safetensors) never reaches an unpickler; safetensors rejects its header,
and :func:`not_safetensors` turns that into a ``ValueError`` naming the file.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

log = logging.getLogger(__name__)

DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""The non-tensor types a DeepSpeed checkpoint of this project holds (see the module docstring)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A file that only full unpickling (which can run arbitrary code) could load: refused."""


def _resolve(qualified: str) -> Any:
    import importlib

    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_weights_only(path: str | Path, *, allowed: tuple[str, ...] = (), map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, also allowing the types named in ``allowed`` (``module.Name``).

    Raises :class:`UnsafePickleError` naming the file and the refused global when the file needs anything else;
    torch's own advice in that error (re-run with ``weights_only=False``) is what must not happen, so it is dropped.
    """
    try:
        with torch.serialization.safe_globals([_resolve(name) for name in allowed]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        needs = f"the global {found.group(1)}" if found else str(exc).strip().splitlines()[-1]
        raise UnsafePickleError(
            f"{path}: refused to load: it needs {needs}, which is neither a tensor nor an allowed type, and "
            f"unpickling it could run arbitrary code (loading uses torch.load(weights_only=True); allowed: "
            f"{', '.join(allowed) or 'tensors and plain containers only'})"
        ) from None


def not_safetensors(path: str | Path, exc: Exception) -> ValueError:
    """The error for a weights file that safetensors cannot read (``exc``, its own error): it names the file and
    says it was refused rather than unpickled. Raise it ``from exc``."""
    return ValueError(
        f"{path}: not a readable safetensors file ({exc}); refused: weights named .safetensors are only ever read as "
        "safetensors, never unpickled"
    )


def load_safetensors(path: str | Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)``; a file that is not safetensors (a pickle given that name, a truncated
    file) raises :func:`not_safetensors`'s ``ValueError`` naming it."""
    try:
        return safetensors.torch.load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise not_safetensors(path, exc) from exc


class WeightsOnlyCheckpointEngine:
    """A DeepSpeed checkpoint engine whose ``load`` is :func:`load_weights_only` with :data:`DEEPSPEED_GLOBALS`;
    everything else (``save``, ``commit``, ...) is the engine DeepSpeed configured, which this one wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, allowed=DEEPSPEED_GLOBALS, map_location=map_location)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inner, name)


def load_deepspeed_checkpoint(engine: Any, load_dir: str | Path, *, tag: str) -> dict:
    """Load the checkpoint ``tag`` under ``load_dir`` into a DeepSpeed ``engine`` (model, optimizer, scheduler)
    through :class:`WeightsOnlyCheckpointEngine`; return its client state. Raises if there is no such checkpoint
    (DeepSpeed itself fails on a bare assertion) or a file holds anything but tensors and allowed types."""
    checkpoint = Path(load_dir) / tag
    if not checkpoint.is_dir() or not any(checkpoint.glob("*.pt")):
        raise FileNotFoundError(f"DeepSpeed checkpoint {checkpoint}: no checkpoint files (*.pt) to load")
    if not isinstance(engine.checkpoint_engine, WeightsOnlyCheckpointEngine):
        engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine.checkpoint_engine)
    load_path, client_state = engine.load_checkpoint(str(load_dir), tag=tag)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed checkpoint {checkpoint}: DeepSpeed loaded nothing")
    return client_state or {}
