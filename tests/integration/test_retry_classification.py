"""What the retrain flow retries, on the exceptions real Ray raises (the classification itself: tests/unit/
test_retrain.py): a data error inside a task or a Ray Data map is not infrastructure; a worker that dies is."""

from __future__ import annotations

import os

import pytest

from flows.retry import is_infrastructure_error


def test_a_data_error_in_a_task_or_a_map_is_not_retried_and_a_dead_worker_is(ray_local):
    import ray

    @ray.remote(max_retries=0)
    def bad_data():
        raise ValueError("caption column is int")

    @ray.remote(max_retries=0)
    def dies():
        os._exit(1)

    def bad_batch(batch):
        raise KeyError("latents")

    caught = []
    for run in (lambda: ray.get(bad_data.remote()), lambda: ray.get(dies.remote()),
                lambda: ray.data.range(4).map_batches(bad_batch).materialize()):  # fmt: skip
        with pytest.raises(Exception) as err:  # noqa: PT011 - whatever Ray raises is what is classified
            run()
        caught.append(err.value)
    assert [is_infrastructure_error(e) for e in caught] == [False, True, False], [type(e) for e in caught]
