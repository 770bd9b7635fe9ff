"""A simulated two-node cluster (Ray's ``cluster_utils.Cluster``): a CPU head and a "GPU" node (a declared GPU and
the ``gpu_node`` custom resource, as the KubeRay GPU groups declare). The real curation job with the sd15 profile's
scheduling settings (scorers need a GPU) runs on it: the scorer actors land on the GPU node, the CPU stages on both,
and the output equals the single-machine run's. Then the shared training loop (Ray Train + DeepSpeed, 2 workers)
with ``train.resources: {gpu_node: ...}``: every training worker lands on the GPU node. Runs in a subprocess so the
session's local Ray is left alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow.dataset as ds
import pytest

pytestmark = pytest.mark.timeout(600)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray.cluster_utils import Cluster
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    src, out = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"cpu_node": 1}})
    gpu = cluster.add_node(num_cpus=2, num_gpus=1, resources={"gpu_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    placements = []

    @ray.remote(num_gpus=1)
    def where_a_gpu_task_runs():
        return ray.get_runtime_context().get_node_id()

    placements.append(ray.get(where_a_gpu_task_runs.remote()))
    # the sd15 profile's scheduling: the scorers ask for a GPU (the toy scorers still compute on the CPU)
    cfg = load_config("toy", ["curate_images.scorer_gpus=1", "curate_images.scorer_actors=1"])
    result = run_job("curate_images", cfg, src, out)
    from ray.util.state import list_actors

    actors = [a for a in list_actors(detail=True, limit=10000) if "ScoreActor" in (a.class_name or "")]

    # training: 2 DeepSpeed workers that also ask for the GPU group's custom resource
    from functools import partial
    from models.task import LinearProbeTask
    from pipelines.train_loop import TrainConfig, train

    data = ray.data.from_items([{"x": [float(i), 1.0, 0.0, -1.0], "y": float(i)} for i in range(32)])
    cfg = TrainConfig(name="placed", storage_path=sys.argv[3], num_workers=2, steps=2, micro_batch_size=4,
                      cpus_per_worker=0.5, resources={"gpu_node": 0.5})
    trained = train(partial(LinearProbeTask, dim=4, ema_decay=0.5), data, cfg)
    workers = [a for a in list_actors(detail=True, limit=10000) if "RayTrainWorker" in (a.class_name or "")]
    print("RESULT " + json.dumps({
        "gpu_node": gpu.node_id, "head_node": cluster.head_node.node_id, "gpu_task": placements,
        "scorer_nodes": sorted({a.node_id for a in actors}), "counts": result.manifest["counts"],
        "train_nodes": [a.node_id for a in workers], "train_step": trained.metrics["step"],
    }))
    ray.shutdown()
    cluster.shutdown()
    """
)


def test_scorers_and_training_land_on_the_gpu_node_and_the_output_equals_a_single_machine_run(
    toy_images, curated, tmp_path
):
    src, _ = toy_images
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(src / "parquet"), str(tmp_path / "out"),
                           str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=540)  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result["gpu_task"] == [result["gpu_node"]]
    assert result["scorer_nodes"] == [result["gpu_node"]]
    assert len(result["train_nodes"]) == 2 and set(result["train_nodes"]) == {result["gpu_node"]}
    assert result["train_step"] == 2
    assert result["counts"] == curated.manifest["counts"]
    cluster_rows = ds.dataset(tmp_path / "out" / "audit").to_table(columns=["id", "decision"]).to_pylist()
    local_rows = ds.dataset(curated.output / "audit").to_table(columns=["id", "decision"]).to_pylist()
    assert sorted(map(tuple, (r.values() for r in cluster_rows))) == sorted(
        map(tuple, (r.values() for r in local_rows))
    )
