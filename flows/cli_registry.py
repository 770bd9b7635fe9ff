"""The ``alcm registry``, ``alcm lineage`` and ``alcm audit`` commands: queries of the registry, printed by
:mod:`registry.render`."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import PROFILE, SET, config, fail

registry_app = typer.Typer(no_args_is_help=True, help="Registered datasets and checkpoints (MLflow-backed).")
audit_app = typer.Typer(no_args_is_help=True, help="Audit queries: why rows were dropped, where a sample went.")


def _registry():
    """The registry (``MLFLOW_TRACKING_URI``, or the embedded store)."""
    from flows.common import open_registry

    return open_registry()


def _registry_call(fn, *args, **kwargs):
    from registry.store import RegistryError

    try:
        return fn(*args, **kwargs)
    except (RegistryError, FileNotFoundError) as exc:
        fail(str(exc))


@registry_app.command("list")
def registry_list(kind: str = typer.Option(None, "--kind", help="dataset or checkpoint")) -> None:
    """Every registered version, one line each: NAME@VERSION, kind, aliases, headline metrics."""
    from registry.render import entry_list

    typer.echo("\n".join(entry_list(_registry_call(_registry().list, kind))))


@registry_app.command("show")
def registry_show(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
    metrics: list[str] = typer.Option(
        [], "--metric", "-m", help="Eval tables to print (default: FVD/FID, CLIPSIM, latency); repeatable"
    ),  # fmt: skip
) -> None:
    """One version: where it is, what it was made from, its aliases, headline and last gate decision, and the
    tables of its eval report."""
    from registry.render import entry_details

    registry = _registry()
    e = _registry_call(registry.get, ref)
    typer.echo("\n".join(entry_details(e, registry.eval_report(e), list(metrics))))


@registry_app.command("register")
def registry_register(output_dir: Path = typer.Argument(..., help="A job output directory (manifest.json).")) -> None:
    """Register a job output (and the job outputs it was made from) that no flow recorded."""
    entry = _registry_call(_registry().register, output_dir)
    typer.echo(f"{entry.ref} {entry.type} {entry.digest}")


@registry_app.command("alias")
def registry_alias(ref: str = typer.Argument(...), alias: str = typer.Argument(..., help="candidate")) -> None:
    """Point an alias at a version (production moves only through `alcm registry promote`)."""
    if alias == "production":
        fail("production moves only through the promotion gate: `alcm registry promote NAME@VERSION`")
    typer.echo(_registry_call(_registry().set_alias, ref, alias).ref)


@registry_app.command("promote")
def registry_promote(ref: str = typer.Argument(..., help="NAME@VERSION or NAME@candidate"),
                     profile: str = PROFILE, overrides: list[str] = SET) -> None:  # fmt: skip
    """Run the promotion gate: production moves to REF only if its eval beats production's on the profile's rules
    (flow ``promote-checkpoint``)."""
    from flows.evaluate import PromoteParams, decision_markdown, promote_flow

    config(profile, overrides)
    _registry_call(_registry().get, ref)
    decision = promote_flow(PromoteParams(checkpoint=ref, profile=profile, overrides=list(overrides)))
    typer.echo(decision_markdown(decision))


@registry_app.command("diff")
def registry_diff(a: str = typer.Argument(...), b: str = typer.Argument(...)) -> None:
    """What changed from A to B: config keys, inputs, training and eval metrics, code version."""
    from registry.render import diff_lines

    typer.echo("\n".join(diff_lines(_registry_call(_registry().diff, a, b))))


def lineage(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS (candidate, production)"),
    show_config: bool = typer.Option(False, "--config", help="Print every config key of every node."),
) -> None:
    """The tree checkpoint → parent checkpoints → dataset versions → raw inputs, with digests, configs and code
    versions."""
    from registry.render import lineage_lines

    typer.echo("\n".join(lineage_lines(_registry_call(_registry().lineage, ref), show_config)))


@audit_app.command("dataset")
def audit_dataset(
    ref: str = typer.Argument(..., help="DATASET@VERSION"),
    reason: str = typer.Option(None, "--reason", help="Show rows with this reason (or kept)."),
    show: int = typer.Option(5, "--show", help="How many example rows."),
    thumbnails: Path = typer.Option(None, "--thumbnails", help="Write the example rows' images here."),
    sheet: Path = typer.Option(None, "--sheet", help="Write a contact sheet here (FILE.png, and FILE.html next to "
                               "it): per reason and for kept rows, example thumbnails with keys and scores, and a "
                               "bar chart of the counts."),  # fmt: skip
    per_reason: int = typer.Option(6, "--per-reason", min=0, help="Examples per row of the contact sheet."),
) -> None:
    """Counts per decision and reason of a dataset version, and example rows (keys, captions, scores)."""
    from registry.audit import dataset_audit
    from registry.render import audit_lines

    if sheet is not None and sheet.suffix.lower() != ".png":
        fail(f"--sheet {sheet}: the contact sheet is a .png file (its page is written next to it as .html)")
    a = _registry_call(dataset_audit, _registry(), ref, reason=reason, show=show)
    typer.echo("\n".join(audit_lines(a, reason, show)))
    if thumbnails is not None:
        from pipelines.audit_samples import write_thumbnails

        if not a["input_root"]:
            fail(f"{a['ref']}: the manifest names no input_root to read images from")
        for key, where in write_thumbnails(a["input_root"], a["examples"], thumbnails).items():
            typer.echo(f"  thumbnail {key}: {where}")
    if sheet is not None:
        from pipelines.contact_sheet import write_contact_sheet
        from registry.audit import sheet_audit

        layout = write_contact_sheet(_registry_call(sheet_audit, _registry(), ref, per_reason=per_reason), sheet)
        tiles = [t for row in layout.rows for t in row.tiles]
        typer.echo(f"contact sheet: {sheet} ({len(layout.rows)} rows, {len(tiles)} examples, "
                   f"{sum(t.placeholder is not None for t in tiles)} shown as placeholders); page: "
                   f"{sheet.with_suffix('.html')}")  # fmt: skip


@audit_app.command("consumers")
def audit_consumers(ref: str = typer.Argument(..., help="DATASET@VERSION (or a checkpoint)")) -> None:
    """Every checkpoint trained, transitively, on a dataset version."""
    from registry.render import headline

    entries = _registry_call(_registry().consumers, ref)
    typer.echo(f"{len(entries)} checkpoint(s) made from {ref}:")
    for e in entries:
        typer.echo(f"  {e.ref}  {e.tags.get('alcm.stage', '')}  {headline(e)}")


@audit_app.command("sample")
def audit_sample(key: str = typer.Argument(..., help="A raw sample key, e.g. img-1234-000042")) -> None:
    """Where one raw sample went: its decision in every registered dataset version, and every checkpoint trained
    (transitively) on a version that kept it — the takedown question."""
    from registry.audit import sample_trace
    from registry.render import trace_lines

    typer.echo("\n".join(trace_lines(_registry_call(sample_trace, _registry(), key))))
