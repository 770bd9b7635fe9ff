"""``alcm``: the platform's command line. Every subcommand that does work runs a Prefect flow.

Configuration errors are reported before any work starts, naming the key, the value and the fix (exit code 2).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

from flows.cli_common import (
    OVERWRITE,
    PROFILE,
    SET,
    SUBMIT,
    at,
    check_io,
    config,
    existing,
    fail,
    io_params,
    location,
    print_counts,
    print_outputs,
    read_text,
)
from flows.cli_registry import audit_app, lineage, registry_app
from flows.common import apply_env_defaults

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AnimateLCM training platform.")
toy_app = typer.Typer(no_args_is_help=True, help="The toy world: generate data, train the toy model zoo.")
curate_app = typer.Typer(no_args_is_help=True, help="Curate datasets (Ray Data jobs).")
distill_app = typer.Typer(no_args_is_help=True, help="Distillation stages (Ray Train + DeepSpeed jobs).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect profiles and resolved configs.")
app.add_typer(toy_app, name="toy")
app.add_typer(curate_app, name="curate")
app.add_typer(distill_app, name="distill")
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(audit_app, name="audit")
app.command("lineage")(lineage)

@config_app.command("show")
def config_show(profile: str = PROFILE, overrides: list[str] = SET) -> None:
    """Print the resolved config of a profile with overrides, as JSON."""
    from pipelines.config import to_dict

    typer.echo(json.dumps(to_dict(config(profile, overrides)), indent=2))


@config_app.command("profiles")
def config_profiles() -> None:
    """List the shipped profiles."""
    from pipelines.config import shipped_profiles

    for name in shipped_profiles():
        typer.echo(name)


@toy_app.command("data")
def toy_data(
    out: Path = typer.Option(..., "--out", help="Directory to write the toy world into."),
    seed: int = typer.Option(0, "--seed", help="Generator seed."),
    images: int = typer.Option(2000, "--images", help="Image-text rows."),
    videos: int = typer.Option(50, "--videos", help="Text-video clips."),
    dancers: int = typer.Option(10, "--dancers", help="Dancer sequences."),
    profile: str = PROFILE,
) -> None:
    """Generate a seeded toy world with ground-truth labels (flow ``toy-world``)."""
    from flows.toy import ToyWorldParams, toy_world_flow

    config(profile, [])
    summary = toy_world_flow(
        ToyWorldParams(out=str(out), seed=seed, images=images, videos=videos, dancers=dancers, profile=profile)
    )
    typer.echo(f"toy world (seed {seed}) written to {out}: {json.dumps(summary['counts'])}")


@toy_app.command("eval-set")
def toy_eval_set(
    out: Path = typer.Option(..., "--out", help="Directory to write the prompt sets into (image/, video/)."),
    frames: int = typer.Option(None, "--frames", help="Frames of the video renders (default: distill_video.frames)."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
) -> None:
    """Write the toy world's held-out prompts with reference renders for evaluate.prompts, made for the profile's
    evaluate.seed, num_prompts and videos_per_prompt (flow ``toy-eval-set``)."""
    from flows.toy import EvalSetParams, toy_eval_set_flow

    config(profile, overrides)
    sets = toy_eval_set_flow(EvalSetParams(out=str(out), profile=profile, overrides=list(overrides), frames=frames))
    for kind, manifest in sets.items():
        typer.echo(f"{kind}: {out / kind} ({manifest['config']['prompts']} prompts, {manifest['digest']})")


@toy_app.command("train-zoo")
def toy_train_zoo(
    only: list[str] = typer.Option(
        [],
        "--only",
        help="Zoo part(s) to train (scorers, captioner, image-teacher, motion-teacher, style-teacher). Default: all.",
    ),
    out: Path = typer.Option(None, "--out", help="Zoo root (default: toyworld/zoo)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    sets: list[str] = typer.Option(
        [], "--set", help="A teacher's training setting, KEY=VALUE (repeatable), e.g. --set init_from=DIR."
    ),
) -> None:
    """Train the toy model zoo (flow ``train-toy-zoo``); slow, its products are committed."""
    from flows.toy import ZOO_DIR, TrainZooParams, train_toy_zoo_flow
    from pipelines.toy_world import ZOO_PARTS, zoo_settings

    bad = [p for p in only if p not in ZOO_PARTS]
    if bad:
        fail(f"--only {bad[0]!r}: unknown zoo part; choose from {', '.join(ZOO_PARTS)}")
    try:
        zoo_settings(only or list(ZOO_PARTS), sets)
    except ValueError as exc:
        fail(str(exc))
    params = TrainZooParams(only=only or list(ZOO_PARTS), out=str(out or ZOO_DIR), seed=seed, sets=sets)
    train_toy_zoo_flow(params)
    typer.echo(f"toy zoo trained: {', '.join(params.only)} under {params.out}")


@curate_app.command("images")
def curate_images(
    input_dir: str = typer.Option(..., "--input", help="img2dataset Parquet, webdataset tars or captioned images: a "
                                  "directory or an object-store URI (s3://bucket/raw, with the AWS_* environment)."),
    output_dir: str = typer.Option(..., "--output", help="New directory or object-store URI for kept/, audit/, "
                                   "manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Curate image-text data for quality and watermarks (flow ``curate-images``). Thresholds come from the profile's
    ``curate_images.filters``; ``--set curate_images.filters.clip_top_percent=30`` (or ``aesthetic_top_percent``)
    also keeps only the top 30% of the scored rows by that score, DataComp-style."""
    from contracts.reasons import percentile_lines
    from flows.curate import CurateImagesParams, curate_images_flow

    config(profile, overrides)
    check_io(input_dir, output_dir, overwrite)
    params = io_params(CurateImagesParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = curate_images_flow(params)
    print_counts("curated", manifest["counts"])
    for line in percentile_lines(manifest.get("percentiles")):
        typer.echo(f"top percent: {line}")
    print_outputs(output_dir, "kept", "kept rows")


@curate_app.command("videos")
def curate_videos(
    input_dir: str = typer.Option(..., "--input", help="Video files with .txt captions, webdataset tars, sequences."),
    output_dir: str = typer.Option(..., "--output", help="New directory for kept/, audit/, manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Curate text-video data: duration, resolution, motion, scene cuts, watermark, aesthetic, CLIP (flow
    ``curate-videos``)."""
    from flows.videos import VideoJobParams, curate_videos_flow

    config(profile, overrides)
    check_io(input_dir, output_dir, overwrite)
    params = io_params(VideoJobParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = curate_videos_flow(params)
    print_counts("curated", manifest["counts"])
    print_outputs(output_dir, "kept", "kept clips")


@app.command("recaption")
def recaption(
    input_dir: str = typer.Option(..., "--input", help="TikTok-style sequences, video files or webdataset tars."),
    output_dir: str = typer.Option(..., "--output", help="New directory for captioned/, audit/, manifest.json."),
    backend: str = typer.Option(None, "--backend", help="transformers or lavis (default: the profile's)."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Recaption video clips with BLIP, storing pose control frames for TikTok-style data (flow
    ``recaption``)."""
    from flows.videos import BACKENDS, RecaptionParams, recaption_videos_flow

    if backend is not None and backend not in BACKENDS:
        fail(f"--backend {backend!r}: choose {' or '.join(BACKENDS)}")
    params = io_params(RecaptionParams, input_dir, output_dir, profile, overrides, submit, overwrite, backend=backend)
    config(profile, params.config_overrides())
    check_io(input_dir, output_dir, overwrite)
    manifest = recaption_videos_flow(params)
    print_counts("recaptioned", manifest["counts"])
    print_outputs(output_dir, "captioned", "captioned")


@distill_app.command("image")
def distill_image(
    input_dir: str = typer.Option(..., "--input", help="Curated image dataset (kept/ + manifest.json)."),
    output_dir: str = typer.Option(..., "--output", help="New directory for lora/, preview.png, manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 1: distil a spatial LCM-LoRA from the profile's teacher on a curated image dataset (flow
    ``distill-image``). Re-running the same command resumes the run from its latest checkpoint."""
    from flows.distill import DistillImageParams, distill_image_flow

    config(profile, overrides)
    check_io(input_dir, output_dir, overwrite)
    params = io_params(DistillImageParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = distill_image_flow(params)
    metrics = manifest["metrics"]
    typer.echo(f"stage 1: {manifest['counts']['encoded']} images, step {metrics.get('step')}, "
               f"loss {metrics.get('loss', float('nan')):.5f}")  # fmt: skip
    typer.echo(f"LoRA:       {at(output_dir, 'lora')}")
    if manifest.get("preview"):
        typer.echo(f"preview:    {at(output_dir, 'preview.png')}")
    typer.echo(f"manifest:   {at(output_dir, 'manifest.json')}")


@distill_app.command("video")
def distill_video(
    input_dir: str = typer.Option(..., "--input", help="Curated video dataset (kept/ + manifest.json)."),
    stage1_dir: str = typer.Option(None, "--stage1", help="Stage 1's output (its LoRA); not needed with init none."),
    output_dir: str = typer.Option(..., "--output", help="New directory for motion_adapter/, pipeline/, manifest."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 2: distil the motion layers from the image teacher + motion module on curated videos, with stage 1's
    LoRA and the paper's initialisation (flow ``distill-video``). Re-running resumes."""
    from flows.distill import DistillVideoParams, distill_video_flow

    config(profile, overrides)
    check_io(input_dir, output_dir, overwrite)
    params = io_params(DistillVideoParams, input_dir, output_dir, profile, overrides, submit, overwrite,
                        stage1=existing("--stage1", stage1_dir))  # fmt: skip
    manifest = distill_video_flow(params)
    metrics = manifest["metrics"]
    typer.echo(f"stage 2: {manifest['counts']['encoded']} clips, step {metrics.get('step')}, "
               f"loss {metrics.get('loss', float('nan')):.5f}, init {manifest['export']['init']}")  # fmt: skip
    typer.echo(f"pipeline:   {at(output_dir, 'pipeline')}")
    typer.echo(f"motion:     {at(output_dir, 'motion_adapter')}")
    if manifest.get("preview"):
        typer.echo(f"preview:    {at(output_dir, 'preview.png')}")
    typer.echo(f"manifest:   {at(output_dir, 'manifest.json')}")


@app.command("adapt")
def adapt_adapters(
    input_dir: str = typer.Option(..., "--input", help="Stage 2's output (manifest.json + pipeline/)."),
    control_data: str = typer.Option(None, "--control-data", help="Recaptioned dancers with pose frames (control)."),
    video_data: str = typer.Option(None, "--video-data", help="Curated video dataset (image-to-video)."),
    output_dir: str = typer.Option(..., "--output", help="New directory for the adapters and manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 3: teacher-free adaptation of the control and image-to-video adapters against stage 2's video
    consistency model (flow ``adapt``; ``adapt.adapters`` picks which)."""
    from flows.distill import AdaptParams, adapt_flow

    config(profile, overrides)
    check_io(input_dir, output_dir, overwrite)
    params = io_params(AdaptParams, input_dir, output_dir, profile, overrides, submit, overwrite,
                        control_data=existing("--control-data", control_data),
                        video_data=existing("--video-data", video_data))  # fmt: skip
    manifest = adapt_flow(params)
    for adapter, r in manifest["adapters"].items():
        loss = r["metrics"].get("loss", float("nan"))
        typer.echo(f"{adapter}: {r['counts']['encoded']} clips, step {r['metrics'].get('step')}, loss {loss:.5f} "
                   f"-> {', '.join(r['export']['files'])}")  # fmt: skip
    typer.echo(f"outputs:    {output_dir}")
    typer.echo(f"manifest:   {at(output_dir, 'manifest.json')}")


@app.command("export")
def export_pipeline(
    pipeline_dir: Path = typer.Option(
        ..., "--pipeline", help="An AnimateLCM pipeline directory (stage 2's pipeline/)."
    ),
    personalize: Path = typer.Option(
        ...,
        "--personalize",
        help="An SD-family UNet directory (or a pipeline with unet/) whose spatial weights to use.",
    ),
    output_dir: str = typer.Option(..., "--output", help="New pipeline directory."),
) -> None:
    """Swap the spatial weights of an AnimateLCM pipeline for a personalised image model's (motion modules and
    LCM-LoRA kept), as the paper's "personalised models"."""
    from models.personalize import personalize as swap

    if "://" in output_dir:
        fail(f"--output {output_dir}: alcm export writes a local diffusers directory (what diffusers loads); write it "
             "to a path and copy it to the object store")  # fmt: skip
    for option, path in (("--pipeline", pipeline_dir), ("--personalize", personalize)):
        if not path.exists():
            fail(f"{option} {path} does not exist")
    try:
        info = swap(pipeline_dir, personalize, output_dir)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"personalised pipeline: {output_dir} (spatial weights from {personalize})")
    typer.echo(json.dumps(info, indent=2))


# ------------------------------------------------------------------------------------------------ eval and registry


@app.command("evaluate")
def evaluate_checkpoint(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A stage-1 or stage-2 output directory."),
    output_dir: str = typer.Option(..., "--output", help="New directory for the report."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
    overwrite: bool = OVERWRITE,
    register: bool = typer.Option(True, "--register/--no-register", help="Record it and its report in the registry."),
    promote: bool = typer.Option(False, "--promote", help="Run the promotion gate afterwards."),
) -> None:
    """Evaluate a checkpoint: few-step tables against the teacher's DDIM and DPM-Solver++ (FVD/FID, CLIPSIM,
    distance to the teacher, latency, memory), report.md/.html + plots + samples; registered with the checkpoint
    (flow ``evaluate``; ``alcm eval`` is the same command)."""
    from flows.evaluate import EvaluateParams, evaluate_flow

    config(profile, overrides)
    check_io(checkpoint, output_dir, overwrite)
    params = io_params(EvaluateParams, checkpoint, output_dir, profile, overrides, submit, overwrite,
                        record=register, promote=promote)  # fmt: skip
    out = evaluate_flow(params)
    typer.echo(read_text(at(output_dir, "report.md")))
    typer.echo(f"report:     {at(output_dir, 'report.md')} (report.html, report.json, plots/, "
               f"{out['manifest']['files'][-1]})")  # fmt: skip
    if out["checkpoint"]:
        typer.echo(f"registered: {out['checkpoint']} (alias candidate)")
    _echo_gate(out["decision"], "gate:       ")


@app.command("eval-set")
def eval_set_from_videos(
    input_dir: str = typer.Option(..., "--input", help="A curated text-video dataset (alcm curate videos)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the prompt set into."),
    prompts: int = typer.Option(..., "--prompts", help="Prompts (captions with enough clips), in dataset order."),
    videos_per_prompt: int = typer.Option(1, "--videos-per-prompt", help="Clips per prompt in each of sets A and B."),
    frames: int = typer.Option(16, "--frames", help="Frames per clip (the checkpoint's)."),
    size: int = typer.Option(256, "--size", help="Frame size the clips are resized to."),
    seed: int = typer.Option(1, "--seed", help="evaluate.seed of the evaluations that read it."),
) -> None:
    """Write a prompt set of real videos for evaluate.prompts (the unpaired reference for sd15): captions of a
    curated text-video dataset with their clips as reference sets A and B."""
    from pipelines.video_eval_set import write_video_eval_set

    try:
        manifest = write_video_eval_set(input_dir, out, prompts=prompts, videos_per_prompt=videos_per_prompt,
                                        frames=frames, size=size, seed=seed)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"eval set: {out} ({prompts} prompts × {videos_per_prompt} clips in sets A and B, "
               f"{manifest['digest']}); use --set evaluate.prompts={out}")  # fmt: skip


app.command("eval", hidden=True, help="The same as `alcm evaluate` (its name before every stage had one name).")(
    evaluate_checkpoint
)


def _echo_gate(decision: dict | None, label: str) -> None:
    if decision:
        verdict = "promoted to production" if decision["promoted"] else "not promoted"
        typer.echo(f"{label}{verdict} — {decision['reason']}")


@app.command("retrain")
def retrain(
    images: str = typer.Option(..., "--images", help="Raw image-text data (Parquet shards, tars or images)."),
    videos: str = typer.Option(..., "--videos", help="Raw text-video data (video files with captions, tars)."),
    dancers: str = typer.Option(..., "--dancers", help="TikTok-style dance sequences (pose control adapter)."),
    work_dir: str = typer.Option(..., "--work", help="Root of the stages' outputs and links."),
    stages: list[str] = typer.Option([], "--stage", help="Run only these stages (repeatable); default: all."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Run the promotion gate after the eval."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool | None = SUBMIT,
) -> None:
    """The end-to-end retraining flow (``retrain-animatelcm``): curate images and videos, recaption → stages 1, 2,
    3 → evaluate → register → promotion gate. Finished stages are cached on their inputs: re-running skips them."""
    from flows.retrain import RetrainParams, retrain_flow
    from pipelines.stages import STAGES

    config(profile, overrides)
    images, videos, dancers = (existing(o, p) for o, p in (("--images", images), ("--videos", videos),
                                                             ("--dancers", dancers)))  # fmt: skip
    _check_stages(stages, "--stage")
    params = RetrainParams(images=images, videos=videos, dancers=dancers, work_dir=location(work_dir),
                           stages=stages or [s.name for s in STAGES], promote=promote,
                           profile=profile, overrides=list(overrides), submit=submit)  # fmt: skip
    summary = retrain_flow(params)
    typer.echo(f"{'stage':<15}{'status':<15}{'wall s':>8}  output")
    for r in summary["stages"]:
        typer.echo(f"{r['stage']:<15}{r['status']:<15}{r['seconds']:>8.0f}  {r['output']} {r.get('registered', '')}")
    typer.echo(f"total {summary['total_s']:.0f} s: {summary['jobs_s']:.0f} s in the jobs that ran, "
               f"{summary['outside_jobs_s']:.0f} s outside them")  # fmt: skip
    if summary["report"]:
        typer.echo(f"eval report: {summary['report']}")
    if summary["checkpoint"]:
        typer.echo(f"checkpoint:  {summary['checkpoint']} (lineage: alcm lineage {summary['checkpoint']})")
    _echo_gate(summary["decision"], "gate:        ")


DATA_ROOT = typer.Option(..., "--data-root", help="Raw-data root (images/parquet, videos/wds, dancers).")
SERVE_WORK = typer.Option(..., "--work", help="Root of the outputs (and of WORK/prefect, the server's database).")
RETRAIN_CRON = typer.Option(None, "--retrain-cron", help="Cron schedule of the retrain deployment (default: none).")
RETRAIN_STAGES = typer.Option([], "--retrain-stage", help="Stages a retrain runs by default (repeatable).")
TRIGGER = typer.Option(True, "--trigger/--no-trigger", help="Retrain when alcm ingest lands a shard.")
DEBOUNCE = typer.Option(120.0, "--debounce-s", min=0, help="A retrain started by new data waits this long for more "
                        "landings; a later landing's run takes over (one retrain per burst).")
GPU_SLOTS = typer.Option(1, "--gpu-slots", min=1, help="Training and eval jobs that may run at once, from every run "
                         "(the global concurrency limit alcm-gpu).")  # fmt: skip


def _check_stages(stages: list[str], option: str) -> None:
    from pipelines.stages import BY_NAME

    unknown = sorted(set(stages) - set(BY_NAME))
    if unknown:
        fail(f"{option} {unknown[0]}: choose from {', '.join(BY_NAME)}")


@app.command("serve")
def serve_cmd(
    data_root: Path = DATA_ROOT,
    work_dir: Path = SERVE_WORK,
    port: int = typer.Option(4200, "--port", help="Prefect server port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the Prefect server (UI and API) listens on; "
                             "loopback by default."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="MLflow UI port (127.0.0.1); 0: no MLflow UI."),
    auth_string_file: Path = typer.Option(
        None, "--auth-string-file", show_default=False,
        help="File holding the user:password the Prefect API and UI require (or set ALCM_PREFECT_AUTH_STRING). "
        "Neither: one is generated into WORK/prefect/auth-string.",
    ),  # fmt: skip
    auth_string: str = typer.Option(None, "--auth-string", hidden=True, show_default=False),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="Serve the API without an auth string: "
                                          "a local sandbox only (refused unless --host is a loopback address)."),
    retrain_cron: str = RETRAIN_CRON,
    stages: list[str] = RETRAIN_STAGES,
    trigger: bool = TRIGGER,
    debounce_s: float = DEBOUNCE,
    gpu_slots: int = GPU_SLOTS,
    profile: str = PROFILE,
    overrides: list[str] = SET,
) -> None:
    """Serve the UI: a Prefect server (SQLite) with a deployment of every flow, and the MLflow UI. The API requires
    an auth string and CSRF tokens; everything listens on 127.0.0.1 unless --host says otherwise. Ctrl-C stops
    everything."""
    from flows.serve import resolve_auth, run_services

    if auth_string is not None:
        fail("--auth-string on the command line is visible to every user in process listings: put it in "
             "ALCM_PREFECT_AUTH_STRING or a file (--auth-string-file)")  # fmt: skip
    given = os.environ.get("ALCM_PREFECT_AUTH_STRING") or None
    if auth_string_file is not None:
        if not auth_string_file.is_file():
            fail(f"--auth-string-file {auth_string_file}: no such file")
        given = auth_string_file.read_text().strip() or fail(f"--auth-string-file {auth_string_file} is empty")
    settings = _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger, debounce_s,
                               gpu_slots)
    try:
        auth = resolve_auth(work_dir, given, insecure=insecure_no_auth, host=host)
    except ValueError as exc:
        fail(str(exc))
    raise typer.Exit(run_services(settings, port=port, mlflow_port=mlflow_port or None, auth_string=auth, host=host))


def _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger, debounce_s,
                               gpu_slots):
    from flows.serve import ServeSettings

    config(profile, overrides)
    if isinstance(data_root, Path) and not data_root.is_dir():
        fail(f"--data-root {data_root} is not a directory (alcm toy data --out {data_root} makes one)")
    if isinstance(data_root, str):  # alcm deploy: a path or an object-store URI
        data_root = existing("--data-root", data_root)
    _check_stages(stages, "--retrain-stage")
    if retrain_cron is not None and len(retrain_cron.split()) != 5:
        fail(f"--retrain-cron {retrain_cron!r}: expected five cron fields, e.g. '0 3 * * *'")
    return ServeSettings(
        data_root=location(data_root),
        work_dir=location(work_dir),
        profile=profile,
        overrides=list(overrides),
        retrain_cron=retrain_cron,
        retrain_stages=stages or None,
        trigger=trigger,
        debounce_s=debounce_s,
        gpu_slots=gpu_slots,
    )


@app.command("deploy")
def deploy_cmd(
    pool: str = typer.Option(..., "--pool", help="Work pool (e.g. animatelcm-k8s) that runs the flow runs."),
    data_root: str = typer.Option(..., "--data-root", help="Raw-data root (images/parquet, videos/wds, dancers): a "
                                  "path or an object-store URI."),
    work_dir: str = typer.Option(..., "--work", help="Root of the outputs: a path or an object-store URI."),
    image: str = typer.Option(None, "--image", help="Container image of the flow-run jobs (infra/docker)."),
    working_dir: Path = typer.Option(None, "--working-dir", help="With a process pool: where its flow "
                                     "runs start, the project root holding the flows."),
    retrain_cron: str = RETRAIN_CRON,
    stages: list[str] = RETRAIN_STAGES,
    trigger: bool = TRIGGER,
    debounce_s: float = DEBOUNCE,
    gpu_slots: int = GPU_SLOTS,
    profile: str = PROFILE,
    overrides: list[str] = SET,
) -> None:
    """Register every flow's deployment (same defaults, limits, schedule and trigger as alcm serve) with a work pool
    of the Prefect server at PREFECT_API_URL: the cluster's way to serve them. Also creates the global accelerator
    limit (--gpu-slots)."""
    from flows.serve import deploy_to_pool

    settings = _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger, debounce_s,
                               gpu_slots)
    ids = deploy_to_pool(settings, pool, image, str(working_dir.resolve()) if working_dir else None)
    typer.echo(f"registered {len(ids)} deployments with work pool {pool}")


@app.command("ingest")
def ingest_cmd(
    path: Path = typer.Argument(..., help="The new raw shard: a file or a directory."),
    kind: str = typer.Option(..., "--kind", help="images, videos or dancers."),
    data_root: Path = typer.Option(None, "--data-root", help="Copy the shard into this raw-data root first."),
) -> None:
    """Land a raw shard and emit the ``alcm.data.landed`` event (PREFECT_API_URL): the served retrain deployment
    runs on it."""
    from flows.ingest import IngestError, emit_landed, land

    try:
        payload = land(path, kind, data_root)
        event_id = emit_landed(payload)
    except IngestError as exc:
        fail(str(exc))
    typer.echo(f"landed {payload['shard']} ({payload['files']} files, {payload['bytes']} bytes); event {event_id}")


def main() -> None:
    """Console-script entry point."""
    apply_env_defaults()
    if not os.environ.get("PREFECT_API_URL"):  # flows run on a temporary Prefect server: it must not outlive us
        from flows.lifeline import watch

        watch()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "alembic", "mlflow"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
