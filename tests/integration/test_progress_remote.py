"""Progress from Ray workers to the driver (pipelines.progress.RemoteProgress) and into a flow run's Prefect progress
artifact (flows.common.progress_artifact), with real Ray and the Prefect harness."""

from __future__ import annotations

import ray

from pipelines import progress
from pipelines.progress import RemoteProgress


@ray.remote(num_cpus=0)
def _count(reporter, counts, resumed=None):
    if resumed is not None:
        reporter.resumed_at(resumed)
    for n in counts:
        reporter.at(n)


def test_remote_progress_sums_each_workers_latest_count_and_never_counts_a_restart_twice(ray_local):
    heard = []
    with progress.listen(heard.append), RemoteProgress("evaluate", 12, "generations", poll_s=0.05) as shown:
        # worker 1 is restarted: it counts 1..4, then again 1..6 (6 in all, never 4 + 6)
        ray.get([_count.remote(shown.reporter("0"), [1, 2, 3, 4, 5, 6]),
                 _count.remote(shown.reporter("1"), [1, 2, 3, 4, 1, 2, 3, 4, 5, 6])])  # fmt: skip
    assert shown.progress.n == 12 and heard[-1].n == 12 and heard[-1].percent == 100.0


def test_a_resumed_worker_rebases_the_display(ray_local):
    with RemoteProgress("train probe", 9, "steps", poll_s=0.05) as shown:
        ray.get(_count.remote(shown.reporter("rank0"), [7, 8, 9], resumed=6))
    assert (shown.progress.start, shown.progress.n) == (6, 9)


def test_a_flow_run_shows_its_jobs_progress_as_a_prefect_progress_artifact(prefect_harness, ray_local):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.common import progress_artifact

    @task
    def stage() -> None:
        with progress_artifact("evaluate"), RemoteProgress("evaluate", 8, "generations", poll_s=0.05) as shown:
            ray.get([_count.remote(shown.reporter(str(w)), [1, 2, 3, 4]) for w in range(2)])
        # a submitted job's progress arrives as log lines, parsed by the flow's log tail
        with progress_artifact("recaption"):
            progress.emit(progress.parse("[raysubmit_x] progress recaption: 5/5 clips (100%), 2 clips/s"))

    @flow
    def job_flow() -> None:
        stage()

    job_flow()
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["progress-evaluate-evaluate", "progress-recaption-recaption"])))}  # fmt: skip
    assert set(arts) == {"progress-evaluate-evaluate", "progress-recaption-recaption"}
    assert arts["progress-evaluate-evaluate"].type == "progress" and arts["progress-evaluate-evaluate"].data == 100.0
    assert "8/8 generations" in arts["progress-evaluate-evaluate"].description
    assert arts["progress-recaption-recaption"].data == 100.0
    assert arts["progress-evaluate-evaluate"].flow_run_id is not None
