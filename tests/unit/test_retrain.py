"""The retraining flow's caching and retry rules: stage keys, raw-input digests, which failures are retried."""

from __future__ import annotations

import errno
import os

import pytest
from prefect.states import Completed, Failed

from flows.retrain import DEPENDS, STAGES, _retry_condition, is_infrastructure_error, listing_digest, stage_key
from pipelines.config import ConfigError, load_config


def _keys(overrides: list[str]) -> dict[str, str]:
    cfg = load_config("toy", overrides)
    return {s: stage_key(s, cfg, {"raw": "sha256:0"}) for s in STAGES}


def test_a_config_change_changes_the_keys_of_the_stages_that_read_it_only():
    base = _keys([])
    assert _keys([]) == base
    changed = _keys(["adapt.train.steps=3"])
    assert [s for s in STAGES if changed[s] != base[s]] == ["adapt"]
    changed = _keys(["consistency.w_max=9.0"])  # every training stage and the eval read the consistency math
    assert [s for s in STAGES if changed[s] != base[s]] == ["distill_image", "distill_video", "adapt", "evaluate"]
    changed = _keys(["ray.num_cpus=1"])  # where jobs run is not what they compute
    assert changed == base


def test_a_stage_key_depends_on_its_inputs():
    cfg = load_config("toy")
    assert stage_key("adapt", cfg, {"distill_video": "a"}) != stage_key("adapt", cfg, {"distill_video": "b"})
    assert set(DEPENDS["adapt"]) == {"distill_video", "recaption", "curate_videos"}


def test_the_raw_listing_digest_follows_added_changed_and_touched_files(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"x" * 10)
    first = listing_digest(tmp_path)
    assert listing_digest(tmp_path) == first
    (tmp_path / "b.parquet").write_bytes(b"y")
    second = listing_digest(tmp_path)
    assert second != first
    os.utime(tmp_path / "b.parquet", ns=(1, 1))
    assert listing_digest(tmp_path) != second
    with pytest.raises(FileNotFoundError, match="does not exist"):
        listing_digest(tmp_path / "missing")


class _RayActorDied(Exception):
    pass


_RayActorDied.__module__ = "ray.exceptions"


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (ConnectionError("head node unreachable"), True),
        (TimeoutError("job did not finish"), True),
        (OSError(errno.EIO, "I/O error"), True),
        (_RayActorDied("actor died"), True),
        (ConfigError("distill_image.train.steps=0: must be ≥ 1"), False),
        (ValueError("--input: fewer than one batch"), False),
        (FileNotFoundError("teacher.pretrained_dir"), False),
        (RuntimeError("job FAILED: bad data"), False),
    ],
)
def test_only_infrastructure_failures_are_retried(exc, retried):
    assert is_infrastructure_error(exc) is retried
    assert _retry_condition(None, None, Failed(data=exc)) is retried


def test_a_completed_state_is_not_retried():
    assert _retry_condition(None, None, Completed(data=1)) is False
