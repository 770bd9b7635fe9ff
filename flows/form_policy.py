"""What a flow run started from a deployment (a UI form, a schedule, an event) may ask for.

The operator's command line and profile are trusted; a form is not: whoever can reach the UI fills it in. So a run
that a deployment started (``prefect.runtime.deployment.id`` set) is checked when its parameters are validated,
before any work:

- **paths** stay inside the platform: every input under the served data root or work directory, every output under
  the work directory (so ``overwrite`` from a form can only ever replace something there). Local paths are compared
  after resolving links; object-store URIs by prefix;
- **config keys that load code or choose where code runs or what weights load** cannot be overridden
  (:data:`OPERATOR_ONLY`): ``ray.*``, ``captioner.lavis.*``, ``captioner.weights``, any ``annotator``,
  ``evaluate.i3d_path``, ``promotion.*``, ``teacher.*``, any ``weights`` and any other key ending in ``_dir`` or
  ``_path``; the keys that only say where a job writes (:data:`WRITE_LOCATIONS`: caches, Ray Train storage,
  ``data_dir``) may be set, to a location under the work directory;
- **the profile** must be one of the shipped ones by name (a YAML path would set any of the keys above).

The served roots reach the flow runs in :data:`ENV` (JSON), set by ``alcm serve`` and by ``alcm deploy`` (in the work
pool's job environment). A deployment run without it is refused: failing closed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

from contracts import storage

ENV = "ALCM_FORM_ROOTS"
"""The served roots, as JSON ``{"data_root": ..., "work_dir": ...}``, in the environment of deployment runs."""

OPERATOR_ONLY = ("ray.*", "captioner.lavis.*", "captioner.weights", "*annotator*", "evaluate.i3d_path", "promotion.*",
                 "teacher.*", "*weights", "*_dir", "*_path")  # fmt: skip
"""Config keys (``fnmatch`` patterns on the dotted key) a form or event may not override."""
WRITE_LOCATIONS = ("*.cache_dir", "*.storage_path", "data_dir")
"""Config keys that only say where a job writes: a form may set them to a location under the work directory."""

_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class FormRefused(PermissionError):
    """A deployment run's parameters ask for something only the operator may (the message names the parameter)."""


def from_deployment() -> bool:
    """Whether this process runs a flow run that a deployment started."""
    try:
        from prefect.runtime import deployment
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return False
    return deployment.id is not None


def served_roots(data_root: str, work_dir: str) -> dict[str, str]:
    """The environment entry that carries the served roots to deployment runs."""
    return {ENV: json.dumps({"data_root": _normal(data_root), "work_dir": _normal(work_dir)})}


def check(params, *, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Refuse a deployment run's ``params`` (see the module docstring); a run started otherwise is not checked.
    ``inputs``/``outputs``: the names of its path parameters (None values are skipped)."""
    if not from_deployment():
        return
    raw = os.environ.get(ENV)
    if not raw:
        raise FormRefused(f"this run was started by a deployment, but its environment has no {ENV} (the served data "
                          "and work roots): serve the deployments with `alcm serve` or `alcm deploy`")  # fmt: skip
    roots = json.loads(raw)
    profile = getattr(params, "profile", None)
    if profile is not None and (not _PROFILE_NAME.fullmatch(profile) or profile.endswith((".yaml", ".yml"))):
        raise FormRefused(f"profile={profile!r}: a form or event may name a shipped profile (toy, sd15), not a file")
    for item in getattr(params, "overrides", None) or []:
        key, _, value = (part.strip() for part in item.partition("="))
        if any(fnmatch.fnmatchcase(key, p) for p in WRITE_LOCATIONS):
            if not _inside(value.strip("'\""), roots["work_dir"]):
                raise FormRefused(f"overrides: {key}={value} is outside the served work directory {roots['work_dir']}")
            continue
        pattern = next((p for p in OPERATOR_ONLY if fnmatch.fnmatchcase(key, p)), None)
        if pattern:
            raise FormRefused(f"overrides: {key} ({pattern}) can only be set in the operator's profile, not from a "
                              "form or event: it loads code, or chooses where code runs or which weights load")
    for name in inputs:
        value = getattr(params, name, None)
        if value is not None and not (_inside(value, roots["data_root"]) or _inside(value, roots["work_dir"])):
            raise FormRefused(f"{name}={value!r} is outside the served data root {roots['data_root']} and work "
                              f"directory {roots['work_dir']}")  # fmt: skip
    for name in outputs:
        value = getattr(params, name, None)
        if value is not None and not _inside(value, roots["work_dir"]):
            raise FormRefused(f"{name}={value!r} is outside the served work directory {roots['work_dir']}: outputs "
                              "(and what overwrite may replace) stay there")  # fmt: skip


def _normal(location: str) -> str:
    if storage.is_uri(location):
        return storage.normalize(location).rstrip("/")
    return os.path.realpath(Path(location).expanduser())


def _inside(location: str, root: str) -> bool:
    """Whether ``location`` is ``root`` or below it, after resolving links (paths) or normalising (URIs)."""
    if storage.is_uri(location) != storage.is_uri(root):
        return False
    where = _normal(location)
    if storage.is_uri(where):
        return ".." not in where.split("/") and (where == root or where.startswith(root + "/"))
    return os.path.commonpath([where, root]) == root
