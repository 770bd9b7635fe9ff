"""The retraining flow's caching and retry rules: raw-input digests, which failures are retried (the stage keys:
test_stage_keys.py)."""

from __future__ import annotations

import errno
import os

import pytest
from prefect.states import Completed, Failed

from flows.retrain import listing_digest
from flows.retry import is_infrastructure_error, retry_condition
from pipelines.config import ConfigError


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
    assert retry_condition(None, None, Failed(data=exc)) is retried


def test_a_completed_state_is_not_retried():
    assert retry_condition(None, None, Completed(data=1)) is False


# ------------------------------------------------------------------------------------------------ the cause chain


def _ray_task_error(cause: BaseException) -> BaseException:
    """What ``ray.get`` raises for an exception in a task: Ray's error, also an instance of the cause's class."""
    from ray.exceptions import RayTaskError

    return RayTaskError("curate", "Traceback ...", cause).as_instanceof_cause()


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


def _chains():
    from ray.data.exceptions import UserCodeException
    from ray.exceptions import ActorDiedError, ObjectLostError, WorkerCrashedError
    from ray.train import TrainingFailedError

    from contracts.manifest import IntegrityError

    return [
        ("data error in a task", _ray_task_error(ValueError("caption column is int")), False),
        ("bug in a task", _ray_task_error(RuntimeError("index out of range")), False),
        ("data error in Ray Data", _wrapped(UserCodeException("map_batches failed"), IntegrityError("bad digest")),
         False),
        ("config error under a connection error", _wrapped(ConnectionError("lost"), ConfigError("bad key")), False),
        ("a lost worker", WorkerCrashedError(), True),
        ("a lost actor inside Ray Data", _wrapped(UserCodeException("map_batches failed"), ActorDiedError()), True),
        ("a training worker killed", _wrapped(TrainingFailedError("training failed"), ActorDiedError()), True),
        ("a data error in a training worker", _wrapped(TrainingFailedError("training failed"), KeyError("latents")),
         False),
        ("a lost object", ObjectLostError("00ff", "owner", "call site"), True),
        ("a connection error in a task", _ray_task_error(ConnectionError("S3 reset")), True),
    ]


@pytest.mark.parametrize(("case", "exc", "retried"), _chains(), ids=[c[0] for c in _chains()])
def test_retries_are_decided_on_the_cause_chain(case, exc, retried):
    assert is_infrastructure_error(exc) is retried, case
    assert retry_condition(None, None, Failed(data=exc)) is retried
