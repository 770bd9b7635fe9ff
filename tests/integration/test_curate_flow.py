"""The ``curate-images`` flow against the Prefect test harness: it runs the job and publishes the reason table."""

from __future__ import annotations


def test_flow_runs_the_job_and_publishes_the_reject_reason_table(prefect_harness, ray_local, toy_images, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.curate import CurateImagesParams, curate_images_flow

    src, labels = toy_images
    out = tmp_path / "flow-out"
    manifest = curate_images_flow(CurateImagesParams(input_dir=str(src / "parquet"), output_dir=str(out)))
    assert manifest["counts"]["input"] == len(labels)
    assert (out / "manifest.json").is_file()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curate-images-reasons"]))
        )
    assert arts, "no reason table artifact"
    table = arts[0].data
    rows = table if isinstance(table, list) else __import__("json").loads(table)
    by_reason = {r["reason"]: r["rows"] for r in rows}
    assert by_reason == manifest["counts"]["by_reason"]
    assert {r["decision"] for r in rows} <= {"rejected", "quarantined"}


def test_flow_rejects_a_bad_override_before_any_work(prefect_harness, tmp_path):
    import pytest

    from flows.curate import CurateImagesParams, curate_images_flow
    from pipelines.config import ConfigError

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="curate_images.filters.min_side"):
        curate_images_flow(
            CurateImagesParams(input_dir=str(tmp_path), output_dir=str(out),
                               overrides=["curate_images.filters.min_side=-1"])
        )
    assert not out.exists()


def test_toy_world_flow_writes_a_labelled_world_and_publishes_its_label_counts(prefect_harness, tmp_path):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.toy import ToyWorldParams, toy_world_flow

    out = tmp_path / "world"
    summary = toy_world_flow(ToyWorldParams(out=str(out), seed=3, images=60, videos=2, dancers=1))
    world = json.loads((out / "world.json").read_text())
    assert world["counts"] == {"images": 60, "videos": 2, "dancers": 1} == summary["counts"]
    assert (out / "images" / "labels.parquet").is_file()
    assert list((out / "images" / "parquet").glob("*.parquet")) and list((out / "videos" / "mp4").glob("*.mp4"))
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["toy-world-labels"])))
    rows = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    assert sum(r["rows"] for r in rows) == 60
