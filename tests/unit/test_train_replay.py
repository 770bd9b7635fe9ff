"""The training loop's in-memory replay of a small shard (one process: no torch.distributed group)."""

from __future__ import annotations

import torch

from pipelines.train_loop import _Replay


def _reader(n: int, calls: list):
    def read():
        calls.append(1)
        for i in range(n):
            yield {"x": torch.full((2, 3), float(i)), "caption": [f"c{i}", f"d{i}"]}

    return read


def _values(batches):
    return [(float(b["x"][0, 0]), b["caption"][0]) for b in batches]


def test_a_fitting_shard_is_read_once_then_replayed_in_the_same_order():
    calls: list = []
    replay = _Replay(limit_mb=1.0)
    first = []
    for b in replay.batches(_reader(3, calls)):
        first.append((float(b["x"][0, 0]), b["caption"][0]))
        b["x"].add_(100.0)  # a Task modifying its batch must not change what is replayed
        b["caption"].append("extra")
    replay.end_of_pass()
    second = _values(replay.batches(_reader(3, calls)))
    third = _values(replay.batches(_reader(3, calls)))
    assert first == second == third == [(0.0, "c0"), (1.0, "c1"), (2.0, "c2")]
    assert len(calls) == replay.reads == 1


def test_a_shard_over_the_limit_or_a_zero_limit_is_read_every_pass():
    for limit in (24 * 2 / 2**20, 0.0):  # room for two 24-byte batches of three; or replay off
        calls: list = []
        replay = _Replay(limit_mb=limit)
        for _ in range(3):
            assert _values(replay.batches(_reader(3, calls))) == [(0.0, "c0"), (1.0, "c1"), (2.0, "c2")]
            replay.end_of_pass()
        assert len(calls) == 3 and not replay.replaying
