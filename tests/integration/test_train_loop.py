"""The shared training loop under Ray Train + DeepSpeed ZeRO-2 with 2 CPU workers: steps, checkpoints, resume,
EMA state in checkpoints, export."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from models.task import LinearProbeTask
from pipelines.train_loop import TrainConfig, deepspeed_config, train

# A partial of an importable class: Ray workers unpickle it by reference (a function defined here would not import).
make_probe = partial(LinearProbeTask, dim=4, ema_decay=0.5)


@pytest.fixture(scope="module")
def regression_data(ray_local):
    import ray

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32) + 0.25).astype(np.float32)
    return ray.data.from_items([{"x": xi, "y": yi} for xi, yi in zip(x, y, strict=True)])


@pytest.fixture(scope="module")
def regression_cache(regression_data, tmp_path_factory):
    """The same 64 rows as a latent cache (``pipelines.rank_data``'s format: ``x`` a Ray tensor column, ``y`` a plain
    one, an ``error`` column) in two files of row groups of 10 rows, with 8 failed rows among them."""
    from ray.data.extensions import ArrowTensorArray

    from pipelines.rank_data import CacheShards

    rows = regression_data.take_all()
    failed = {5, 17, 18, 30, 41, 52, 60, 66}
    x, y, errors, it = [], [], [], iter(rows)
    for i in range(len(rows) + len(failed)):
        r = {"x": np.full(4, 99.0, np.float32), "y": np.float32(99.0)} if i in failed else next(it)
        x.append(r["x"])
        y.append(r["y"])
        errors.append("undecodable: x" if i in failed else "")
    out = tmp_path_factory.mktemp("regression_cache")
    files = []
    for part, (lo, hi) in enumerate([(0, 30), (30, 72)]):
        table = pa.table({"error": errors[lo:hi], "x": ArrowTensorArray.from_numpy(np.stack(x[lo:hi])),
                          "y": pa.array(np.array(y[lo:hi], np.float32))})  # fmt: skip
        pq.write_table(table, out / f"part-{part}.parquet", row_group_size=10)
        files.append(str(out / f"part-{part}.parquet"))
    return CacheShards(tuple(files), ("x", "y"))


def test_deepspeed_json_comes_from_the_config():
    ds = deepspeed_config(TrainConfig(zero_stage=3, micro_batch_size=8, lr=3e-4, warmup_steps=5, grad_clip=0.5))
    assert ds["zero_optimization"] == {"stage": 3} and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5 and ds["gradient_clipping"] == 0.5
    assert ds["scheduler"]["params"]["warmup_min_lr"] == 0.0
    no_warmup = deepspeed_config(TrainConfig(lr=3e-4, warmup_steps=0))["scheduler"]["params"]
    assert no_warmup["warmup_min_lr"] == no_warmup["warmup_max_lr"] == 3e-4  # the full lr from the first step
    assert ds["bf16"]["enabled"] is False and deepspeed_config(TrainConfig(use_gpu=True))["bf16"]["enabled"] is True
    offload = deepspeed_config(TrainConfig(offload_optimizer=True))["zero_optimization"]["offload_optimizer"]
    assert offload["device"] == "cpu"


def test_two_workers_train_checkpoint_and_resume_without_inflating_steps(regression_data, tmp_path):
    from pipelines.ds_ops import extensions_dir

    op = extensions_dir() / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    assert op.is_file(), "make install builds DeepSpeed's op into the venv (python -m pipelines.ds_ops)"
    built = op.stat().st_mtime_ns
    cfg = TrainConfig(name="probe", storage_path=str(tmp_path / "runs"), num_workers=2, steps=6, micro_batch_size=4,
                      lr=0.2, checkpoint_every=3, log_every=2, cpus_per_worker=0.5)  # fmt: skip
    first = train(make_probe, regression_data, cfg, export_dir=tmp_path / "export1")
    assert first.metrics["step"] == 6 and first.checkpoint_path is not None
    ckpt = Path(first.checkpoint_path)
    assert json.loads((ckpt / "step.json").read_text())["step"] == 6
    assert (ckpt / "task_state.safetensors").is_file() and (ckpt / "ckpt").is_dir()
    exported = load_file(str(tmp_path / "export1" / "probe.safetensors"))
    assert set(exported) == {"weight", "bias"}
    # Re-running the same name with more steps resumes at step 6 and stops at 9 (not 6 + 9).
    more = TrainConfig(**{**cfg.__dict__, "steps": 9})
    second = train(make_probe, regression_data, more, export_dir=tmp_path / "export2")
    assert first.metrics["resumed_from"] == 0
    assert (second.metrics["step"], second.metrics["resumed_from"]) == (9, 6)
    rows = regression_data.take_all()
    x, y = np.stack([r["x"] for r in rows]), np.array([r["y"] for r in rows])
    later = load_file(str(tmp_path / "export2" / "probe.safetensors"))

    def mse(w):
        return float(np.mean((x @ w["weight"].numpy()[0] + w["bias"].numpy()[0] - y) ** 2))

    assert mse(later) < mse(exported)  # the 3 resumed steps trained on: the fit to the whole data improved
    ema = load_file(str(tmp_path / "export2" / "probe_ema.safetensors"))
    assert not np.allclose(ema["weight"].numpy(), exported["weight"].numpy())
    assert op.stat().st_mtime_ns == built  # both runs' workers loaded the prebuilt op, none compiled it again


def test_every_rank_holds_the_same_online_and_target_weights_at_the_start_and_after_a_step(regression_data, tmp_path):
    # The probe's weights and its EMA target are drawn from torch's generator when the Task is built: a rank that
    # built it under another seed would hold another target for good (DeepSpeed broadcasts only the engine's weights).
    cfg = TrainConfig(name="replicas", storage_path=str(tmp_path / "runs"), num_workers=2, steps=2, micro_batch_size=4,
                      lr=0.2, checkpoint_every=100, cpus_per_worker=0.5)  # fmt: skip
    metrics = train(make_probe, regression_data, cfg).metrics
    assert metrics["replica_spread_start"] == 0.0 and metrics["replica_spread_step"] == 0.0, metrics


def test_replaying_a_small_shard_trains_exactly_what_reading_it_again_trains(regression_data, tmp_path):
    # 64 rows on 2 workers in micro-batches of 4: 8 per pass, so 20 steps are 2.5 passes.
    base = dict(storage_path=str(tmp_path / "runs"), num_workers=2, steps=20, micro_batch_size=4, lr=0.05,
                checkpoint_every=100, cpus_per_worker=0.5)  # fmt: skip
    replayed = train(make_probe, regression_data, TrainConfig(name="replay", **base), export_dir=tmp_path / "a")
    read = train(make_probe, regression_data, TrainConfig(name="read", replay_mb=0, **base), export_dir=tmp_path / "b")
    assert replayed.metrics["step"] == read.metrics["step"] == 20
    assert (replayed.metrics["shard_reads"], read.metrics["shard_reads"]) == (1, 3)
    for name in ("probe.safetensors", "probe_ema.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_what_each_rank_trains_on_depends_on_the_rows_alone_not_their_blocks_nor_a_restart(regression_data, tmp_path):
    # The same 64 rows in one block, and in 5 blocks trained 3 steps then resumed to 6: Ray Train's own split would
    # hand the 5 blocks out by arrival (different rows per rank, so different global batches); the loop's slicing of
    # global batches gives both runs rows [8k, 8k + 8) at step k, and so the same weights, bit for bit.
    base = dict(num_workers=2, micro_batch_size=4, lr=0.05, checkpoint_every=3, cpus_per_worker=0.5)
    one = regression_data.repartition(1)
    five = regression_data.repartition(5)
    assert (one.materialize().num_blocks(), five.materialize().num_blocks()) == (1, 5)
    train(make_probe, one, TrainConfig(name="one", storage_path=str(tmp_path / "a"), steps=6, **base),
          export_dir=tmp_path / "one")  # fmt: skip
    cfg = TrainConfig(name="five", storage_path=str(tmp_path / "b"), steps=3, **base)
    train(make_probe, five, cfg)
    resumed = train(make_probe, five, TrainConfig(**{**cfg.__dict__, "steps": 6}), export_dir=tmp_path / "five")
    assert (resumed.metrics["resumed_from"], resumed.metrics["step"]) == (3, 6)
    for name in ("probe.safetensors", "probe_ema.safetensors"):
        a, b = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "five" / name))
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_on_a_latent_cache_each_worker_reads_its_rows_and_a_resumed_run_trains_what_an_uninterrupted_one_does(
    regression_cache, tmp_path
):
    # 64 encoded rows on 2 workers in micro-batches of 4: rank r trains on encoded rows [32r, 32r + 32), 8
    # micro-batches per pass. 10 steps straight, and 3 steps then resumed to 10: the same weights, bit for bit.
    from pipelines.rank_data import rank_plan, read_index

    base = dict(num_workers=2, micro_batch_size=4, lr=0.05, checkpoint_every=3, cpus_per_worker=0.5)
    straight = train(make_probe, regression_cache, TrainConfig(name="straight", storage_path=str(tmp_path / "a"),
                                                               steps=10, **base), export_dir=tmp_path / "one")
    cfg = TrainConfig(name="resumed", storage_path=str(tmp_path / "b"), steps=3, **base)
    train(make_probe, regression_cache, cfg)
    resumed = train(make_probe, regression_cache, TrainConfig(**{**cfg.__dict__, "steps": 10}),
                    export_dir=tmp_path / "two")  # fmt: skip
    assert (resumed.metrics["resumed_from"], resumed.metrics["step"]) == (3, 10)
    for name in ("probe.safetensors", "probe_ema.safetensors"):
        a, b = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "two" / name))
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    # Rank 0 read its plan (the index and its row groups, once: the second pass is replayed) and nothing else.
    index = read_index(regression_cache)
    plan = rank_plan(index, 0, 2, 4)
    for m in (straight.metrics, resumed.metrics):
        assert m["shard_bytes"] == m["shard_bytes_read"] == plan.bytes < index.whole_bytes
        assert m["shard_reads"] == 1
    assert {(r.file, r.group) for r in plan.reads} == {(0, 0), (0, 1), (0, 2), (1, 0)}  # rows 0-35 of 72
