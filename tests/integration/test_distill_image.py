"""Stage 1 end to end on real components: the curated toy dataset (the session's curation run), a small SD-like
teacher directory, the Ray Data encode step with its cache, Ray Train + DeepSpeed ZeRO-2 with 2 CPU workers, the
final checkpoint's export, the preview sampled with diffusers' LCMScheduler, the manifest, resume and the flow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from contracts.digests import sha256_file
from contracts.manifest import files_map
from pipelines.config import load_config

STEPS = 4


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """An untrained teacher with the toy teacher's architecture, saved by ``StableDiffusionPipeline``: the job's
    mechanics do not depend on what the teacher draws (the committed teacher's quality is tested on its own)."""
    from diffusers import StableDiffusionPipeline

    from toyworld.image_teacher import build_scheduler, build_text_encoder, build_unet, build_vae, write_clip_tokenizer

    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(out / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=build_vae(),
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def curated_with_a_broken_row(curated, tmp_path_factory) -> tuple[Path, int]:
    """The session's curated dataset plus one kept row whose image bytes do not decode."""
    out = tmp_path_factory.mktemp("curated_broken") / "ds"
    shutil.copytree(curated.output, out)
    first = sorted((out / "kept").glob("*.parquet"))[0]
    row = pq.read_table(first).slice(0, 1).to_pylist()[0]
    row.update(key="broken-0001", image=b"\x89PNG\r\n\x1a\n-truncated")
    schema = pq.read_schema(first)
    pq.write_table(pa.Table.from_pylist([row], schema=schema), out / "kept" / "zz-broken.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = files_map(out, ("kept", "audit"))  # a dataset published with the broken row
    (out / "manifest.json").write_text(json.dumps(manifest))
    kept = sum(pq.read_metadata(f).num_rows for f in (out / "kept").glob("*.parquet"))
    return out, kept


def _overrides(teacher_dir: Path, tmp: Path, steps: int = STEPS) -> list[str]:
    return [
        f"teacher.pretrained_dir={teacher_dir}",
        f"distill_image.cache_dir={tmp / 'cache'}",
        f"distill_image.train.storage_path={tmp / 'runs'}",
        f"distill_image.train.steps={steps}",
        "distill_image.train.checkpoint_every=2",
        "distill_image.train.micro_batch_size=4",
        "distill_image.train.log_every=1",
        "distill_image.train.warmup_steps=0",
        "distill_image.train.lr=0.001",
        "distill_image.preview_prompts=[a large red circle in the center on a white background]",
        "distill_image.preview_steps=2",
    ]


def _cfg(teacher_dir: Path, tmp: Path, steps: int = STEPS):
    return load_config("toy", _overrides(teacher_dir, tmp, steps))


@pytest.fixture(scope="module")
def first_run(teacher_dir, curated_with_a_broken_row, ray_local, tmp_path_factory):
    from pipelines.runtime import run_job

    tmp = tmp_path_factory.mktemp("stage1")
    src, kept = curated_with_a_broken_row
    result = run_job("distill_image", _cfg(teacher_dir, tmp), src, tmp / "out")
    return result, tmp, src, kept


def test_stage1_trains_on_two_workers_and_accounts_for_every_kept_row(first_run, teacher_dir):
    result, tmp, src, kept = first_run
    m = result.manifest
    assert m["counts"] == {"rows": kept, "encoded": kept - 1, "failed": {"undecodable": 1}}
    assert m["metrics"]["step"] == STEPS and m["metrics"]["resumed_from"] == 0
    assert np.isfinite(m["metrics"]["loss"])
    # both ranks hold the same LoRA and the same EMA target at the start and after the first step (the LoRA's A
    # factors are drawn when the Task is built: every rank builds it under the run's seed)
    assert m["metrics"]["replica_spread_start"] == m["metrics"]["replica_spread_step"] == 0.0
    assert m["run"]["name"].startswith("stage1-out-") and Path(m["run"]["checkpoint"]).is_dir()
    assert m["inputs"]["dataset"]["digest"] == json.loads((src / "manifest.json").read_text())["digest"]
    teacher = m["inputs"]["teacher"]
    assert teacher["pretrained_dir"] == str(teacher_dir)
    assert teacher["digests"]["unet/diffusion_pytorch_model.safetensors"] == sha256_file(
        teacher_dir / "unet" / "diffusion_pytorch_model.safetensors"
    )
    for rel, digest in m["files"].items():
        assert sha256_file(result.output / rel) == digest
    assert json.loads((result.output / "manifest.json").read_text())["digest"] == m["digest"]


def test_the_latent_cache_holds_vae_latents_of_the_kept_images(first_run, teacher_dir):
    from diffusers import AutoencoderKL

    from filters.decode import DecodeConfig
    from pipelines.latent_cache import decode_square, pixels

    result, tmp, src, _ = first_run
    cache = Path(result.manifest["latent_cache"]["path"])
    table = pq.read_table(cache / "data")
    assert set(table.column_names) >= {"key", "caption", "error", "latents", "encoder_hidden_states"}
    row = table.filter(pc.equal(table["error"], "")).slice(0, 1).to_pylist()[0]
    source = next(
        r
        for f in sorted((src / "kept").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
        if r["key"] == row["key"]
    )
    vae = AutoencoderKL.from_pretrained(str(teacher_dir / "vae"))
    img, error = decode_square(source["image"], 64, DecodeConfig())
    with torch.no_grad():
        expected = vae.encode(torch.from_numpy(pixels([img]))).latent_dist.mean[0] * vae.config.scaling_factor
    np.testing.assert_allclose(np.asarray(row["latents"]), expected.numpy(), atol=1e-4)


def test_the_encode_actors_write_the_same_cache_bytes_whatever_their_number(teacher_dir, curated_with_a_broken_row,
                                                                             ray_local, tmp_path):  # fmt: skip
    from pipelines.distill_image import encode_spec
    from pipelines.latent_cache import EncodePool, encode_cached

    src, kept = curated_with_a_broken_row
    spec = encode_spec(_cfg(teacher_dir, tmp_path))
    files = sorted((src / "kept").glob("*.parquet"))
    metas = [encode_cached(spec, files, "k", cache_dir=str(tmp_path / f"actors{n}"), pool=EncodePool(8, n, 0.5, 0.0))[1]
             for n in (2, 1)]  # fmt: skip
    assert len(metas[0]["files"]) >= 2 and metas[0]["files"] == metas[1]["files"]  # 128 rows a file, sha256 each
    assert metas[0]["counts"] == metas[1]["counts"] == {"rows": kept, "encoded": kept - 1,
                                                        "failed": {"undecodable": 1}}  # fmt: skip


def test_the_export_loads_into_a_stable_diffusion_pipeline_with_the_lcm_scheduler(first_run, teacher_dir):
    from diffusers import LCMScheduler

    from models.sampling import load_pipeline, sample

    result, *_ = first_run
    lora = result.output / "lora"
    diffusers_sd = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    kohya = load_file(str(lora / "lcm_lora_kohya.safetensors"))
    assert diffusers_sd and all(k.startswith("unet.") for k in diffusers_sd)
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    # trained: the B matrices (zero at the start) moved
    assert any(v.abs().max() > 0 for k, v in diffusers_sd.items() if "lora_B" in k or "lora.up" in k)
    pipe = load_pipeline(teacher_dir, scheduler="lcm", lora_dir=lora)
    assert isinstance(pipe.scheduler, LCMScheduler)
    base = load_pipeline(teacher_dir, scheduler="lcm")
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([499])
    ehs = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(pipe.unet(x, t, ehs).sample, base.unet(x, t, ehs).sample)
    images = sample(pipe, ["a small blue square on the left on a black background"], steps=2, guidance_scale=1.0,
                    seeds=[0])  # fmt: skip
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
    assert result.manifest["preview"]["file"] == "preview.png" and (result.output / "preview.png").is_file()


def test_rerunning_through_the_flow_resumes_the_run_reuses_the_cache_and_publishes_a_summary(
    first_run, teacher_dir, prefect_harness
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.distill import DistillImageParams, distill_image_flow

    result, tmp, src, _ = first_run
    overrides = [o for o in _overrides(teacher_dir, tmp) if not o.startswith("distill_image.train.steps=")]
    state = distill_image_flow(
        DistillImageParams(
            input_dir=str(src),
            output_dir=str(tmp / "out"),
            overrides=[*overrides, f"distill_image.train.steps={STEPS + 2}"],
            overwrite=True,
        ),
        return_state=True,
    )
    m = state.result()
    assert (m["metrics"]["step"], m["metrics"]["resumed_from"]) == (STEPS + 2, STEPS)
    assert m["latent_cache"]["key"] == result.manifest["latent_cache"]["key"]
    assert result.manifest["latent_cache"]["hit"] is False  # the first run encoded the dataset
    assert m["latent_cache"]["hit"] is True  # the re-run found the same cache and encoded nothing
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(  # this run's (other tests' flow runs publish summaries under the same key)
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["distill-image-summary"]),
                                           flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )  # fmt: skip
    assert len(arts) == 1 and m["inputs"]["dataset"]["digest"] in arts[0].data
    assert f"| step | {STEPS + 2} |" in arts[0].data


def test_a_corrupted_latest_checkpoint_is_passed_over_for_the_one_before(first_run, teacher_dir):
    from pipelines.runtime import run_job

    _, tmp, src, _ = first_run
    (run_dir,) = [p for p in (tmp / "runs").iterdir() if p.is_dir()]
    ckpts = sorted(p for p in run_dir.iterdir() if p.name.startswith("checkpoint_") and p.is_dir())
    assert len(ckpts) >= 2 and all((c / "digests").is_dir() for c in ckpts)
    latest, before = ckpts[-1], ckpts[-2]
    victim = max((p for p in (latest / "ckpt").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    previous_step = json.loads((before / "step.json").read_text())["step"]
    target = json.loads((latest / "step.json").read_text())["step"] + 2
    m = run_job("distill_image", _cfg(teacher_dir, tmp, target), src, tmp / "out", overwrite=True).manifest
    assert (m["metrics"]["resumed_from"], m["metrics"]["step"]) == (previous_step, target)


def test_bad_inputs_fail_before_any_work_naming_what_is_wrong(teacher_dir, curated, tmp_path):
    from pipelines.runtime import run_job

    cfg = _cfg(teacher_dir, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--input .*no manifest\.json"):
        run_job("distill_image", cfg, tmp_path / "empty", tmp_path / "out")
    missing = load_config("toy", [f"teacher.pretrained_dir={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match=r"teacher\.pretrained_dir"):
        run_job("distill_image", missing, curated.output, tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_under_zero3_the_ema_target_follows_the_partitioned_student(teacher_dir, curated, ray_local, tmp_path):
    """ZeRO-3 partitions the student's LoRA across the 2 ranks; the EMA update and the export gather it."""
    from pipelines.runtime import run_job

    cfg = load_config(
        "toy",
        [
            *_overrides(teacher_dir, tmp_path, 3),
            "distill_image.train.zero_stage=3",
            "distill_image.ema_decay=0.5",
            "distill_image.preview_prompts=[]",
        ],
    )
    m = run_job("distill_image", cfg, curated.output, tmp_path / "z3").manifest
    assert m["metrics"]["step"] == 3 and np.isfinite(m["metrics"]["loss"])
    assert m["metrics"]["replica_spread_start"] == m["metrics"]["replica_spread_step"] == 0.0  # gathered under ZeRO-3
    lora = load_file(str(tmp_path / "z3" / "lora" / "pytorch_lora_weights.safetensors"))
    ups = [v for k, v in lora.items() if "lora_B" in k]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert any(v.abs().max() > 0 for v in ups)  # B starts at 0: only a real EMA of the trained student moves it


def test_without_precomputed_latents_workers_encode_pixels_and_every_row_is_still_counted(
    teacher_dir, curated_with_a_broken_row, ray_local, tmp_path
):
    from pipelines.runtime import run_job

    src, kept = curated_with_a_broken_row
    overrides = [*_overrides(teacher_dir, tmp_path, 2), "distill_image.precompute_latents=false"]
    cfg = load_config("toy", [*overrides, "distill_image.preview_prompts=[]"])
    m = run_job("distill_image", cfg, src, tmp_path / "px").manifest
    assert m["counts"] == {"rows": kept, "encoded": kept - 1, "failed": {"undecodable": 1}}
    assert m["latent_cache"] is None and not (tmp_path / "cache").exists()
    assert m["metrics"]["step"] == 2 and np.isfinite(m["metrics"]["loss"])
