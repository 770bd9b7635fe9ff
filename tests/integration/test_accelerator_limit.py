"""The global accelerator limit: training and eval jobs of different flow runs hold its slots one at a time (with
one slot), data jobs never wait for it."""

from __future__ import annotations

import threading
import time

from prefect import flow

from flows.common import GPU_LIMIT, accelerator_slot, ensure_gpu_limit


def test_accelerator_jobs_of_different_runs_take_turns_and_data_jobs_do_not_wait(prefect_harness):
    from prefect.client.orchestration import get_client

    ensure_gpu_limit(1)
    events: list[tuple[str, str]] = []
    ready = {name: threading.Event() for name in ("first", "second", "data")}
    entered = {name: threading.Event() for name in ready}

    @flow(name="hold-accelerator")
    def hold(name: str, stage: str) -> None:
        ready[name].set()
        with accelerator_slot(stage):
            events.append(("in", name))
            entered[name].set()
            if name == "first":
                # Held until the data job got in (it must not need the slot) and the second is about to ask for
                # it; then a moment more, so that a second let in beside the first would show in the order.
                entered["data"].wait(120)
                ready["second"].wait(120)
                time.sleep(1.0)
            events.append(("out", name))

    first = threading.Thread(target=hold, args=("first", "distill_video"))
    first.start()
    entered["first"].wait(120)
    second = threading.Thread(target=hold, args=("second", "evaluate"))
    second.start()
    hold("data", "curate_images")  # while the first holds the only slot
    first.join(300)
    second.join(300)
    assert events.index(("in", "data")) < events.index(("out", "first"))  # did not wait for the slot
    assert events.index(("out", "first")) < events.index(("in", "second"))  # waited for it
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    assert limit.limit == 1 and limit.active_slots == 0
