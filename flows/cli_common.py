"""What the ``alcm`` commands share: the profile and override options, failing with exit code 2 and a message that
names what is wrong, building a job flow's parameters, printing a dataset job's counts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

PROFILE = typer.Option("toy", "--profile", "-p", help="Profile name under configs/ or a YAML path.")
SET = typer.Option([], "--set", "-s", help="Config override key=value (repeatable).")


def fail(message: str) -> None:
    """Print ``error: message`` and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def config(profile: str, overrides: list[str]):
    """The validated config, or exit 2 naming the bad key."""
    from pipelines.config import ConfigError, load_config

    try:
        return load_config(profile, overrides)
    except ConfigError as exc:
        fail(f"config: {exc}")


def check_io(input_dir: str | Path, output_dir: str | Path, overwrite: bool) -> None:
    """Exit 2 if the input is missing or the output is not empty (unless ``overwrite``); either may be an
    object-store URI (``s3://``, ``gs://``), reached with the standard environment (``AWS_*``)."""
    from contracts import storage

    try:
        for location in (input_dir, output_dir):
            storage.check_scheme(str(location))
        if storage.is_uri(input_dir) or storage.is_uri(output_dir):
            if not storage.exists(str(input_dir)):
                fail(f"--input {input_dir} does not exist")
            if storage.is_uri(output_dir) and storage.exists(storage.join(output_dir, "manifest.json")) \
                    and not overwrite:  # fmt: skip
                fail(f"--output {output_dir} already holds a published output; choose a new location or pass "
                     "--overwrite")  # fmt: skip
            if storage.is_uri(output_dir):
                return
    except storage.StorageError as exc:
        fail(str(exc))
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        fail(f"--input {input_dir} does not exist")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        fail(f"--output {output_dir} is not empty; choose a new directory or pass --overwrite")


def print_counts(what: str, counts: dict) -> None:
    """A dataset job's counts: inputs, per decision, per reason."""
    clips = f" ({counts['clips']} clips)" if "clips" in counts else ""
    typer.echo(f"{what} {counts['input']} inputs{clips}: {json.dumps(counts['by_decision'])}")
    for reason, n in counts["by_reason"].items():
        typer.echo(f"  {reason:<22} {n}")


def print_outputs(output_dir: str | Path, dataset: str, label: str) -> None:
    """Where a dataset job wrote its rows, audit and manifest (on an object store: under its committed attempt)."""
    from contracts import storage
    from contracts.publish import output_root

    root = output_root(str(output_dir))
    typer.echo(f"{label + ':':<11} {storage.join(root, dataset)}\naudit:      {storage.join(root, 'audit')}\n"
               f"manifest:   {storage.join(output_dir, 'manifest.json')}")  # fmt: skip


def io_params(cls, input_dir: str | Path, output_dir: str | Path, profile: str, overrides: list[str],
              submit: bool | None, overwrite: bool, **extra):  # fmt: skip
    """The flow parameters every input → output job command builds (paths made absolute, URIs as given)."""
    from contracts.storage import normalize

    return cls(input_dir=normalize(input_dir), output_dir=normalize(output_dir), profile=profile,
               overrides=list(overrides), submit=submit, overwrite=overwrite, **extra)  # fmt: skip


SUBMIT = typer.Option(None, "--submit/--local", help="Submit as a Ray job to the cluster's Jobs API, or run on a local "
                      "Ray; default: submit when one is configured (RAY_ADDRESS=http://head:8265 or "
                      "ray.dashboard_address).", show_default=False)  # fmt: skip
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")


def location(where: str | Path) -> str:
    """A location argument as flows take it: a path made absolute, an object-store URI as given."""
    from contracts import storage

    try:
        return storage.normalize(where)
    except storage.StorageError as exc:
        fail(str(exc))


def at(output: str | Path, rel: str) -> str:
    """Where file ``rel`` of a published output is (under its committed attempt on an object store);
    ``manifest.json`` is always at the output itself."""
    from contracts import storage
    from contracts.manifest import output_root

    return storage.join(output if rel == "manifest.json" else output_root(str(output)), rel)


def read_text(location: str) -> str:
    from contracts import storage

    return storage.read_bytes(location).decode()


def existing(option: str, location: str | Path | None) -> str | None:
    """``location`` made absolute (an object-store URI as given), or exit 2 naming ``option`` if it does not exist
    or cannot be reached (None stays None)."""
    from contracts import storage

    if location is None:
        return None
    try:
        storage.check_scheme(str(location))
        found = storage.exists(str(location)) if storage.is_uri(location) else Path(location).exists()
    except storage.StorageError as exc:
        fail(str(exc))
    if not found:
        fail(f"{option} {location} does not exist")
    return storage.normalize(location)
