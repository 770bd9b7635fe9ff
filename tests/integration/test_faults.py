"""Fault injection on the toy profile with real faults (SIGKILL to a Ray Data actor, a Ray Train worker, the flow's
process; a full tmpfs; a read-only mount; a storage URI that names nothing), through :mod:`bench.faults`, the same
scenarios ``bench/fault_matrix.py`` tabulates. Nothing is lost or duplicated, and what cannot be recovered fails
cleanly before or without publishing anything."""

from __future__ import annotations

import errno

import pyarrow.parquet as pq
import pytest

from bench import faults
from pipelines.config import load_config


def test_a_killed_scorer_actor_is_restarted_and_the_curation_equals_a_clean_run(curated, toy_images, tmp_path):
    src, _ = toy_images
    r = faults.kill_data_actor(load_config("toy"), src / "parquet", tmp_path, clean=curated.output)
    assert r.data["restarts"] >= 1, r.detail
    assert r.recovered and r.identical, r.detail
    audit = pq.read_table(tmp_path / "faulted" / "audit", columns=["id"]).column("id").to_pylist()
    assert len(audit) == len(set(audit)) == curated.manifest["counts"]["input"]


def test_a_killed_training_worker_resumes_from_its_checkpoint_to_the_same_weights(curated, ray_local, tmp_path):
    r = faults.kill_train_worker(faults.stage1_config, curated.output, tmp_path)
    assert r.data["killed"], r.detail
    # Killed once the first checkpoint (step 3) was committed: resumed from step 3 or 6, not from scratch, and
    # stopped at the configured steps.
    assert r.data["resumed_from"] in (3, 6) and r.data["step"] == 12, r.detail
    assert r.recovered and r.identical and r.data["max_abs_diff"] <= faults.WEIGHT_ATOL, r.detail


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory):
    from toyworld.generate import generate_world

    out = tmp_path_factory.mktemp("faultworld") / "raw"
    generate_world(out, seed=4545, images=120, videos=24, dancers=2)
    return out


def test_a_killed_flow_reruns_only_the_interrupted_stage_and_registers_only_whole_versions(raw_world, tmp_path):
    r = faults.kill_flow(raw_world, tmp_path)
    assert r.data["rc"] == 0, (tmp_path / "faulted" / "rerun.log").read_text()[-3000:]
    assert r.data["status"] == {"curate_images": "cached", "curate_videos": "ran"}, r.detail
    ok_before, _, versions_before = r.data["before"]
    ok_after, _, versions_after = r.data["after"]
    assert ok_before and ok_after, r.detail
    assert "toy-curated-videos" not in versions_before, "the killed stage registered a version"
    assert versions_after == {"toy-curated-images": 1, "toy-curated-videos": 1}, r.detail
    assert r.data["litter"] == [] and r.identical and r.recovered, r.detail
    assert r.data["server_left"] == [], f"the killed flow's Prefect server outlived it: {r.data['leftovers']}"


@pytest.mark.parametrize("how", ["auto", "namespace"])
def test_a_full_disk_fails_naming_it_and_leaves_nothing(toy_images, ray_local, tmp_path, how):
    # "auto" mounts the tmpfs here as root (CI) and uses a user and mount namespace otherwise; "namespace" always
    # runs the unprivileged way, so both ways run wherever the tests do.
    src, _ = toy_images
    r = faults.disk_full(load_config("toy"), src / "parquet", tmp_path, how=how)
    assert not r.detail.startswith("not run"), f"the full-disk scenario could not run here: {r.detail}"
    assert r.data["how"] == how or how == "auto", r.detail
    output = (tmp_path / "small-disk" / "out").resolve()
    assert r.data["errno"] == errno.ENOSPC, r.detail
    assert f"output {output}: no space left on the device" in r.data["error"], r.detail
    assert r.data["left"] == [], f"left on the full disk: {r.data['left']}"  # no output, no staging directory
    assert r.recovered, r.detail


def _ray_actors() -> set[str]:
    """Every actor the connected Ray has had (alive or dead): a job that started work has added some."""
    from ray._private import state

    return set(state.actors())


def test_an_unwritable_output_is_refused_before_any_work(toy_images, ray_local, tmp_path):
    src, _ = toy_images
    before = _ray_actors()
    r = faults.unwritable_output(load_config("toy"), src / "parquet", tmp_path)
    output = (tmp_path / "read-only" / "out").resolve()
    assert f"output {output}: cannot write in" in r.data["error"] and "nothing was started" in r.data["error"], r.detail
    assert r.data["left"] == [], r.detail  # not even a staging directory
    assert _ray_actors() == before, "the refused job started Ray actors"
    assert r.recovered, r.detail


@pytest.mark.parametrize("uri", faults.MISSING_STORAGE)
def test_a_storage_uri_that_does_not_exist_is_refused_before_any_work_naming_the_key(curated, tmp_path, uri):
    before = _ray_actors()
    r = faults.missing_storage([], curated.output, tmp_path, uri)
    assert f"distill_image.train.storage_path={uri!r}" in r.data["error"], r.detail
    assert r.data["left"] == [], r.detail  # no staging directory for the stage-1 output
    assert _ray_actors() == before, "the refused job started Ray actors (encoder or training workers)"
    assert r.recovered, r.detail
