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
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    from flows.common import progress_artifact

    @task
    def stage() -> None:
        with progress_artifact("evaluate"), RemoteProgress("evaluate", 8, "generations", poll_s=0.05) as shown:
            ray.get([_count.remote(shown.reporter(str(w)), [1, 2, 3, 4]) for w in range(2)])
        # a submitted job's progress arrives as log lines, parsed by the flow's log tail
        with progress_artifact("recaption"):
            progress.emit(progress.parse("[raysubmit_x] progress recaption: 5/5 clips (100%), 2 clips/s"))

    @flow
    def job_flow():
        from prefect.runtime import flow_run

        stage()
        return flow_run.id

    run_id = job_flow()
    mine = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                          type=ArtifactFilterType(any_=["progress"]))
    with get_client(sync_client=True) as client:  # this run's artifacts (other tests' flows made some of these keys)
        arts = client.read_artifacts(artifact_filter=mine)
    by_key = {a.key: a for a in arts}
    assert len(arts) == 2 and set(by_key) == {"progress-evaluate-evaluate", "progress-recaption-recaption"}
    assert by_key["progress-evaluate-evaluate"].data == 100.0 and by_key["progress-recaption-recaption"].data == 100.0
    assert "8/8 generations" in by_key["progress-evaluate-evaluate"].description
    assert "5/5 clips" in by_key["progress-recaption-recaption"].description
