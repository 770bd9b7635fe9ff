"""Running the project's real models and Tasks on a fake device: shapes, dtypes and devices without a GPU or memory.

torch's ``FakeTensorMode`` creates tensors that carry a shape, a dtype and a device (``cuda`` included) but no data;
every operator applies its shape, dtype and device rules, and a CPU tensor meeting a CUDA one raises
``FakeTensorDeviceMismatchError`` as it would on a GPU. :func:`fake_device` enters such a mode with ``device`` as
the default device, so models built inside it are built there (not moved there).

What this stack (torch 2.14) needs, measured here and written down once:

- ``nn.Module.to`` swaps fake parameters in place (``torch.utils.swap_tensors``), which refuses tensors that
  fake-tensor converters hold weak references to (``copy.deepcopy`` of a PEFT model creates such references), and
  forcing the swap corrupted the heap. Inside :func:`fake_device` a module conversion puts new Parameter objects in
  place of the converted ones instead (what torch's ``overwrite_module_params_on_conversion`` does for real
  tensors); modules hold their parameters by name, so nothing else changes.
- The autograd engine asks the CUDA driver for a primary context when a backward pass involves a ``cuda`` tensor,
  which fails without a GPU. So the device rules are checked on everything but ``backward`` (construction, the
  loss's forward passes, the EMA update, sampling) on fake ``cuda``; the backward pass, the optimizer step and the
  memory and FLOP measurements run the same code on fake ``cpu`` tensors (sizes do not depend on the device).
- A scheduler looks its timesteps up by value (``nonzero``, ``prev_t >= 0``), which fake tensors do not have:
  :func:`fake_safe_scheduler` gives those lookups the integer timesteps the scheduler computed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


@contextlib.contextmanager
def fake_device(device: str = "cuda") -> Iterator[FakeTensorMode]:
    """A ``FakeTensorMode`` in which ``on_device()`` builds on ``device`` (see the module docstring). Only what is
    built under ``on_device()`` lands there, as a worker loads its networks onto its GPU; everything else keeps
    torch's defaults (the CPU), as on a real worker, so a CPU tensor meeting a CUDA one raises. Real tensors used
    inside it (constants such as ᾱ_t) are converted on use."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode.cache_enabled = False  # the dispatch cache is shared by every mode: a second mode crashed in it
    swap = torch.nn.Module._apply
    torch.nn.Module._apply = _overwrite_apply
    try:
        with mode:
            mode.on_device = lambda: torch.device(device)  # type: ignore[attr-defined]
            yield mode
    finally:
        torch.nn.Module._apply = swap


def _overwrite_apply(module: torch.nn.Module, fn: Any, recurse: bool = True) -> torch.nn.Module:
    """``nn.Module._apply`` (what ``.to``, ``.float`` … call) that puts new Parameter objects in place of converted
    ones instead of swapping tensors (see the module docstring)."""
    if recurse:
        for child in module.children():
            child._apply(fn)
    for key, param in module._parameters.items():
        if param is None:
            continue
        with torch.no_grad():
            applied = fn(param)
        if applied is not param:
            module._parameters[key] = torch.nn.Parameter(applied, requires_grad=param.requires_grad)
    for key, buffer in module._buffers.items():
        if buffer is not None:
            module._buffers[key] = fn(buffer)
    return module


def fake_safe_scheduler(scheduler: Any) -> Any:
    """``scheduler`` (a diffusers scheduler) made to step on fake tensors: its schedule lookups (which timestep comes
    next, ᾱ at it, the boundary scalings) use the integer timesteps it computed, because fake tensors carry no values
    to compare; every tensor operation on the sample is its own. Sampling starts at index 0, as text-to-video does."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    set_timesteps, step = scheduler.set_timesteps, scheduler.step
    values: list[int] = []

    def fake_set_timesteps(*args: Any, **kwargs: Any) -> Any:
        with unset_fake_temporarily():  # the same call on real tensors, for the integer values
            set_timesteps(*args, **{**kwargs, "device": "cpu"})
            values[:] = [int(t) for t in scheduler.timesteps.tolist()]
        out = set_timesteps(*args, **kwargs)
        scheduler.set_begin_index(0)
        return out

    def fake_step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        index = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
        tensor, scheduler.timesteps = scheduler.timesteps, values
        try:
            return step(model_output, values[index], sample, *args, **kwargs)
        finally:
            scheduler.timesteps = tensor

    scheduler.set_timesteps, scheduler.step = fake_set_timesteps, fake_step
    return scheduler


def modules_of(obj: Any) -> list[torch.nn.Module]:
    """The distinct ``nn.Module`` attributes of ``obj`` (a Task and its teacher parts)."""
    found: dict[int, torch.nn.Module] = {}
    for value in list(vars(obj).values()) + list(vars(getattr(obj, "parts", object())).values()):
        if isinstance(value, torch.nn.Module):
            found.setdefault(id(value), value)
    return list(found.values())


def parameter_counts(task: Any) -> tuple[int, int]:
    """(trainable, total) parameters of a Task: every distinct parameter of its networks, counted once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules_of(task):
        for p in module.parameters():
            seen.setdefault(id(p), p)
    trainable = sum(p.numel() for p in task.trainable_parameters())
    return trainable, sum(p.numel() for p in seen.values())


class PeakMemory(TorchDispatchMode):
    """Bytes of live tensor storage, and their peak, while it is active: every storage an operator returns counts
    until Python frees it; ``track`` adds tensors that exist already (weights, inputs). torch's ``MemTracker`` does
    this with per-module snapshots, which took minutes per step here and needs every parameter to take gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def track(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = nbytes = storage.nbytes()
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self._add(value)
        return out
