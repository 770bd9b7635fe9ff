"""The toy zoo's shared learning-rate schedule: bit-identical to the formulas each zoo part used before it was shared,
so retraining a committed part from its seed still reproduces it."""

from __future__ import annotations

import math

import pytest

from toyworld.zoo_common import warmup_cosine_lr


# The formulas as the zoo parts wrote them before they shared `warmup_cosine_lr`, kept verbatim as the reference.
def scorers_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def teachers_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def captioner_lr(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# (total, warmup, peak) of each call site's default run, and steps across warm-up, its end and the decay
SCHEDULES = {
    "scorers clip": (700, 35, 2e-3),
    "scorers aesthetic": (600, 10, 1e-3),
    "scorers watermark": (400, 20, 2e-3),
    "image teacher vae": (1500, 200, 1e-3),
    "image teacher unet": (5000, 200, 5e-4),
    "motion teacher": (2000, 100, 3e-4),
    "style teacher": (800, 20, 3e-4),
    "captioner": (4000, 100, 1e-3),
}
STEPS = (0, 1, 2, 6, 9, 19, 33, 34, 35, 99, 100, 101, 199, 200, 201, 250, 399, 599, 699, 799, 1499, 1999, 3999, 4999)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_shared_schedule_reproduces_every_old_formula_bit_for_bit(name):
    total, warmup, peak = SCHEDULES[name]
    for step in (s for s in STEPS if s < total):
        if name.startswith("scorers"):
            old, new = peak * scorers_factor(step, total, warmup), warmup_cosine_lr(step, total, warmup, peak)
        elif name == "captioner":
            old = captioner_lr(step, total, warmup, peak)
            new = warmup_cosine_lr(step, total, warmup, peak, peak_first=True)
        else:
            old = peak * teachers_factor(step, total, warmup)
            new = warmup_cosine_lr(step, total, warmup, peak, pi_first=True)
        assert new == old, f"{name} step {step}: {new!r} != {old!r}"


def test_style_teachers_zero_warmup_starts_on_the_cosine():
    assert warmup_cosine_lr(0, 800, 0, 3e-4, pi_first=True) == 3e-4 * teachers_factor(0, 800, 0) == 3e-4


def test_schedule_warms_up_linearly_to_peak_then_decays_towards_zero():
    lrs = [warmup_cosine_lr(step, 100, 10, 2.0) for step in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == 2.0 and lrs[10] == 2.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] == pytest.approx(0.0, abs=1e-3)


def test_the_rounding_flags_change_only_the_last_bits():
    """Why the flags exist: each order gives a few different learning rates, one ulp or so apart."""
    total, warmup, peak = SCHEDULES["motion teacher"]
    plain = [warmup_cosine_lr(s, total, warmup, peak) for s in range(total)]
    pi_first = [warmup_cosine_lr(s, total, warmup, peak, pi_first=True) for s in range(total)]
    assert plain != pi_first and plain == pytest.approx(pi_first, rel=1e-14)
    total, warmup, peak = SCHEDULES["captioner"]
    plain = [warmup_cosine_lr(s, total, warmup, peak) for s in range(warmup)]
    peak_first = [warmup_cosine_lr(s, total, warmup, peak, peak_first=True) for s in range(warmup)]
    assert plain != peak_first and plain == pytest.approx(peak_first, rel=1e-14)
