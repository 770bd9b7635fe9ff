"""Stages 2 and 3 end to end on real components: the session's curated toy clips and recaptioned dancers, the
committed toy image teacher, a motion module teacher, a stage-1 LoRA, the Ray Data encode step, Ray Train +
DeepSpeed ZeRO-2 with 2 CPU workers, the exports loaded by diffusers' own pipelines, manifests, and the flows."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from contracts.manifest import files_map
from pipelines.config import load_config

STEPS = 3
pytestmark = pytest.mark.timeout(1200)  # the module's fixtures run two training jobs (about 3 minutes each on 2 cores)
TEACHER = "toyworld/zoo/image_teacher"


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory) -> Path:
    """A motion module teacher for the toy UNet with non-zero weights (what it draws does not matter here)."""
    from diffusers import UNet2DConditionModel

    from models.video_unet import new_motion_adapter

    unet = UNet2DConditionModel.from_pretrained(TEACHER, subfolder="unet", local_files_only=True)
    adapter = new_motion_adapter(dict(unet.config), heads=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("motion") / "adapter"
    adapter.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A stage-1 output (manifest + diffusers LoRA with non-zero B) for the toy teacher, written with the stage's
    own export functions; returns the directory and the LoRA in PEFT layout."""
    from contracts.manifest import write_manifest
    from models.factory import build_teacher
    from models.lora import add_lora, lora_state_dict, save_lora, to_diffusers_lora
    from pipelines.config import load_config as load

    cfg = load("toy")
    unet = add_lora(copy.deepcopy(build_teacher(cfg.teacher).unet), cfg.teacher.lora)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    state = {k: v.clone() for k, v in lora_state_dict(unet).items()}
    out = tmp_path_factory.mktemp("stage1") / "s1"
    save_lora(to_diffusers_lora(state), out / "lora" / "pytorch_lora_weights.safetensors")
    write_manifest(out, {"kind": "checkpoint", "stage": "distill_image", "name": "toy-lcm-lora",
                         "digest": "sha256:" + "1" * 64})  # fmt: skip
    return out, state


@pytest.fixture(scope="module")
def videos_with_a_broken_clip(curated_videos, tmp_path_factory) -> tuple[Path, int]:
    """The session's curated clips plus one kept clip whose third frame does not decode."""
    out = tmp_path_factory.mktemp("curvid_broken") / "ds"
    shutil.copytree(curated_videos.output, out)
    first = sorted((out / "kept").glob("*.parquet"))[0]
    row = pq.read_table(first).slice(0, 1).to_pylist()[0]
    frames = list(row["frames"])
    frames[2] = b"\x89PNG\r\n\x1a\n-truncated"
    row.update(key="broken-clip", frames=frames)
    pq.write_table(pa.Table.from_pylist([row], schema=pq.read_schema(first)), out / "kept" / "zz-broken.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = files_map(out, ("kept", "audit"))  # a dataset published with the broken row
    (out / "manifest.json").write_text(json.dumps(manifest))
    kept = sum(pq.read_metadata(f).num_rows for f in (out / "kept").glob("*.parquet"))
    return out, kept


def _delta(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)


def _overrides(tmp: Path, motion_dir: Path, section: str = "distill_video", steps: int = STEPS) -> list[str]:
    return [
        f"distill_video.motion_adapter_dir={motion_dir}",
        f"{section}.cache_dir={tmp / 'cache'}",
        f"{section}.train.storage_path={tmp / 'runs'}",
        f"{section}.train.steps={steps}",
        f"{section}.train.checkpoint_every=2",
        f"{section}.train.micro_batch_size=1",
        f"{section}.train.log_every=1",
        f"{section}.train.warmup_steps=0",
    ]


@pytest.fixture(scope="module")
def stage2(videos_with_a_broken_clip, stage1_dir, motion_dir, ray_local, tmp_path_factory):
    from pipelines.runtime import run_job

    tmp = tmp_path_factory.mktemp("stage2")
    overrides = [*_overrides(tmp, motion_dir), "distill_video.preview_prompts=[a red circle moving right on a white "
                 "background]", "distill_video.preview_steps=2"]  # fmt: skip
    src, _ = videos_with_a_broken_clip
    return run_job("distill_video", load_config("toy", overrides), src, tmp / "out", stage1=stage1_dir[0]), tmp


def test_stage2_accounts_for_every_clip_and_records_its_inputs(stage2, videos_with_a_broken_clip, stage1_dir):
    result, _ = stage2
    m = result.manifest
    _, kept = videos_with_a_broken_clip
    assert m["kind"] == "checkpoint" and m["stage"] == "distill_video"
    assert m["counts"]["rows"] == kept
    assert m["counts"]["failed"] == {"undecodable": 1}
    assert m["counts"]["encoded"] == kept - 1
    assert m["inputs"]["stage1"]["digest"] == "sha256:" + "1" * 64
    assert m["inputs"]["motion_adapter"]["digests"]
    assert m["metrics"]["step"] == STEPS and np.isfinite(m["metrics"]["loss"])
    assert m["export"]["init"] == "online_only" and m["export"]["updates"] == STEPS
    for rel, digest in m["files"].items():
        from contracts.digests import sha256_file

        assert sha256_file(result.output / rel) == digest, rel
    assert (result.output / "preview.png").is_file()


def test_stage2_target_lora_is_the_stage1_lora_at_scale_one_minus_mu_n_squared(stage2, stage1_dir):
    """The paper's initialisation, read from the export: the target received the frozen online LoRA through the EMA."""
    from models.lora import read_diffusers_lora

    result, _ = stage2
    _, stage1 = stage1_dir
    mu = load_config("toy").distill_video.ema_decay
    scale = (1 - mu**STEPS) ** 2
    assert result.manifest["export"]["target_lora_scale"] == pytest.approx(scale, rel=1e-5)
    exported = read_diffusers_lora(result.output / "lcm_lora" / "pytorch_lora_weights.safetensors")
    assert set(exported) == set(stage1)
    for key in (k for k in stage1 if k.endswith(".lora_B.weight")):
        a = key.replace("lora_B", "lora_A")
        torch.testing.assert_close(_delta(exported[key], exported[a]), scale * _delta(stage1[key], stage1[a]),
                                   atol=1e-7, rtol=1e-4)  # fmt: skip


def test_the_exported_pipeline_generates_4_step_videos_through_diffusers(stage2):
    from diffusers import AnimateDiffPipeline, LCMScheduler, MotionAdapter, UNetMotionModel

    from models.export import load_animatelcm_pipeline

    result, _ = stage2
    out = result.output
    assert MotionAdapter.from_pretrained(str(out / "motion_adapter"), local_files_only=True) is not None
    pipe = load_animatelcm_pipeline(out / "pipeline")
    assert isinstance(pipe, AnimateDiffPipeline) and isinstance(pipe.unet, UNetMotionModel)
    assert isinstance(pipe.scheduler, LCMScheduler)
    video = pipe("a red circle moving right on a white background", num_frames=8, num_inference_steps=4,
                 guidance_scale=1.0, output_type="np", height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    video = np.asarray(video)
    assert video.shape == (8, 64, 64, 3) and np.isfinite(video).all() and video.std() > 0.01
    # plain diffusers (no helper): from_pretrained + load_lora_weights give the same frames
    plain = AnimateDiffPipeline.from_pretrained(str(out / "pipeline"), local_files_only=True)
    plain.load_lora_weights(str(out / "pipeline" / "lcm_lora"))
    plain.set_progress_bar_config(disable=True)
    again = plain("a red circle moving right on a white background", num_frames=8, num_inference_steps=4,
                  guidance_scale=1.0, output_type="np", height=64, width=64,
                  generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    np.testing.assert_allclose(np.asarray(again), video, atol=2e-3)


def test_stage2_refuses_a_missing_stage1_before_any_work(videos_with_a_broken_clip, motion_dir, tmp_path):
    from pipelines.runtime import run_job

    src, _ = videos_with_a_broken_clip
    with pytest.raises(ValueError, match="--stage1"):
        run_job("distill_video", load_config("toy", _overrides(tmp_path, motion_dir)), src, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="stage 1's output"):
        run_job("distill_video", load_config("toy", _overrides(tmp_path, motion_dir)), src, tmp_path / "out",
                stage1=tmp_path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def stage3(stage2, recaptioned, curated_videos, motion_dir, ray_local):
    from pipelines.runtime import run_job

    result2, tmp = stage2
    overrides = _overrides(tmp, motion_dir, "adapt", steps=2)
    return run_job("adapt", load_config("toy", overrides), result2.output, tmp / "adapters",
                   control_data=recaptioned.output, video_data=curated_videos.output)  # fmt: skip


def test_stage3_trains_both_adapters_and_records_them(stage3, stage2, recaptioned):
    m = stage3.manifest
    assert m["stage"] == "adapt"
    assert m["inputs"]["stage2"]["digest"] == stage2[0].manifest["digest"]
    assert set(m["adapters"]) == {"control", "image_to_video"}
    dancers = sum(pq.read_metadata(f).num_rows for f in (recaptioned.output / "captioned").glob("*.parquet"))
    assert m["adapters"]["control"]["counts"]["rows"] == dancers
    for adapter in m["adapters"].values():
        assert adapter["metrics"]["step"] == 2 and np.isfinite(adapter["metrics"]["loss"])
        assert adapter["counts"]["encoded"] + sum(adapter["counts"]["failed"].values()) == adapter["counts"]["rows"]


def test_the_control_adapter_drives_diffusers_animatediff_controlnet_pipeline(stage3, stage2):
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel, LCMScheduler
    from PIL import Image

    from models.export import load_animatelcm_pipeline

    base = load_animatelcm_pipeline(stage2[0].output / "pipeline")
    controlnet = ControlNetModel.from_pretrained(str(stage3.output / "controlnet"), local_files_only=True)
    pipe = AnimateDiffControlNetPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        motion_adapter=base.motion_adapter, controlnet=controlnet,
        scheduler=LCMScheduler.from_config(base.scheduler.config),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pose = [Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)) for i in range(4)]
    video = pipe("a person dancing", conditioning_frames=pose, num_frames=4, num_inference_steps=2,
                 guidance_scale=1.0, output_type="np", height=64, width=64).frames[0]  # fmt: skip
    assert np.asarray(video).shape == (4, 64, 64, 3)


def test_the_image_to_video_adapter_loads_from_its_documented_layout(stage3):
    from models.adapters import load_i2v_adapter

    adapter = load_i2v_adapter(stage3.output / "image_to_video_adapter")
    residuals = adapter(torch.zeros(1, 4, 16, 16), 8)
    assert len(residuals) == 6 and residuals[0].shape == (8, 32, 16, 16)
    info = json.loads((stage3.output / "image_to_video_adapter" / "config.json").read_text())
    assert info["max_frames"] >= 8


def test_the_distill_video_flow_publishes_its_summary(stage2, videos_with_a_broken_clip, stage1_dir, motion_dir,
                                                       prefect_harness, tmp_path):  # fmt: skip
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.distill import DistillVideoParams, distill_video_flow

    _, tmp = stage2
    src, _ = videos_with_a_broken_clip
    overrides = [o for o in _overrides(tmp, motion_dir) if "storage_path" not in o]
    m = distill_video_flow(DistillVideoParams(
        input_dir=str(src), stage1=str(stage1_dir[0]), output_dir=str(tmp_path / "flow"),
        overrides=[*overrides, f"distill_video.train.storage_path={tmp_path / 'runs'}", "distill_video.train.steps=1",
                   "distill_video.preview_prompts=[]"],
    ))  # fmt: skip
    assert m["metrics"]["step"] == 1 and (tmp_path / "flow" / "pipeline" / "model_index.json").is_file()

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["distill-video-summary"]))
            )

    import asyncio

    found = asyncio.run(artifacts())
    assert found and "Stage 2" in found[-1].data and m["inputs"]["dataset"]["digest"] in found[-1].data


def _upload(s3, local: Path, bucket: str, prefix: str) -> str:
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def _run_module(job: str, args: list[str], overrides: list[str], tmp: Path) -> None:
    """``python -m pipelines.<job>`` in its own process with its own Ray (as a submitted job runs), the standard
    AWS_* environment only."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALCM_", "RAY_ADDRESS"))}
    env["ALCM_MIRROR_DIR"] = str(tmp / "mirror")
    cmd = [sys.executable, "-m", f"pipelines.{job}", *args, "--config", "toy", *(a for o in overrides
                                                                                 for a in ("--set", o))]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_stages_2_and_3_on_object_storage_train_the_same_weights(stage2, stage3, videos_with_a_broken_clip, stage1_dir,
                                                                 recaptioned, motion_dir, s3_server,
                                                                 tmp_path):  # fmt: skip
    """Dataset, stage-1 checkpoint, latent cache and output on S3 (moto's server, reached with only the standard
    AWS_* environment), each job in its own process with its own Ray: stage 2 keeps the same rows, records its
    inputs as their URIs, commits its cache by cache.json and trains the same motion weights as on local files;
    stage 3 then reads stage 2's output and the dancers from S3 and trains the same control adapter."""
    from contracts import storage
    from contracts.manifest import output_root, read_manifest

    s3_server.create_bucket(Bucket="stage2")
    data = _upload(s3_server, videos_with_a_broken_clip[0], "stage2", "curated")
    stage1 = _upload(s3_server, stage1_dir[0], "stage2", "stage1")
    out = "s3://stage2/checkpoints/stage2"
    overrides = [o for o in _overrides(tmp_path, motion_dir) if ".cache_dir=" not in o]
    _run_module("distill_video", ["--input", data, "--stage1", stage1, "--output", out],
                [*overrides, "distill_video.cache_dir=s3://stage2/cache"], tmp_path)  # fmt: skip
    local, _ = stage2
    m = read_manifest(out)
    assert m["counts"] == local.manifest["counts"]
    assert m["inputs"]["dataset"]["path"] == data and m["inputs"]["stage1"]["path"] == stage1
    assert m["inputs"]["dataset"]["digest"] == local.manifest["inputs"]["dataset"]["digest"]
    assert m["latent_cache"]["path"].startswith("s3://stage2/cache/") and not m["latent_cache"]["hit"]
    assert storage.is_file(storage.join(m["latent_cache"]["path"], "cache.json"))
    weights = [rel for rel in m["files"] if rel.startswith("motion_adapter/") and rel.endswith(".safetensors")]
    assert weights and all(m["files"][rel] == local.manifest["files"][rel] for rel in weights)
    root = output_root(out)
    assert {rel for rel, _ in storage.list_files(root)} == set(m["files"]) | {"manifest.json"}
    assert storage.sha256(storage.join(root, weights[0])) == m["files"][weights[0]]
    assert (tmp_path / "mirror").is_dir()  # the stage-1 LoRA was loaded from its verified local copy

    dancers = _upload(s3_server, Path(recaptioned.output), "stage2", "dancers")
    adapters = "s3://stage2/checkpoints/adapters"
    overrides = [o for o in _overrides(tmp_path, motion_dir, "adapt", steps=2) if ".cache_dir=" not in o]
    _run_module("adapt", ["--input", out, "--control-data", dancers, "--output", adapters],
                [*overrides, "adapt.cache_dir=s3://stage2/cache", "adapt.adapters=[control]"], tmp_path)  # fmt: skip
    m3 = read_manifest(adapters)
    assert m3["inputs"]["stage2"] == {"digest": m["digest"], "name": m["name"], "path": out}
    assert m3["inputs"]["control_dataset"]["path"] == dancers and set(m3["adapters"]) == {"control"}
    control = [rel for rel in m3["files"] if rel.startswith("controlnet/") and rel.endswith(".safetensors")]
    assert control and all(m3["files"][rel] == stage3.manifest["files"][rel] for rel in control)
