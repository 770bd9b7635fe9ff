"""Opt-in: ``bench/gpu_smoke.py`` on a CUDA machine (``pytest tests/gpu``); skipped where there is none."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_stage_steps_on_the_gpu_at_sd15_size():
    from bench.gpu_smoke import smoke

    for stage in ("distill_image", "distill_video", "adapt_control", "adapt_image_to_video"):
        row = smoke(stage, steps=2, micro_batch=1)
        assert row["samples_per_s"] > 0 and row["peak_memory_gb"] > 0, row
        torch.cuda.empty_cache()
