"""Debounce of new-data runs: among the retrain deployment's runs, a run started by a landing is superseded by the
newest later run started by a landing (manual and failed runs do not count), so a burst of shards retrains once."""

from __future__ import annotations

from flows.retrain import later_landing_run, retrain_flow


def test_only_the_newest_landing_run_retrains(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    deployment_id = retrain_flow.to_deployment(name="debounce-test").apply()

    def params(new_data: str) -> dict:
        return {"params": {"images": "/raw/images", "videos": "/raw/videos", "dancers": "/raw/dancers",
                           "work_dir": "/work", "new_data": new_data, "debounce_s": 0}}  # fmt: skip

    with get_client(sync_client=True) as client:
        def run(new_data: str) -> str:
            return str(client.create_flow_run_from_deployment(deployment_id, parameters=params(new_data)).id)

        first = run("images: shard-1")
        manual = run("")
        second = run("images: shard-2")
        crashed = run("images: shard-3")
        client.set_flow_run_state(crashed, Crashed(), force=True)
    assert later_landing_run(first, str(deployment_id)) == second
    assert later_landing_run(manual, str(deployment_id)) == second
    assert later_landing_run(second, str(deployment_id)) is None  # the newest live landing run retrains
    assert later_landing_run(second, None) is None  # not a deployment run: nothing to debounce
