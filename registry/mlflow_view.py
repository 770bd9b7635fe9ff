"""What a registered version shows in MLflow's own UI, and a version source that an MLflow server accepts.

The registry's queries read tags (``registry.store``); a team that opens the MLflow UI should see the same story
without reading JSON tags. For every registered dataset version and checkpoint, the run and the model version get:

- **source**: an object-store output's URI as it is (``s3://...``, which a server accepts); a local output is
  recorded as ``runs:/<run_id>/output``, where the run holds a pointer artifact ``output/location.json`` (the path
  and its ``file://`` URI). An MLflow server over HTTP refuses a local path as a source unless it lies inside the
  run's artifact directory, so the path itself goes in the pointer and in the ``alcm.location`` tag, where the
  registry reads it back.
- **description** (Markdown, shown on the version's page): what it is, where it is, and its parents as
  ``models:/NAME/VERSION`` URIs linked to their pages.
- **params**: the job's config, flattened (``curate_images.filters.min_side``).
- **dataset inputs** (``mlflow.data``): each registered parent as a dataset input of the run, its context the
  role it played (``dataset``, ``stage1``, ...), its source the parent's ``models:/`` URI and location.
- **metrics**: the training loss curve, one point per logged step (``train/loss``; ``train/<run>/loss`` when a
  job trained several runs), beside the final figures ``registry.store`` logs.
- **reason table**: a dataset's rows per reject reason as an MLflow table (``reasons.json``, in the run's
  artifacts and its evaluation view).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

#: Where a local output's pointer artifact lives in the run (the version's source is ``runs:/<run_id>/output``).
POINTER_DIR = "output"
POINTER_FILE = "location.json"
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "az://")

#: MLflow's limits: param keys and values, params per batch, a dataset's digest.
MAX_PARAM_VALUE, MAX_BATCH, MAX_DIGEST = 6000, 100, 36
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def version_source(client, run_id: str, location: str) -> str:
    """The ``source`` to register a version at ``location`` with (see the module docstring); logs the pointer
    artifact of a local output into run ``run_id``."""
    if location.startswith(OBJECT_STORE_SCHEMES):
        return location
    uri = location if "://" in location else Path(location).resolve().as_uri()
    with tempfile.TemporaryDirectory() as tmp:
        pointer = Path(tmp) / POINTER_FILE
        pointer.write_text(json.dumps({"location": location, "uri": uri}, indent=2))
        client.log_artifact(run_id, str(pointer), artifact_path=POINTER_DIR)
    return f"runs:/{run_id}/{POINTER_DIR}"


def model_uri(ref: str) -> str:
    """``NAME@VERSION`` → ``models:/NAME/VERSION``."""
    name, _, version = ref.partition("@")
    return f"models:/{name}/{version}"


def description(manifest: dict, location: str, parents: list) -> str:
    """The version's Markdown description: kind, digest, location and its parents as linked ``models:/`` URIs."""
    lines = [f"**{manifest.get('kind', '?')}** `{manifest.get('name', '?')}`, digest `{manifest.get('digest', '?')}`",
             "", f"Location: `{location}`", ""]  # fmt: skip
    if manifest.get("code_version"):
        lines += [f"Code version: `{manifest['code_version']}`", ""]
    if parents:
        lines.append("Made from:")
        for p in parents:
            name, _, version = p.ref.partition("@")
            lines.append(f"- {p.role}: [{model_uri(p.ref)}](#/models/{name}/versions/{version})")
    else:
        lines.append("Made from raw inputs only (listed in the run's `manifest.json`).")
    return "\n".join(lines)


def log_details(client, run_id: str, manifest: dict, parents: list, parent_locations: dict[str, str]) -> None:
    """Params, dataset inputs, the loss curve and the reason table of a version's run (see the module docstring).
    ``parent_locations``: each parent's ref → its location."""
    from mlflow.entities import Param

    from registry.store import flatten  # here: the store imports this module

    params = [Param(_param_key(k), _param_value(v)) for k, v in sorted(flatten(manifest.get("config") or {}).items())]
    for i in range(0, len(params), MAX_BATCH):
        client.log_batch(run_id, params=params[i : i + MAX_BATCH])
    _log_inputs(client, run_id, parents, parent_locations)
    _log_loss_curve(client, run_id, manifest.get("loss_history") or {})
    by_reason = (manifest.get("counts") or {}).get("by_reason") or {}
    if by_reason:
        reasons = sorted(by_reason, key=lambda r: (-by_reason[r], r))
        client.log_table(run_id, data={"reason": reasons, "rows": [int(by_reason[r]) for r in reasons]},
                         artifact_file="reasons.json")  # fmt: skip


def _log_inputs(client, run_id: str, parents: list, locations: dict[str, str]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for p in parents:
        name = p.ref.partition("@")[0]
        source = {"uri": model_uri(p.ref), "location": locations.get(p.ref, "")}
        dataset = Dataset(name=name, digest=p.ref.partition("@")[2][:MAX_DIGEST], source_type="mlflow-registry",
                          source=json.dumps(source))  # fmt: skip
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", p.role)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def _log_loss_curve(client, run_id: str, history: dict[str, list]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for label, points in history.items():
        key = "train/loss" if len(history) == 1 else f"train/{_param_key(label)}/loss"
        metrics += [Metric(key, float(loss), now, int(step)) for step, loss, *_ in points]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _param_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 1] + "…"
