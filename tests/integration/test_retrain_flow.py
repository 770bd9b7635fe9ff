"""The end-to-end retraining flow on the session's toy worlds: every stage for real (a few training steps), then a
re-run that skips every finished stage, then a change to stage 3's config that re-runs stage 3 only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1500)


def _overrides(tmp: Path, adapt_steps: int = 2) -> list[str]:
    out = []
    for section in ("distill_image", "distill_video", "adapt"):
        out += [f"{section}.cache_dir={tmp / 'cache'}", f"{section}.train.storage_path={tmp / 'runs'}",
                f"{section}.train.steps={adapt_steps if section == 'adapt' else 2}",
                f"{section}.train.checkpoint_every=10"]  # fmt: skip
    out += ["distill_image.preview_prompts=[]", "distill_video.preview_prompts=[]", "evaluate.num_prompts=2",
            "evaluate.student_steps=[1, 4]", "evaluate.teacher_steps=[1, 4]", "evaluate.reference_steps=4",
            "evaluate.grid_prompts=1"]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def runs(toy_images, toy_video_world, ray_local, prefect_harness, tmp_path_factory):
    from flows.retrain import RetrainParams, retrain_flow

    tmp = tmp_path_factory.mktemp("retrain")
    images, _ = toy_images

    inputs = {"images": str(images / "parquet"), "videos": str(toy_video_world / "videos" / "wds"),
              "dancers": str(toy_video_world / "dancers"), "work_dir": str(tmp / "work")}  # fmt: skip

    def go(**kw):
        return retrain_flow(RetrainParams(**inputs, **kw))

    first = go(overrides=_overrides(tmp))
    second = go(overrides=_overrides(tmp))
    third = go(overrides=_overrides(tmp, adapt_steps=3), promote=False)
    # A byte flipped in a cached output (stage 3's): the next run finds it by its digest and makes it again.
    adapt_out = Path(third["work_dir"]) / "adapters"
    listed = json.loads((adapt_out / "manifest.json").read_text())["files"]
    victim = adapt_out.resolve() / sorted(listed)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    fourth = go(overrides=_overrides(tmp, adapt_steps=3), promote=False)
    return {"tmp": tmp, "first": first, "second": second, "third": third, "fourth": fourth, "victim": victim,
            "listed": listed}


def _status(summary: dict) -> dict[str, str]:
    return {r["stage"]: r["status"] for r in summary["stages"]}


def test_the_first_run_runs_every_stage_registers_each_output_and_evaluates_stage_two(runs):
    from flows.common import open_registry
    from pipelines.stages import STAGES

    first = runs["first"]
    assert _status(first) == {s.name: "ran" for s in STAGES}
    work = Path(first["work_dir"])
    for stage in STAGES:
        link = work / stage.output
        assert link.is_symlink() and (link / "manifest.json").is_file(), stage.name
    registry = open_registry()
    regs = first["registered"]
    stage2 = registry.get(regs["distill_video"])
    assert regs["evaluate"] == stage2.ref and stage2.evaluated
    assert {p.role: p.ref for p in stage2.parents} == {
        "dataset": regs["curate_videos"],
        "stage1": regs["distill_image"],
    }
    stage3 = registry.get(regs["adapt"])
    assert {p.role: p.ref for p in stage3.parents} == {
        "control_dataset": regs["recaption"], "image_to_video_dataset": regs["curate_videos"],
        "stage2": regs["distill_video"]}  # fmt: skip
    assert first["decision"]["candidate"] == stage2.ref and first["report"].endswith("eval-video/report.md")
    # The time table's accounting (no clock values asserted): job time is what the stages that ran took, the rest
    # is outside them.
    ran = [r["seconds"] for r in first["stages"] if r["status"] == "ran"]
    assert len(ran) == len(STAGES) and first["jobs_s"] == pytest.approx(sum(ran))
    assert first["outside_jobs_s"] == pytest.approx(first["total_s"] - first["jobs_s"])


def test_a_rerun_with_unchanged_inputs_skips_every_finished_stage(runs):
    from pipelines.stages import STAGES

    first, second = runs["first"], runs["second"]
    assert _status(second) == {s.name: "cached" for s in STAGES}
    assert second["registered"] == first["registered"]  # same outputs, same versions: nothing registered twice
    assert second["jobs_s"] == 0
    assert [r["output"] for r in second["stages"]] == [r["output"] for r in first["stages"]]


def test_changing_stage_three_config_reruns_only_stage_three(runs):
    from flows.common import open_registry

    first, third = runs["first"], runs["third"]
    status = _status(third)
    assert status.pop("adapt") == "ran" and set(status.values()) == {"cached"}
    assert third["registered"]["adapt"] != first["registered"]["adapt"]
    name = first["registered"]["adapt"].split("@")[0]
    adapters = [e for e in open_registry().list("checkpoint") if e.name == name]
    assert [e.ref for e in adapters][-2:] == [first["registered"]["adapt"], third["registered"]["adapt"]]
    manifest = json.loads((Path(third["work_dir"]) / "adapters" / "manifest.json").read_text())
    assert all(r["metrics"]["step"] == 3 for r in manifest["adapters"].values())


def test_the_flow_publishes_the_stage_table_with_timings(runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-summary"])))
    third = [a.data for a in arts if "| adapt | ran |" in a.data and "| curate_images | cached |" in a.data]
    assert len(arts) >= 3 and third  # one summary per run; the third re-ran stage 3 only
    assert "s outside them" in third[0] and "| evaluate | cached |" in third[0]


def test_a_corrupted_cached_output_is_found_by_its_digest_and_made_again(runs):
    from contracts.manifest import verify_files

    status = _status(runs["fourth"])
    assert status.pop("adapt") == "ran" and set(status.values()) == {"cached"}
    out = runs["victim"].parent
    while not (out / "manifest.json").is_file():
        out = out.parent
    assert verify_files(out) == len(runs["listed"])  # the remade output verifies, the flipped byte is gone
