"""DeepSpeed's JIT-compiled ops, built once per Python environment.

DeepSpeed compiles its CPU shared-memory communication op on first use (25–70 s on 2 cores) into
``TORCH_EXTENSIONS_DIR`` (by default one folder under ``~/.cache`` for every environment of the user, so two
checkouts with different include paths rebuild it over each other's). ``make install`` runs :func:`build` once: the
op goes to ``<sys.prefix>/torch_extensions``, which :func:`use_prebuilt` points every later training process of
that environment at (unless ``TORCH_EXTENSIONS_DIR`` is set).

    python -m pipelines.ds_ops      # build (or check) the ops of this environment
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV_KEY = "TORCH_EXTENSIONS_DIR"
OPS = ("ShareMemCommBuilder",)
"""The op builders a CPU training run loads (``deepspeed.comm`` loads the shared-memory op at init)."""


def extensions_dir() -> Path:
    """This environment's folder of prebuilt ops."""
    return Path(sys.prefix) / "torch_extensions"


def use_prebuilt() -> str | None:
    """Point this process at the environment's prebuilt ops where they exist and nothing else was chosen; return the
    folder in use (None: DeepSpeed's default)."""
    if ENV_KEY not in os.environ and extensions_dir().is_dir():
        os.environ[ENV_KEY] = str(extensions_dir())
    return os.environ.get(ENV_KEY)


def build() -> list[str]:
    """Build (or load, if current) every op of :data:`OPS` that this machine's accelerator has, into
    :func:`extensions_dir`; return the names built or loaded."""
    extensions_dir().mkdir(parents=True, exist_ok=True)
    os.environ[ENV_KEY] = str(extensions_dir())
    from deepspeed.accelerator import get_accelerator

    done = []
    for name in OPS:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible():
            continue
        builder.load(verbose=False)
        done.append(builder.absolute_name())
    return done


if __name__ == "__main__":
    t = time.monotonic()
    names = build()
    print(f"DeepSpeed ops in {extensions_dir()}: {', '.join(names) or 'none needed'} ({time.monotonic() - t:.0f} s)")
