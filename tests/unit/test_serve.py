"""The served deployments (defaults, concurrency, schedule, trigger), `alcm ingest`'s landing, `{run}` output dirs."""

from __future__ import annotations

import pytest

from flows.curate import CurateImagesParams
from flows.distill import AdaptParams, DistillImageParams, DistillVideoParams
from flows.evaluate import EvaluateParams, PromoteParams
from flows.ingest import IngestError, land
from flows.retrain import RetrainParams
from flows.serve import DATA_LANDED, TRAINING, ServeSettings, build_deployments, default_parameters, trigger_parameters
from flows.videos import RecaptionParams, VideoJobParams

MODELS = {
    "curate-images": CurateImagesParams, "curate-videos": VideoJobParams, "recaption": RecaptionParams,
    "distill-image": DistillImageParams, "distill-video": DistillVideoParams, "adapt": AdaptParams,
    "evaluate": EvaluateParams, "promote-checkpoint": PromoteParams, "retrain-animatelcm": RetrainParams,
}  # fmt: skip


def test_every_flow_has_defaults_its_form_accepts(tmp_path):
    s = ServeSettings(data_root=str(tmp_path / "raw"), work_dir=str(tmp_path / "work"))
    defaults = default_parameters(s)
    assert set(defaults) == set(MODELS)
    for name, model in MODELS.items():
        params = model(**defaults[name]["params"])  # the form opens valid: nothing required is missing
        if hasattr(params, "output_dir"):
            assert params.output_dir == str(tmp_path / "work" / "ui" / name / "{run}")
    assert defaults["curate-images"]["params"]["input_dir"] == str(tmp_path / "raw" / "images" / "parquet")
    assert defaults["distill-video"]["params"]["stage1"] == str(tmp_path / "work" / "distilled-image")
    assert DistillVideoParams(input_dir="i", output_dir="o", stage1_dir="s").stage1 == "s"  # its name before
    retrain = RetrainParams(**defaults["retrain-animatelcm"]["params"])
    assert retrain.dancers == str(tmp_path / "raw" / "dancers") and retrain.new_data == ""


def test_deployments_limits_schedule_and_trigger(tmp_path):
    s = ServeSettings(
        data_root=str(tmp_path / "raw"), work_dir=str(tmp_path / "work"), retrain_stages=["curate_images"]
    )
    deployments = {d.flow_name: d for d in build_deployments(s)}
    assert set(deployments) == set(MODELS)
    for name, d in deployments.items():
        assert d.name == "platform"
        limit = d.concurrency_limit if isinstance(d.concurrency_limit, int | None) else d.concurrency_limit.limit
        assert limit == (1 if name in TRAINING else None), name
        assert not d.schedules, "no schedule unless asked for"
    assert set(TRAINING) == {"distill-image", "distill-video", "adapt", "retrain-animatelcm"}
    retrain = deployments["retrain-animatelcm"]
    assert retrain.parameters["params"]["stages"] == ["curate_images"]
    (trigger,) = retrain.triggers
    assert trigger.expect == {DATA_LANDED} and trigger.match.model_dump()["prefect.resource.id"] == "alcm.raw.*"
    assert trigger.parameters["params"]["new_data"] == "{{ event.payload.kind }}: {{ event.payload.shard }}"
    assert trigger.parameters["params"]["images"] == retrain.parameters["params"]["images"]
    assert all(not d.triggers for n, d in deployments.items() if n != "retrain-animatelcm")

    scheduled = {
        d.flow_name: d
        for d in build_deployments(ServeSettings(str(tmp_path), str(tmp_path), retrain_cron="0 3 * * *", trigger=False))
    }  # noqa: E501
    (schedule,) = scheduled["retrain-animatelcm"].schedules
    assert schedule.schedule.cron == "0 3 * * *" and not scheduled["retrain-animatelcm"].triggers
    assert trigger_parameters(s)["params"]["work_dir"] == str(tmp_path / "work")


def test_ingest_lands_a_copy_under_the_kind_root_and_never_replaces(tmp_path):
    shard = tmp_path / "incoming" / "00042.parquet"
    shard.parent.mkdir()
    shard.write_bytes(b"x" * 100)
    payload = land(shard, "images", tmp_path / "raw")
    dest = tmp_path / "raw" / "images" / "parquet" / "00042.parquet"
    assert payload == {"kind": "images", "shard": str(dest), "root": str(dest.parent), "files": 1, "bytes": 100}
    assert dest.read_bytes() == shard.read_bytes() and not list(dest.parent.glob(".*landing*"))
    with pytest.raises(IngestError, match="already exists"):
        land(shard, "images", tmp_path / "raw")
    # A shard already under its root is only announced; a directory shard is copied whole.
    assert land(dest, "images", tmp_path / "raw")["shard"] == str(dest)
    seq = tmp_path / "incoming" / "dancer_9" / "images"
    seq.mkdir(parents=True)
    for i in range(3):
        (seq / f"{i:04d}.png").write_bytes(b"png")
    out = land(seq.parent, "dancers", tmp_path / "raw")
    assert out["files"] == 3 and (tmp_path / "raw" / "dancers" / "dancer_9" / "images" / "0002.png").is_file()


@pytest.mark.parametrize(
    ("path", "kind", "match"),
    [("missing.parquet", "images", "does not exist"), ("empty", "images", "holds no file"), ("f", "audio", "--kind")],
)
def test_ingest_errors_name_the_problem(tmp_path, path, kind, match):
    (tmp_path / "empty").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(IngestError, match=match):
        land(tmp_path / path, kind, tmp_path / "raw")


def test_ingest_without_a_server_says_so(monkeypatch, tmp_path):
    from flows.ingest import emit_landed

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(IngestError, match="PREFECT_API_URL"):
        emit_landed({"kind": "images", "shard": str(tmp_path / "s.parquet")})
