"""The ``recaption`` and ``curate-videos`` flows against the Prefect test harness."""

from __future__ import annotations

import json

import pytest


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert arts, f"no {key} artifact"
    data = arts[0].data
    return json.loads(data) if isinstance(data, str) and data.startswith("[") else data


def test_recaption_flow_captions_dancers_and_publishes_a_summary(prefect_harness, ray_local, toy_video_world, tmp_path):
    from flows.videos import RecaptionParams, recaption_videos_flow

    out = tmp_path / "recap"
    manifest = recaption_videos_flow(
        RecaptionParams(input_dir=str(toy_video_world / "dancers"), output_dir=str(out), backend="transformers")
    )
    assert manifest["counts"]["by_decision"]["kept"] == manifest["counts"]["input"] == 6
    assert (out / "manifest.json").is_file() and list((out / "captioned").glob("*.parquet"))
    summary = _artifact("recaption-summary")
    assert "Recaptioned" in summary and "alcm-toy-blip" in summary


def test_curate_videos_flow_publishes_the_reason_table(prefect_harness, ray_local, toy_video_world, tmp_path):
    from flows.videos import VideoJobParams, curate_videos_flow

    out = tmp_path / "cur"
    manifest = curate_videos_flow(
        VideoJobParams(input_dir=str(toy_video_world / "videos" / "wds"), output_dir=str(out))
    )
    rows = _artifact("curate-videos-reasons")
    assert {r["reason"]: r["rows"] for r in rows} == manifest["counts"]["by_reason"]


def test_recaption_flow_refuses_an_unknown_backend_before_any_work(tmp_path):
    from flows.videos import RecaptionParams

    params = RecaptionParams(input_dir=str(tmp_path), output_dir=str(tmp_path / "x"), backend="blip2")
    with pytest.raises(ValueError, match="transformers or lavis"):
        params.config_overrides()
