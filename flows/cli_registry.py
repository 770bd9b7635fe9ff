"""The ``alcm registry``, ``alcm lineage`` and ``alcm audit`` commands: queries of the registry, each turned into
its command's view (:mod:`registry.views`) and printed as text (:mod:`registry.render`) or, with ``--json``, as one
JSON document on stdout (errors and warnings go to stderr)."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli_common import PROFILE, SET, config, fail

registry_app = typer.Typer(no_args_is_help=True, help="Registered datasets and checkpoints (MLflow-backed).")
audit_app = typer.Typer(no_args_is_help=True, help="Audit queries: why rows were dropped, where a sample went.")
JSON = typer.Option(False, "--json", help="Print one JSON document instead of text (its schema: README).")


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


def _print(command: str, view: dict, as_json: bool, text) -> None:
    """The command's view as its JSON document (:func:`registry.views.document`), or as the lines ``text`` draws."""
    from registry.views import document, dumps

    typer.echo(dumps(document(command, view)) if as_json else "\n".join(text(view)))


@registry_app.command("list")
def registry_list(kind: str = typer.Option(None, "--kind", help="dataset or checkpoint"), as_json: bool = JSON) -> None:
    """Every registered version, one line each: NAME@VERSION, kind, aliases, headline metrics."""
    from registry.render import entry_list
    from registry.views import list_view

    _print("registry.list", list_view(_registry_call(_registry().list, kind), kind), as_json, entry_list)


@registry_app.command("show")
def registry_show(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
    metrics: list[str] = typer.Option(
        [], "--metric", "-m", help="Eval tables to print (default: FVD/FID, CLIPSIM, latency); repeatable"
    ),  # fmt: skip
    as_json: bool = JSON,
) -> None:
    """One version: where it is, what it was made from, its aliases, headline and last gate decision, and the
    tables of its eval report."""
    from registry.render import entry_details
    from registry.views import show_view

    registry = _registry()
    e = _registry_call(registry.get, ref)
    _print("registry.show", show_view(e, registry.eval_report(e), list(metrics)), as_json, entry_details)


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
def registry_diff(a: str = typer.Argument(...), b: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """What changed from A to B: config keys, inputs, training and eval metrics, code version."""
    from registry.render import diff_lines
    from registry.views import diff_view

    _print("registry.diff", diff_view(_registry_call(_registry().diff, a, b)), as_json, diff_lines)


def lineage(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS (candidate, production)"),
    show_config: bool = typer.Option(False, "--config", help="Print every config key of every node."),
    as_json: bool = JSON,
) -> None:
    """The tree checkpoint → parent checkpoints → dataset versions → raw inputs, with digests, configs and code
    versions."""
    from registry.render import lineage_lines
    from registry.views import lineage_view

    _print("lineage", lineage_view(_registry_call(_registry().lineage, ref), show_config), as_json, lineage_lines)


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
    as_json: bool = JSON,
) -> None:
    """Counts per decision and reason of a dataset version, and example rows (keys, captions, scores)."""
    from registry.audit import dataset_audit
    from registry.render import audit_lines, plain
    from registry.views import audit_view, document, dumps

    if sheet is not None and sheet.suffix.lower() != ".png":
        fail(f"--sheet {sheet}: the contact sheet is a .png file (its page is written next to it as .html)")
    a = _registry_call(dataset_audit, _registry(), ref, reason=reason, show=show)
    if not as_json:  # the counts before the thumbnails, which take a while
        typer.echo("\n".join(audit_lines(a, reason, show)))
    written = None
    if thumbnails is not None:
        from pipelines.audit_samples import write_thumbnails

        if not a["input_root"]:
            fail(f"{a['ref']}: the manifest names no input_root to read images from")
        written = write_thumbnails(a["input_root"], a["examples"], thumbnails)
        for key, where in written.items() if not as_json else ():
            typer.echo(f"  thumbnail {plain(key)}: {plain(where)}")
    sheet_note = None
    if sheet is not None:
        from pipelines.contact_sheet import write_contact_sheet
        from registry.audit import sheet_audit

        layout = write_contact_sheet(_registry_call(sheet_audit, _registry(), ref, per_reason=per_reason), sheet)
        tiles = [t for row in layout.rows for t in row.tiles]
        placeholders = sum(t.placeholder is not None for t in tiles)
        sheet_note = {"png": str(sheet), "html": str(sheet.with_suffix(".html")), "rows": len(layout.rows),
                      "examples": len(tiles), "placeholders": placeholders}  # fmt: skip
        if not as_json:
            typer.echo(f"contact sheet: {sheet} ({sheet_note['rows']} rows, {sheet_note['examples']} examples, "
                       f"{sheet_note['placeholders']} shown as placeholders); page: {sheet_note['html']}")  # fmt: skip
    if as_json:  # one document: counts, examples, thumbnails and the sheet together
        typer.echo(dumps(document("audit.dataset", audit_view(a, written, sheet_note))))


@audit_app.command("consumers")
def audit_consumers(ref: str = typer.Argument(..., help="DATASET@VERSION (or a checkpoint)"),
                    as_json: bool = JSON) -> None:  # fmt: skip
    """Every checkpoint trained, transitively, on a dataset version."""
    from registry.render import consumers_lines
    from registry.views import consumers_view

    registry = _registry()
    entry = _registry_call(registry.get, ref)
    view = consumers_view(entry, _registry_call(registry.consumers, entry.ref))
    _print("audit.consumers", view, as_json, consumers_lines)


@audit_app.command("sample")
def audit_sample(key: str = typer.Argument(..., help="A raw sample key, e.g. img-1234-000042"),
                 as_json: bool = JSON) -> None:  # fmt: skip
    """Where one raw sample went: its decision in every registered dataset version, and every checkpoint trained
    (transitively) on a version that kept it — the takedown question."""
    from registry.audit import sample_trace
    from registry.render import trace_lines
    from registry.views import trace_view

    _print("audit.sample", trace_view(_registry_call(sample_trace, _registry(), key)), as_json, trace_lines)
