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
    with pytest.raises(ConfigError, match="curation.filters.min_side"):
        curate_images_flow(
            CurateImagesParams(input_dir=str(tmp_path), output_dir=str(out), overrides=["curation.filters.min_side=-1"])
        )
    assert not out.exists()
