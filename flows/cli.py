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

from flows.common import apply_env_defaults

app = typer.Typer(add_completion=False, no_args_is_help=True, help="AnimateLCM training platform.")
toy_app = typer.Typer(no_args_is_help=True, help="The toy world: generate data, train the toy model zoo.")
curate_app = typer.Typer(no_args_is_help=True, help="Curate datasets (Ray Data jobs).")
distill_app = typer.Typer(no_args_is_help=True, help="Distillation stages (Ray Train + DeepSpeed jobs).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect profiles and resolved configs.")
registry_app = typer.Typer(no_args_is_help=True, help="Registered datasets and checkpoints (MLflow-backed).")
audit_app = typer.Typer(no_args_is_help=True, help="Audit queries: why rows were dropped, where a sample went.")
app.add_typer(toy_app, name="toy")
app.add_typer(curate_app, name="curate")
app.add_typer(distill_app, name="distill")
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(audit_app, name="audit")

PROFILE = typer.Option("toy", "--profile", "-p", help="Profile name under configs/ or a YAML path.")
SET = typer.Option([], "--set", "-s", help="Config override key=value (repeatable).")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _config(profile: str, overrides: list[str]):
    from pipelines.config import ConfigError, load_config

    try:
        return load_config(profile, overrides)
    except ConfigError as exc:
        _fail(f"config: {exc}")


@config_app.command("show")
def config_show(profile: str = PROFILE, overrides: list[str] = SET) -> None:
    """Print the resolved config of a profile with overrides, as JSON."""
    from pipelines.config import to_dict

    typer.echo(json.dumps(to_dict(_config(profile, overrides)), indent=2))


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

    _config(profile, [])
    summary = toy_world_flow(
        ToyWorldParams(out=str(out), seed=seed, images=images, videos=videos, dancers=dancers, profile=profile)
    )
    typer.echo(f"toy world (seed {seed}) written to {out}: {json.dumps(summary['counts'])}")


@toy_app.command("train-zoo")
def toy_train_zoo(
    only: list[str] = typer.Option(
        [],
        "--only",
        help="Zoo part(s) to train (scorers, captioner, image-teacher, motion-teacher, style-teacher). Default: all.",
    ),
    out: Path = typer.Option(None, "--out", help="Zoo root (default: toyworld/zoo)."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
) -> None:
    """Train the toy model zoo (flow ``train-toy-zoo``); slow, its products are committed."""
    from flows.toy import ZOO_DIR, TrainZooParams, train_toy_zoo_flow
    from pipelines.toy_world import ZOO_PARTS

    bad = [p for p in only if p not in ZOO_PARTS]
    if bad:
        _fail(f"--only {bad[0]!r}: unknown zoo part; choose from {', '.join(ZOO_PARTS)}")
    params = TrainZooParams(only=only or list(ZOO_PARTS), out=str(out or ZOO_DIR), seed=seed)
    train_toy_zoo_flow(params)
    typer.echo(f"toy zoo trained: {', '.join(params.only)} under {params.out}")


def _check_io(input_dir: Path, output_dir: Path, overwrite: bool) -> None:
    if not input_dir.exists():
        _fail(f"--input {input_dir} does not exist")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        _fail(f"--output {output_dir} is not empty; choose a new directory or pass --overwrite")


def _print_counts(what: str, counts: dict) -> None:
    clips = f" ({counts['clips']} clips)" if "clips" in counts else ""
    typer.echo(f"{what} {counts['input']} inputs{clips}: {json.dumps(counts['by_decision'])}")
    for reason, n in counts["by_reason"].items():
        typer.echo(f"  {reason:<22} {n}")


def _print_outputs(output_dir: Path, dataset: str, label: str) -> None:
    typer.echo(f"{label + ':':<11} {output_dir / dataset}\naudit:      {output_dir / 'audit'}\n"
               f"manifest:   {output_dir / 'manifest.json'}")  # fmt: skip


def _io_params(cls, input_dir: Path, output_dir: Path, profile: str, overrides: list[str], submit: bool,
               overwrite: bool, **extra):  # fmt: skip
    """The flow parameters every input → output job command builds (paths made absolute)."""
    return cls(input_dir=str(input_dir.resolve()), output_dir=str(output_dir.resolve()), profile=profile,
               overrides=list(overrides), submit=submit, overwrite=overwrite, **extra)  # fmt: skip


SUBMIT = typer.Option(False, "--submit", help="Submit as a Ray job to RAY_ADDRESS (http://head:8265).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")


@curate_app.command("images")
def curate_images(
    input_dir: Path = typer.Option(..., "--input", help="img2dataset Parquet, webdataset tars or captioned images."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for kept/, audit/, manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Curate image-text data for quality and watermarks (flow ``curate-images``)."""
    from flows.curate import CurateImagesParams, curate_images_flow

    _config(profile, overrides)
    _check_io(input_dir, output_dir, overwrite)
    params = _io_params(CurateImagesParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = curate_images_flow(params)
    _print_counts("curated", manifest["counts"])
    _print_outputs(output_dir, "kept", "kept rows")


@curate_app.command("videos")
def curate_videos(
    input_dir: Path = typer.Option(..., "--input", help="Video files with .txt captions, webdataset tars, sequences."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for kept/, audit/, manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Curate text-video data: duration, resolution, motion, scene cuts, watermark, aesthetic, CLIP (flow
    ``curate-videos``)."""
    from flows.videos import VideoJobParams, curate_videos_flow

    _config(profile, overrides)
    _check_io(input_dir, output_dir, overwrite)
    params = _io_params(VideoJobParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = curate_videos_flow(params)
    _print_counts("curated", manifest["counts"])
    _print_outputs(output_dir, "kept", "kept clips")


@app.command("recaption")
def recaption(
    input_dir: Path = typer.Option(..., "--input", help="TikTok-style sequences, video files or webdataset tars."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for captioned/, audit/, manifest.json."),
    backend: str = typer.Option(None, "--backend", help="transformers or lavis (default: the profile's)."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Recaption video clips with BLIP, storing pose control frames for TikTok-style data (flow
    ``recaption``)."""
    from flows.videos import BACKENDS, RecaptionParams, recaption_videos_flow

    if backend is not None and backend not in BACKENDS:
        _fail(f"--backend {backend!r}: choose {' or '.join(BACKENDS)}")
    params = _io_params(RecaptionParams, input_dir, output_dir, profile, overrides, submit, overwrite, backend=backend)
    _config(profile, params.config_overrides())
    _check_io(input_dir, output_dir, overwrite)
    manifest = recaption_videos_flow(params)
    _print_counts("recaptioned", manifest["counts"])
    _print_outputs(output_dir, "captioned", "captioned")


@distill_app.command("image")
def distill_image(
    input_dir: Path = typer.Option(..., "--input", help="Curated image dataset (kept/ + manifest.json)."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for lora/, preview.png, manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 1: distil a spatial LCM-LoRA from the profile's teacher on a curated image dataset (flow
    ``distill-image``). Re-running the same command resumes the run from its latest checkpoint."""
    from flows.distill import DistillImageParams, distill_image_flow

    _config(profile, overrides)
    _check_io(input_dir, output_dir, overwrite)
    params = _io_params(DistillImageParams, input_dir, output_dir, profile, overrides, submit, overwrite)
    manifest = distill_image_flow(params)
    metrics = manifest["metrics"]
    typer.echo(f"stage 1: {manifest['counts']['encoded']} images, step {metrics.get('step')}, "
               f"loss {metrics.get('loss', float('nan')):.5f}")  # fmt: skip
    typer.echo(f"LoRA:       {output_dir / 'lora'}")
    if manifest.get("preview"):
        typer.echo(f"preview:    {output_dir / 'preview.png'}")
    typer.echo(f"manifest:   {output_dir / 'manifest.json'}")


def _existing(option: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.exists():
        _fail(f"{option} {path} does not exist")
    return str(path.resolve())


@distill_app.command("video")
def distill_video(
    input_dir: Path = typer.Option(..., "--input", help="Curated video dataset (kept/ + manifest.json)."),
    stage1_dir: Path = typer.Option(None, "--stage1", help="Stage 1's output (its LoRA); not needed with init none."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for motion_adapter/, pipeline/, manifest."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 2: distil the motion layers from the image teacher + motion module on curated videos, with stage 1's
    LoRA and the paper's initialisation (flow ``distill-video``). Re-running resumes."""
    from flows.distill import DistillVideoParams, distill_video_flow

    _config(profile, overrides)
    _check_io(input_dir, output_dir, overwrite)
    params = _io_params(DistillVideoParams, input_dir, output_dir, profile, overrides, submit, overwrite,
                        stage1=_existing("--stage1", stage1_dir))  # fmt: skip
    manifest = distill_video_flow(params)
    metrics = manifest["metrics"]
    typer.echo(f"stage 2: {manifest['counts']['encoded']} clips, step {metrics.get('step')}, "
               f"loss {metrics.get('loss', float('nan')):.5f}, init {manifest['export']['init']}")  # fmt: skip
    typer.echo(f"pipeline:   {output_dir / 'pipeline'}")
    typer.echo(f"motion:     {output_dir / 'motion_adapter'}")
    if manifest.get("preview"):
        typer.echo(f"preview:    {output_dir / 'preview.png'}")
    typer.echo(f"manifest:   {output_dir / 'manifest.json'}")


@app.command("adapt")
def adapt_adapters(
    input_dir: Path = typer.Option(..., "--input", help="Stage 2's output (manifest.json + pipeline/)."),
    control_data: Path = typer.Option(None, "--control-data", help="Recaptioned dancers with pose frames (control)."),
    video_data: Path = typer.Option(None, "--video-data", help="Curated video dataset (image-to-video)."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for the adapters and manifest.json."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
) -> None:
    """Stage 3: teacher-free adaptation of the control and image-to-video adapters against stage 2's video
    consistency model (flow ``adapt``; ``adapt.adapters`` picks which)."""
    from flows.distill import AdaptParams, adapt_flow

    _config(profile, overrides)
    _check_io(input_dir, output_dir, overwrite)
    params = _io_params(AdaptParams, input_dir, output_dir, profile, overrides, submit, overwrite,
                        control_data=_existing("--control-data", control_data),
                        video_data=_existing("--video-data", video_data))  # fmt: skip
    manifest = adapt_flow(params)
    for adapter, r in manifest["adapters"].items():
        loss = r["metrics"].get("loss", float("nan"))
        typer.echo(f"{adapter}: {r['counts']['encoded']} clips, step {r['metrics'].get('step')}, loss {loss:.5f} "
                   f"-> {', '.join(r['export']['files'])}")  # fmt: skip
    typer.echo(f"outputs:    {output_dir}")
    typer.echo(f"manifest:   {output_dir / 'manifest.json'}")


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
    output_dir: Path = typer.Option(..., "--output", help="New pipeline directory."),
) -> None:
    """Swap the spatial weights of an AnimateLCM pipeline for a personalised image model's (motion modules and
    LCM-LoRA kept), as the paper's "personalised models"."""
    from models.personalize import personalize as swap

    for option, path in (("--pipeline", pipeline_dir), ("--personalize", personalize)):
        if not path.exists():
            _fail(f"{option} {path} does not exist")
    try:
        info = swap(pipeline_dir, personalize, output_dir)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"personalised pipeline: {output_dir} (spatial weights from {personalize})")
    typer.echo(json.dumps(info, indent=2))


# ------------------------------------------------------------------------------------------------ eval and registry


@app.command("evaluate")
def evaluate_checkpoint(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A stage-1 or stage-2 output directory."),
    output_dir: Path = typer.Option(..., "--output", help="New directory for the report."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
    overwrite: bool = OVERWRITE,
    register: bool = typer.Option(True, "--register/--no-register", help="Record it and its report in the registry."),
    promote: bool = typer.Option(False, "--promote", help="Run the promotion gate afterwards."),
) -> None:
    """Evaluate a checkpoint: few-step tables against the teacher's DDIM and DPM-Solver++ (FVD/FID, CLIPSIM,
    distance to the teacher, latency, memory), report.md + plots + samples; registered with the checkpoint
    (flow ``evaluate``; ``alcm eval`` is the same command)."""
    from flows.evaluate import EvaluateParams, evaluate_flow

    _config(profile, overrides)
    _check_io(checkpoint, output_dir, overwrite)
    params = _io_params(EvaluateParams, checkpoint, output_dir, profile, overrides, submit, overwrite,
                        record=register, promote=promote)  # fmt: skip
    out = evaluate_flow(params)
    typer.echo((output_dir / "report.md").read_text())
    typer.echo(f"report:     {output_dir / 'report.md'} (report.json, plots/, {out['manifest']['files'][-1]})")
    if out["checkpoint"]:
        typer.echo(f"registered: {out['checkpoint']} (alias candidate)")
    _echo_gate(out["decision"], "gate:       ")


app.command("eval", hidden=True, help="The same as `alcm evaluate` (its name before every stage had one name).")(
    evaluate_checkpoint
)


def _echo_gate(decision: dict | None, label: str) -> None:
    if decision:
        verdict = "promoted to production" if decision["promoted"] else "not promoted"
        typer.echo(f"{label}{verdict} — {decision['reason']}")


@app.command("retrain")
def retrain(
    images: Path = typer.Option(..., "--images", help="Raw image-text data (Parquet shards, tars or images)."),
    videos: Path = typer.Option(..., "--videos", help="Raw text-video data (video files with captions, tars)."),
    dancers: Path = typer.Option(..., "--dancers", help="TikTok-style dance sequences (pose control adapter)."),
    work_dir: Path = typer.Option(..., "--work", help="Root of the stages' outputs and links."),
    stages: list[str] = typer.Option([], "--stage", help="Run only these stages (repeatable); default: all."),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="Run the promotion gate after the eval."),
    profile: str = PROFILE,
    overrides: list[str] = SET,
    submit: bool = SUBMIT,
) -> None:
    """The end-to-end retraining flow (``retrain-animatelcm``): curate images and videos, recaption → stages 1, 2,
    3 → evaluate → register → promotion gate. Finished stages are cached on their inputs: re-running skips them."""
    from flows.retrain import RetrainParams, retrain_flow
    from pipelines.stages import STAGES

    _config(profile, overrides)
    for option, path in (("--images", images), ("--videos", videos), ("--dancers", dancers)):
        if not path.exists():
            _fail(f"{option} {path} does not exist")
    _check_stages(stages, "--stage")
    params = RetrainParams(images=str(images.resolve()), videos=str(videos.resolve()), dancers=str(dancers.resolve()),
                           work_dir=str(work_dir.resolve()), stages=stages or [s.name for s in STAGES], promote=promote,
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


def _check_stages(stages: list[str], option: str) -> None:
    from pipelines.stages import BY_NAME

    unknown = sorted(set(stages) - set(BY_NAME))
    if unknown:
        _fail(f"{option} {unknown[0]}: choose from {', '.join(BY_NAME)}")


@app.command("serve")
def serve_cmd(
    data_root: Path = DATA_ROOT,
    work_dir: Path = SERVE_WORK,
    port: int = typer.Option(4200, "--port", help="Prefect server port (127.0.0.1)."),
    mlflow_port: int = typer.Option(5000, "--mlflow-port", help="MLflow UI port; 0: no MLflow UI."),
    auth_string: str = typer.Option(
        None,
        "--auth-string",
        envvar="ALCM_PREFECT_AUTH_STRING",
        show_default=False,
        help="Require this user:password on the Prefect API (or set ALCM_PREFECT_AUTH_STRING).",
    ),  # fmt: skip
    retrain_cron: str = RETRAIN_CRON,
    stages: list[str] = RETRAIN_STAGES,
    trigger: bool = TRIGGER,
    profile: str = PROFILE,
    overrides: list[str] = SET,
) -> None:
    """Serve the UI: a Prefect server (SQLite) on 127.0.0.1 with a deployment of every flow, and the MLflow UI.
    Ctrl-C stops everything."""
    from flows.serve import run_services

    settings = _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger)
    raise typer.Exit(run_services(settings, port=port, mlflow_port=mlflow_port or None, auth_string=auth_string))


def _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger):
    from flows.serve import ServeSettings

    _config(profile, overrides)
    if not data_root.is_dir():
        _fail(f"--data-root {data_root} is not a directory (alcm toy data --out {data_root} makes one)")
    _check_stages(stages, "--retrain-stage")
    if retrain_cron is not None and len(retrain_cron.split()) != 5:
        _fail(f"--retrain-cron {retrain_cron!r}: expected five cron fields, e.g. '0 3 * * *'")
    return ServeSettings(
        data_root=str(data_root.resolve()),
        work_dir=str(work_dir.resolve()),
        profile=profile,
        overrides=list(overrides),
        retrain_cron=retrain_cron,
        retrain_stages=stages or None,
        trigger=trigger,
    )


@app.command("deploy")
def deploy_cmd(
    pool: str = typer.Option(..., "--pool", help="Work pool (e.g. animatelcm-k8s) that runs the flow runs."),
    data_root: Path = DATA_ROOT,
    work_dir: Path = SERVE_WORK,
    image: str = typer.Option(None, "--image", help="Container image of the flow-run jobs (infra/docker)."),
    retrain_cron: str = RETRAIN_CRON,
    stages: list[str] = RETRAIN_STAGES,
    trigger: bool = TRIGGER,
    profile: str = PROFILE,
    overrides: list[str] = SET,
) -> None:
    """Register every flow's deployment (same defaults, limits, schedule and trigger as alcm serve) with a work pool
    of the Prefect server at PREFECT_API_URL: the cluster's way to serve them."""
    from flows.serve import deploy_to_pool

    settings = _serve_settings(data_root, work_dir, profile, overrides, retrain_cron, stages, trigger)
    ids = deploy_to_pool(settings, pool, image)
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
        _fail(str(exc))
    typer.echo(f"landed {payload['shard']} ({payload['files']} files, {payload['bytes']} bytes); event {event_id}")


def _registry():
    from flows.common import open_registry

    return open_registry()


def _registry_call(fn, *args, **kwargs):
    from registry.store import RegistryError

    try:
        return fn(*args, **kwargs)
    except (RegistryError, FileNotFoundError) as exc:
        _fail(str(exc))


def _headline(entry) -> str:
    h = entry.headline
    if entry.kind == "dataset":
        return " ".join(f"{k} {int(v)}" for k, v in h.items())
    order = ("fvd", "fid", "clipsim", "latent_mse", "temporal")
    keys = sorted((k for k in h if k.endswith("@4") and k.split("@")[0] in order), key=lambda k: order.index(
        k.split("@")[0])) or list(h)[:3]  # fmt: skip
    return " ".join(f"{k} {h[k]:.4g}" for k in keys)


@registry_app.command("list")
def registry_list(kind: str = typer.Option(None, "--kind", help="dataset or checkpoint")) -> None:
    """Every registered version, one line each: NAME@VERSION, kind, aliases, headline metrics."""
    entries = _registry_call(_registry().list, kind)
    if not entries:
        typer.echo("the registry is empty (flows register what they write; `alcm registry register DIR`)")
    width = max((len(e.ref) for e in entries), default=0) + 2
    for e in entries:
        aliases = f" [{', '.join(e.aliases)}]" if e.aliases else ""
        typer.echo(f"{e.ref:<{width}}{e.type:<24}{_headline(e)}{aliases}")


@registry_app.command("show")
def registry_show(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
    metrics: list[str] = typer.Option(
        [], "--metric", "-m", help="Eval tables to print (default: FVD/FID, CLIPSIM, latency); repeatable"
    ),  # fmt: skip
) -> None:
    """One version: where it is, what it was made from, its aliases, headline and last gate decision, and the
    tables of its eval report."""
    from contracts.report import tables

    registry = _registry()
    e = _registry_call(registry.get, ref)
    typer.echo(f"{e.ref}  {e.type}  {e.digest}")
    typer.echo(f"  location: {e.location}")
    typer.echo(f"  aliases:  {', '.join(e.aliases) or 'none'}")
    typer.echo("  parents:  " + (", ".join(f"{p.role} {p.ref}" for p in e.parents) or "none (raw inputs only)"))
    typer.echo(f"  headline: {_headline(e) or 'none'}")
    if "alcm.promotion" in e.tags:
        d = json.loads(e.tags["alcm.promotion"])
        typer.echo(f"  gate:     {'promoted' if d['promoted'] else 'not promoted'} — {d['reason']}")
    report = registry.eval_report(e)
    if report is None:
        typer.echo("  not evaluated (alcm eval --checkpoint DIR)" if e.kind == "checkpoint" else "")
        return
    fd = report["setup"]["fd"]
    typer.echo(f"  eval:     {report['setup']['num_prompts']} prompts, {fd}: {report['setup']['extractor']}; "
               f"reference: {report['setup']['reference']}")  # fmt: skip
    typer.echo(tables(report, list(metrics) or [fd, "clipsim", "latency_s"]))


@registry_app.command("register")
def registry_register(output_dir: Path = typer.Argument(..., help="A job output directory (manifest.json).")) -> None:
    """Register a job output (and the job outputs it was made from) that no flow recorded."""
    entry = _registry_call(_registry().register, output_dir)
    typer.echo(f"{entry.ref} {entry.type} {entry.digest}")


@registry_app.command("alias")
def registry_alias(ref: str = typer.Argument(...), alias: str = typer.Argument(..., help="candidate")) -> None:
    """Point an alias at a version (production moves only through `alcm registry promote`)."""
    if alias == "production":
        _fail("production moves only through the promotion gate: `alcm registry promote NAME@VERSION`")
    typer.echo(_registry_call(_registry().set_alias, ref, alias).ref)


@registry_app.command("promote")
def registry_promote(ref: str = typer.Argument(..., help="NAME@VERSION or NAME@candidate"),
                     profile: str = PROFILE, overrides: list[str] = SET) -> None:  # fmt: skip
    """Run the promotion gate: production moves to REF only if its eval beats production's on the profile's rules
    (flow ``promote-checkpoint``)."""
    from flows.evaluate import PromoteParams, decision_markdown, promote_flow

    _config(profile, overrides)
    _registry_call(_registry().get, ref)
    decision = promote_flow(PromoteParams(checkpoint=ref, profile=profile, overrides=list(overrides)))
    typer.echo(decision_markdown(decision))


@registry_app.command("diff")
def registry_diff(a: str = typer.Argument(...), b: str = typer.Argument(...)) -> None:
    """What changed from A to B: config keys, inputs, training and eval metrics, code version."""
    d = _registry_call(_registry().diff, a, b)
    typer.echo(f"{d['a']} → {d['b']}")
    typer.echo(f"  digest:       {d['digest'][0]} → {d['digest'][1]}")
    if d["code_version"][0] != d["code_version"][1]:
        typer.echo(f"  code version: {d['code_version'][0]} → {d['code_version'][1]}")
    for section in ("config", "inputs", "metrics"):
        typer.echo(f"  {section}:" + ("" if d[section] else " unchanged"))
        for key, (old, new) in d[section].items():
            typer.echo(f"    {key}: {_short(old)} → {_short(new)}")


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _lineage_lines(node: dict, show_config: bool, prefix: str = "", role: str | None = None) -> list[str]:
    import hashlib

    e, m = node["entry"], node["manifest"]
    config = json.dumps(m.get("config") or {}, sort_keys=True)
    head = f"{role + ': ' if role else ''}{e.ref}  {e.type}"
    head += f"  stage {m['stage']}" if m.get("stage") else ""
    head += f"  {_headline(e)}" if e.headline else ""
    lines = [head, f"  digest {e.digest}", f"  code {m.get('code_version', 'unknown')}  config sha256:"
             f"{hashlib.sha256(config.encode()).hexdigest()[:16]}  at {e.location}"]  # fmt: skip
    if show_config:
        from registry.store import _flatten

        lines += [f"    {k} = {json.dumps(v)}" for k, v in _flatten(m.get("config") or {}).items()]
    children = [("p", p) for p in node["parents"]] + [("r", r) for r in node["raw"]]
    out = [prefix + lines[0]] + [prefix.replace("├── ", "│   ").replace("└── ", "    ") + x for x in lines[1:]]
    base = prefix.replace("├── ", "│   ").replace("└── ", "    ")
    for i, (kind, child) in enumerate(children):
        branch = "└── " if i == len(children) - 1 else "├── "
        if kind == "p":
            out += _lineage_lines(child["node"], show_config, base + branch, child["role"])
        else:
            digest = child.get("digest") or (f"{len(child['digests'])} weight files" if child.get("digests") else "")
            where = child.get("path") or child.get("pretrained_dir") or ""
            root = node["manifest"].get("input_root")
            if child["role"] == "raw" and root:
                where = root if where in (".", "") else f"{root}/{where}"
            out.append(f"{base}{branch}{child['role']}: {where}  {digest}")
    return out


@app.command("lineage")
def lineage(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS (candidate, production)"),
    show_config: bool = typer.Option(False, "--config", help="Print every config key of every node."),
) -> None:
    """The tree checkpoint → parent checkpoints → dataset versions → raw inputs, with digests, configs and code
    versions."""
    tree = _registry_call(_registry().lineage, ref)
    typer.echo("\n".join(_lineage_lines(tree, show_config)))


@audit_app.command("dataset")
def audit_dataset(
    ref: str = typer.Argument(..., help="DATASET@VERSION"),
    reason: str = typer.Option(None, "--reason", help="Show rows with this reason (or kept)."),
    show: int = typer.Option(5, "--show", help="How many example rows."),
    thumbnails: Path = typer.Option(None, "--thumbnails", help="Write the example rows' images here."),
) -> None:
    """Counts per decision and reason of a dataset version, and example rows (keys, captions, scores)."""
    from registry.audit import dataset_audit

    a = _registry_call(dataset_audit, _registry(), ref, reason=reason, show=show)
    typer.echo(f"{a['ref']}: {a['rows']} audited rows at {a['location']}")
    typer.echo("  by decision: " + ", ".join(f"{k} {v}" for k, v in a["by_decision"].items()))
    if not a["consistent"]:
        typer.secho(f"  the manifest says {a['manifest_by_decision']}: audit and manifest disagree", fg="red")
    for r, n in a["by_reason"].items():
        typer.echo(f"  {r:<24} {n}")
    if reason is None and not show:
        return
    typer.echo(f"\n{a['matching']} rows {'with reason ' + reason if reason else ''}; {len(a['examples'])} shown:")
    for ex in a["examples"]:
        scores = " ".join(f"{k} {v:.3g}" for k, v in ex.items() if isinstance(v, float))
        typer.echo(f"  {ex.get('key')}  {ex.get('decision')} {ex.get('reasons')}  {scores}\n    {ex.get('caption')!r}"
                   + (f"\n    error: {ex['error']}" if ex.get("error") else ""))  # fmt: skip
    if thumbnails is not None:
        from pipelines.audit_samples import write_thumbnails

        if not a["input_root"]:
            _fail(f"{a['ref']}: the manifest names no input_root to read images from")
        for key, where in write_thumbnails(a["input_root"], a["examples"], thumbnails).items():
            typer.echo(f"  thumbnail {key}: {where}")


@audit_app.command("consumers")
def audit_consumers(ref: str = typer.Argument(..., help="DATASET@VERSION (or a checkpoint)")) -> None:
    """Every checkpoint trained, transitively, on a dataset version."""
    entries = _registry_call(_registry().consumers, ref)
    typer.echo(f"{len(entries)} checkpoint(s) made from {ref}:")
    for e in entries:
        typer.echo(f"  {e.ref}  {e.tags.get('alcm.stage', '')}  {_headline(e)}")


@audit_app.command("sample")
def audit_sample(key: str = typer.Argument(..., help="A raw sample key, e.g. img-1234-000042")) -> None:
    """Where one raw sample went: its decision in every registered dataset version, and every checkpoint trained
    (transitively) on a version that kept it — the takedown question."""
    from registry.audit import sample_trace

    t = _registry_call(sample_trace, _registry(), key)
    if not t["datasets"]:
        typer.echo(f"{key}: in no registered dataset's audit table")
        return
    for d in t["datasets"]:
        typer.echo(f"  {d['dataset']}: {d['decision']} {d['reasons'] or ''} ({d['id']})")
    typer.echo(f"{len(t['checkpoints'])} checkpoint(s) trained on data that contained {key}:")
    for e in t["checkpoints"]:
        typer.echo(f"  {e.ref}  {e.tags.get('alcm.stage', '')}")


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
