"""``alcm``: the platform's command line. Every subcommand that does work runs a Prefect flow.

Configuration errors are reported before any work starts, naming the key, the value and the fix (exit code 2).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

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
    ``recaption-videos``)."""
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
                        stage1_dir=_existing("--stage1", stage1_dir))  # fmt: skip
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
    consistency model (flow ``adapt-adapters``; ``adapt.adapters`` picks which)."""
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


def main() -> None:
    """Console-script entry point."""
    apply_env_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
