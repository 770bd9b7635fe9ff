"""The registry: versioned datasets and checkpoints with their lineage, eval reports and aliases.

The domain API flows use (:class:`Registry`), backed by MLflow's tracking server and model registry, so a team
browses the same versions in the MLflow UI that ``alcm registry`` prints. Flows never touch MLflow directly.

Mapping onto MLflow (one experiment, ``alcm-registry``):

- a dataset version or a checkpoint is a **registered-model version** (``NAME@VERSION``, VERSION an integer
  counting from 1 per name) recording where the job wrote it (a local path or an object-store URI, tag
  ``alcm.location``: the registry records outputs, it does not copy them; the version's ``source`` is one an MLflow
  server accepts, :mod:`registry.mlflow_view`), plus one **run** holding the job's ``manifest.json`` as an
  artifact, its training metrics and, once evaluated, the eval report; the run and version also carry what MLflow's
  own UI shows (params, dataset inputs, the loss curve, the reason table, parents as ``models:/`` links:
  :mod:`registry.mlflow_view`);
- the version's tags carry what queries need without reading artifacts: ``alcm.kind`` (``dataset`` or
  ``checkpoint``), ``alcm.type`` (the manifest's ``kind``), ``alcm.digest`` (the content digest; the identity used
  for idempotency), ``alcm.parents`` (JSON: the registered versions it was made from, with their role),
  ``alcm.stage``, ``alcm.profile``, ``alcm.code_version``, ``alcm.headline`` (JSON: headline metrics),
  ``alcm.eval`` (the attached report's digest) and ``alcm.promotion`` (the last gate decision);
- aliases (``candidate``, ``production``) are MLflow registered-model aliases.

Lineage: registering a job output first registers every input that is itself a job output (a directory with a
``manifest.json`` whose digest matches what the consuming manifest recorded), so a checkpoint's ``alcm.parents``
point at dataset versions and parent checkpoints; everything else a manifest lists as input (raw shards, teacher
weights, motion modules) is a raw input, kept in the stored manifest with its digests.

Storage: ``MLFLOW_TRACKING_URI`` (a shared server, e.g. ``http://mlflow:5000``) when set; otherwise an embedded
SQLite database and a local artifact directory under ``ALCM_REGISTRY_DIR`` (default ``data/registry`` in the
project). Registering the same manifest twice returns the same version (same name and digest → same version).

Concurrency: several processes (two flows finishing at once, a CLI beside a flow) may register into one store at
the same time; none collides, none loses a version, and the same output registered twice at once is one version.

- On every backend, registration is find → create → re-check: after creating its version, a process looks again
  for versions of the name with the same digest, and if an older one exists (another process registered the same
  output in the meantime), it deletes its own newer duplicate (version and run) and returns the older one. The
  oldest version always wins, so both callers return the same reference. Creating a registered model or the
  experiment that another process has just created (``RESOURCE_ALREADY_EXISTS``) is not an error. Version numbers
  are the store's own (``max + 1`` under a unique key, retried by MLflow's SQL store on a collision).
- On the embedded SQLite store, a file lock (``mlflow.db.lock`` next to the database, ``fcntl.flock``) also
  serialises opening the store (MLflow creates and migrates the schema on first use, which two processes cannot
  do at once) and every registry write (registration's find-then-create, aliases, eval reports, decisions).
  SQLite serialises writers anyway; the lock turns its ``database is locked`` failures, which its busy timeout
  does not cover when two read-then-write transactions deadlock, into waiting. A server needs no lock: it
  creates its schema once, and the re-check covers registration.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts import storage
from contracts.manifest import PROJECT_ROOT, read_manifest
from contracts.mirror import local_copy
from registry import mlflow_view

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

EXPERIMENT = "alcm-registry"
ALIASES = ("candidate", "production")
DATASET, CHECKPOINT = "dataset", "checkpoint"
TAG = "alcm."


class RegistryError(ValueError):
    """A registry request that cannot be served (unknown name, version or alias; a manifest that is not a job's)."""


@dataclass(frozen=True)
class Parent:
    """One registered input of a version: the role it played (``dataset``, ``stage1``, ...) and its reference."""

    role: str
    ref: str


@dataclass(frozen=True)
class Entry:
    """A registered dataset version or checkpoint, as the registry's queries return it."""

    name: str
    version: int
    kind: str
    """``dataset`` or ``checkpoint``."""
    type: str
    """The manifest's ``kind`` (``image-text-dataset``, ``text-video-dataset``, ``checkpoint``, ...)."""
    digest: str
    location: str
    """Where the job wrote it (path or URI)."""
    run_id: str
    parents: tuple[Parent, ...] = ()
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @property
    def ref(self) -> str:
        """``NAME@VERSION``."""
        return f"{self.name}@{self.version}"

    @property
    def headline(self) -> dict[str, float]:
        """Headline metrics: row counts for datasets; eval figures (or training loss) for checkpoints."""
        return json.loads(self.tags.get(TAG + "headline", "{}"))

    @property
    def evaluated(self) -> bool:
        return TAG + "eval" in self.tags


def split_ref(ref: str) -> tuple[str, str | None]:
    """``NAME@VERSION|ALIAS`` → (name, version-or-alias); a bare ``NAME`` → (name, None), meaning the latest."""
    name, sep, tail = ref.partition("@")
    if not name or (sep and not tail):
        raise RegistryError(f"reference {ref!r}: expected NAME@VERSION or NAME@ALIAS, e.g. toy-lcm-lora@1")
    return name, (tail or None)


def default_tracking_uri() -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the server's default)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    root = Path(os.environ.get("ALCM_REGISTRY_DIR", PROJECT_ROOT / "data" / "registry")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def _already_exists(exc: Exception) -> bool:
    """Whether an MLflow error says another process created the resource first."""
    return getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS"


def _headline_of(manifest: dict) -> dict[str, float]:
    counts = manifest.get("counts") or {}
    if manifest.get("kind") == CHECKPOINT:
        metrics = manifest.get("metrics") or {}
        return {k: float(metrics[k]) for k in ("loss", "step") if isinstance(metrics.get(k), int | float)}
    decisions = counts.get("by_decision") or {}
    out = {"input": counts.get("input"), **{k: v for k, v in decisions.items()}}
    return {k: float(v) for k, v in out.items() if isinstance(v, int | float)}


def _inputs_of(manifest: dict) -> list[tuple[str, dict]]:
    """(role, input record) pairs of a manifest: checkpoints name their inputs, datasets list their raw files."""
    inputs = manifest.get("inputs") or {}
    if isinstance(inputs, dict):
        return [(role, info) for role, info in sorted(inputs.items()) if isinstance(info, dict)]
    return [("raw", info) for info in inputs if isinstance(info, dict)]


def _input_output_dir(info: dict) -> str | None:
    """The job output an input record points at, when it is one (a directory or an object-store output whose
    committed manifest has the recorded digest)."""
    path, digest = info.get("path"), info.get("digest")
    if not path or not digest or ("://" in str(path) and not storage.is_uri(path)):
        return None
    try:
        return str(path) if read_manifest(path).get("digest") == digest else None
    except (OSError, ValueError):
        return None


class Registry:
    """Versioned datasets and checkpoints with lineage, eval reports and aliases (see the module docstring)."""

    def __init__(self, tracking_uri: str | None = None, artifact_location: str | None = None):
        from mlflow import MlflowClient

        # one-off schema creation chatter; the wait for a version a server creates
        quiet = ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.store.model_registry.abstract_store")
        for noisy in quiet:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if tracking_uri is None:
            tracking_uri, artifact_location = default_tracking_uri()
        self.tracking_uri = tracking_uri
        embedded = tracking_uri.startswith("sqlite:///") and tracking_uri != "sqlite:///:memory:"
        self._lock_path = Path(tracking_uri.removeprefix("sqlite:///") + ".lock") if embedded else None
        if embedded and artifact_location is None:  # beside the database, never MLflow's ./mlruns in the cwd
            artifact_location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
        self._lock_file = None  # the open lock file while this object holds the lock
        self._thread_lock = threading.RLock()
        with self._exclusive():  # the first use creates the schema
            self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self._experiment = self._experiment_id(artifact_location)

    def _experiment_id(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        except MlflowException as exc:
            if not _already_exists(exc):
                raise
            return self._client.get_experiment_by_name(EXPERIMENT).experiment_id

    def transaction(self):
        """A context held across a read-decide-write (the gate's compare-and-set): an embedded store's file lock; on
        a server nothing (MLflow has no lock): callers re-check what they read before they write."""
        return self._exclusive()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the embedded store's file lock against other processes and this object's other threads (re-entrant
        in the holding thread); on a server's store, nothing."""
        if self._lock_path is None:
            yield
            return
        with self._thread_lock:
            if self._lock_file is not None:  # this thread holds it already
                yield
                return
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as handle:  # closing it releases the lock
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock_file = handle
                try:
                    yield
                finally:
                    self._lock_file = None

    # ------------------------------------------------------------------------------------------------ registration

    def register(self, output_dir: str | Path) -> Entry:
        """Register the job output at ``output_dir`` (its ``manifest.json``), after registering every input that
        is itself a job output. Idempotent: the same name and digest return the existing version."""
        output_dir = storage.normalize(output_dir)  # a directory made absolute, or an object-store URI
        manifest = read_manifest(output_dir)
        for key in ("name", "digest", "kind"):
            if not manifest.get(key):
                raise RegistryError(f"{storage.join(output_dir, 'manifest.json')}: no {key!r}; not a job manifest")
        existing = self.find(manifest["name"], manifest["digest"])
        if existing is not None:
            return existing
        parents = []
        for role, info in _inputs_of(manifest):
            parent_dir = _input_output_dir(info)
            if parent_dir is not None:
                parents.append(Parent(role, self.register(parent_dir).ref))
            elif info.get("digest") and (known := self.find_digest(info["digest"])) is not None:
                parents.append(Parent(role, known.ref))
        with self._exclusive():
            existing = self.find(manifest["name"], manifest["digest"])  # registered while the parents were
            return existing or self._create(manifest, output_dir, parents)

    def _create(self, manifest: dict, location: str, parents: list[Parent]) -> Entry:
        """Create the run and the version, then keep the oldest version of this name and digest (see the module
        docstring): a process that lost a race deletes its duplicate and returns the winner."""
        name = manifest["name"]
        kind = CHECKPOINT if manifest["kind"] == CHECKPOINT else DATASET
        tags = {
            TAG + "kind": kind,
            TAG + "type": manifest["kind"],
            TAG + "digest": manifest["digest"],
            TAG + "parents": json.dumps([p.__dict__ for p in parents]),
            TAG + "code_version": str(manifest.get("code_version", "unknown")),
            TAG + "headline": json.dumps(_headline_of(manifest)),
        }
        for key in ("stage", "profile", "job"):
            if manifest.get(key):
                tags[TAG + key] = str(manifest[key])
        tags[TAG + "location"] = location
        run = self._client.create_run(self._experiment, run_name=f"{name}:{manifest['digest'][7:19]}", tags=tags)
        run_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.json"
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            self._client.log_artifact(run_id, str(path))
        metrics = manifest.get("metrics") or {}
        last_step = int(metrics["step"]) if isinstance(metrics.get("step"), int | float) else 0
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._client.log_metric(run_id, f"train/{key}", float(value), step=last_step)
        mlflow_view.log_details(self._client, run_id, manifest, parents,
                                {p.ref: self.get(p.ref).location for p in parents})  # fmt: skip
        source = mlflow_view.version_source(self._client, run_id, location)
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints the run's URL for a server; keep stdout ours
            self._client.set_terminated(run_id)
        self._ensure_registered_model(name, kind)
        about = mlflow_view.description(manifest, location, parents)
        mv = self._client.create_model_version(name, source=source, run_id=run_id, tags=tags, description=about)
        oldest = self._oldest(name, manifest["digest"])
        if oldest is not None and oldest.version != int(mv.version):
            self._client.delete_model_version(name, mv.version)
            self._client.delete_run(run_id)
            log.info("%s was registered by another process as %s: dropped the duplicate %s@%s",
                     manifest["digest"], oldest.ref, name, mv.version)  # fmt: skip
            return oldest
        entry = self.get(f"{name}@{mv.version}")
        log.info("registered %s (%s, %s)", entry.ref, manifest["kind"], manifest["digest"])
        return entry

    def _ensure_registered_model(self, name: str, kind: str) -> None:
        from mlflow.exceptions import MlflowException

        if self._client.search_registered_models(filter_string=f"name = '{name}'"):
            return
        try:
            self._client.create_registered_model(name, tags={TAG + "kind": kind})
        except MlflowException as exc:
            if not _already_exists(exc):
                raise

    # ------------------------------------------------------------------------------------------------ lookups

    def _aliases(self) -> dict[tuple[str, int], tuple[str, ...]]:
        """(name, version) → its aliases (model-version searches do not return aliases; registered models do)."""
        out: dict[tuple[str, int], list[str]] = {}
        for model in self._client.search_registered_models(max_results=1000):
            for alias, version in (model.aliases or {}).items():
                out.setdefault((model.name, int(version)), []).append(alias)
        return {k: tuple(sorted(v)) for k, v in out.items()}

    def _entry(self, mv, aliases: dict | None = None) -> Entry:
        tags = dict(mv.tags or {})
        if aliases is not None:
            mv_aliases = aliases.get((mv.name, int(mv.version)), ())
        else:
            mv_aliases = mv.aliases or ()
        parents = tuple(Parent(**p) for p in json.loads(tags.get(TAG + "parents", "[]")))
        return Entry(
            name=mv.name,
            version=int(mv.version),
            kind=tags.get(TAG + "kind", DATASET),
            type=tags.get(TAG + "type", ""),
            digest=tags.get(TAG + "digest", ""),
            location=tags.get(TAG + "location", mv.source),
            run_id=mv.run_id,
            parents=parents,
            aliases=tuple(sorted(mv_aliases)),
            tags=tags,
            created=(mv.creation_timestamp or 0) / 1000.0,
        )

    def _versions(self, filter_string: str = "") -> list[Entry]:
        out, token, aliases = [], None, self._aliases()
        while True:
            page = self._client.search_model_versions(filter_string, max_results=1000, page_token=token)
            out += [self._entry(mv, aliases) for mv in page]
            token = page.token
            if not token:
                return sorted(out, key=lambda e: (e.name, e.version))

    def find(self, name: str, digest: str) -> Entry | None:
        """The version of ``name`` with content digest ``digest``, if registered."""
        if not self._client.search_registered_models(filter_string=f"name = '{name}'"):
            return None
        return self._oldest(name, digest)

    def _oldest(self, name: str, digest: str) -> Entry | None:
        """The lowest-numbered version of ``name`` with ``digest`` (of an existing registered model)."""
        hits = self._versions(f"name = '{name}' and tags.`{TAG}digest` = '{digest}'")
        return hits[0] if hits else None

    def find_digest(self, digest: str) -> Entry | None:
        """The first registered version (any name) with content digest ``digest``."""
        hits = self._versions(f"tags.`{TAG}digest` = '{digest}'")
        return hits[0] if hits else None

    def list(self, kind: str | None = None) -> list[Entry]:
        """Every registered version (optionally only ``dataset`` or ``checkpoint`` ones), by name then version."""
        if kind not in (None, DATASET, CHECKPOINT):
            raise RegistryError(f"kind {kind!r}: choose dataset or checkpoint")
        return [e for e in self._versions() if kind is None or e.kind == kind]

    def get(self, ref: str) -> Entry:
        """Resolve ``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME`` (latest version)."""
        from mlflow.exceptions import MlflowException

        name, tail = split_ref(ref)
        if not self._client.search_registered_models(filter_string=f"name = '{name}'"):
            known = sorted({e.name for e in self._versions()})
            raise RegistryError(f"{ref}: no registered dataset or checkpoint named {name!r} (known: {known})")
        try:
            if tail is None:
                versions = self._versions(f"name = '{name}'")
                if not versions:
                    raise RegistryError(f"{ref}: {name!r} has no versions")
                return versions[-1]
            if tail.isdigit():
                return self._entry(self._client.get_model_version(name, tail))
            return self._entry(self._client.get_model_version_by_alias(name, tail))
        except MlflowException as exc:
            versions = [e.version for e in self._versions(f"name = '{name}'")]
            raise RegistryError(f"{ref}: no such version or alias of {name!r} (versions {versions}, aliases "
                                f"{sorted({a for e in self._versions(f'name = {name!r}') for a in e.aliases})})"
                                ) from exc  # fmt: skip

    def _ui_base(self) -> str | None:
        """MLflow's UI as a browser reaches it: ``ALCM_MLFLOW_UI_URL`` (``alcm serve``'s UI beside the embedded
        store, or a cluster's port-forward or Ingress), else an HTTP tracking server's URI; None if neither."""
        base = os.environ.get("ALCM_MLFLOW_UI_URL")
        if not base and self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri
        return base.rstrip("/") if base else None

    def ui_url(self, entry: Entry) -> str | None:
        """The version's page in MLflow's UI, or None when there is no UI to link to."""
        base = self._ui_base()
        return f"{base}/#/models/{entry.name}/versions/{entry.version}" if base else None

    def artifact_url(self, entry: Entry, path: str) -> str | None:
        """An HTTP URL that serves artifact ``path`` of the version's run (an eval plot under ``eval/``) from
        MLflow's server, for a browser to open or a Markdown page to show; None when there is no UI."""
        from urllib.parse import urlencode

        base = self._ui_base()
        return f"{base}/get-artifact?{urlencode({'path': path, 'run_uuid': entry.run_id})}" if base else None

    def manifest(self, ref: str | Entry) -> dict:
        """The job manifest stored with a version."""
        entry = ref if isinstance(ref, Entry) else self.get(ref)
        return self._read_json(entry.run_id, "manifest.json")

    def _read_json(self, run_id: str, artifact: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            path = self._client.download_artifacts(run_id, artifact, tmp)
            return json.loads(Path(path).read_text())

    # ------------------------------------------------------------------------------------------------ aliases

    def set_alias(self, ref: str, alias: str) -> Entry:
        """Point ``alias`` of the version's name at the version (moving it from any other version)."""
        if alias not in ALIASES:
            raise RegistryError(f"alias {alias!r}: choose one of {', '.join(ALIASES)}")
        entry = self.get(ref)
        with self._exclusive():
            self._client.set_registered_model_alias(entry.name, alias, str(entry.version))
        return self.get(entry.ref)

    def alias_holder(self, name: str, alias: str) -> Entry | None:
        """The version ``alias`` points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self._entry(self._client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    # ------------------------------------------------------------------------------------------------ eval reports

    def attach_eval(self, ref: str, report_dir: str | Path) -> Entry:
        """Attach an eval report (a directory with ``report.json`` and ``manifest.json``, as ``alcm eval`` writes)
        to a checkpoint: its files become artifacts under ``eval/`` of the checkpoint's run, its headline metrics
        MLflow metrics and the version's ``alcm.headline``. Attaching the same report again changes nothing."""
        entry = self.get(ref)
        if entry.kind != CHECKPOINT:
            raise RegistryError(f"{entry.ref} is a {entry.type}, not a checkpoint: only checkpoints are evaluated")
        report_dir = local_copy(report_dir)  # an object-store report is read from its local copy
        report_manifest = read_manifest(report_dir)
        report = json.loads((report_dir / "report.json").read_text())
        if report["checkpoint"]["digest"] != entry.digest:
            raise RegistryError(f"{report_dir}: the report evaluates digest {report['checkpoint']['digest']}, but "
                                f"{entry.ref} has digest {entry.digest}")  # fmt: skip
        with self._exclusive():
            entry = self.get(entry.ref)  # as it is now, not before the lock
            if entry.tags.get(TAG + "eval") == report_manifest["digest"]:
                return entry
            self._client.log_artifacts(entry.run_id, str(report_dir), artifact_path="eval")
            for key, value in report["headline"].items():
                self._client.log_metric(entry.run_id, "eval/" + key.replace("@", "/") + "steps", float(value))
            headline = {**{k: v for k, v in entry.headline.items() if k in ("loss", "step")}, **report["headline"]}
            self._set_tags(entry, {TAG + "eval": report_manifest["digest"], TAG + "headline": json.dumps(headline)})
        return self.get(entry.ref)

    def eval_report(self, ref: str | Entry) -> dict | None:
        """The attached eval report (``report.json``), or None if the checkpoint was not evaluated."""
        entry = ref if isinstance(ref, Entry) else self.get(ref)
        return self._read_json(entry.run_id, "eval/report.json") if entry.evaluated else None

    def _set_tags(self, entry: Entry, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_model_version_tag(entry.name, str(entry.version), key, value)
            self._client.set_tag(entry.run_id, key, value)

    def record_decision(self, entry: Entry, decision: dict) -> None:
        """Store a promotion decision with the candidate (tag ``alcm.promotion`` and a JSON artifact)."""
        with self._exclusive(), tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"decision-{time.strftime('%Y%m%dT%H%M%S')}-{int(time.time() * 1e6) % 10**6:06d}.json"
            path.write_text(json.dumps(decision, indent=2, sort_keys=True))
            self._client.log_artifact(entry.run_id, str(path), artifact_path="promotion")
            self._set_tags(entry, {TAG + "promotion": json.dumps(decision, sort_keys=True)})

    # ------------------------------------------------------------------------------------------------ lineage

    def lineage(self, ref: str) -> dict:
        """The tree ``{entry, manifest, parents: [{role, node}], raw: [{role, ...input record}]}`` of a version:
        registered parents recursively, and the raw inputs (files, weights) each manifest lists, with digests."""
        return self._lineage(self.get(ref), set())

    def _lineage(self, entry: Entry, seen: set[str]) -> dict:
        manifest = self.manifest(entry)
        node = {"entry": entry, "manifest": manifest, "parents": [], "raw": []}
        if entry.ref in seen:
            return node
        seen = seen | {entry.ref}
        parent_roles = {p.role for p in entry.parents}
        for p in entry.parents:
            node["parents"].append({"role": p.role, "node": self._lineage(self.get(p.ref), seen)})
        for role, info in _inputs_of(manifest):
            if role not in parent_roles or role == "raw":
                node["raw"].append({"role": role, **info})
        return node

    def consumers(self, ref: str) -> list[Entry]:
        """Every checkpoint made (transitively, through parent checkpoints) from the version ``ref``."""
        target = self.get(ref).ref
        return self._descendants({target})

    def _descendants(self, refs: Iterable[str]) -> list[Entry]:
        everything = self._versions()
        children: dict[str, list[Entry]] = {}
        for e in everything:
            for p in e.parents:
                children.setdefault(p.ref, []).append(e)
        found: dict[str, Entry] = {}
        todo = list(refs)
        while todo:
            for child in children.get(todo.pop(), []):
                if child.ref not in found:
                    found[child.ref] = child
                    todo.append(child.ref)
        return sorted((e for e in found.values() if e.kind == CHECKPOINT), key=lambda e: (e.name, e.version))

    def consumers_of_any(self, refs: Iterable[str]) -> list[Entry]:
        """Every checkpoint made (transitively) from any of the versions ``refs``."""
        return self._descendants(refs)

    def diff(self, a: str, b: str) -> dict:
        """What changed from version ``a`` to ``b``: config keys, inputs (by role), metrics, code version."""
        ea, eb = self.get(a), self.get(b)
        ma, mb = self.manifest(ea), self.manifest(eb)
        config = _dict_diff(flatten(ma.get("config") or {}), flatten(mb.get("config") or {}))
        inputs = _dict_diff(_named_inputs(ea, ma), _named_inputs(eb, mb))
        metrics = _dict_diff(flatten({"train": ma.get("metrics") or {}}), flatten({"train": mb.get("metrics") or {}}))
        ra, rb = self.eval_report(ea), self.eval_report(eb)
        metrics.update(_dict_diff({f"eval/{k}": v for k, v in (ra or {}).get("headline", {}).items()},
                                  {f"eval/{k}": v for k, v in (rb or {}).get("headline", {}).items()}))  # fmt: skip
        return {
            "a": ea.ref,
            "b": eb.ref,
            "digest": (ea.digest, eb.digest),
            "code_version": (ma.get("code_version"), mb.get("code_version")),
            "config": config,
            "inputs": inputs,
            "metrics": metrics,
        }


def _named_inputs(entry: Entry, manifest: dict) -> dict[str, str]:
    """Role → the registered parent's ref, or a raw input's ``path digest`` (raw file lists left out)."""
    named = {p.role: p.ref for p in entry.parents}
    for role, info in _inputs_of(manifest):
        if role != "raw":
            named.setdefault(role, f"{info.get('path') or ''} {_input_digest(info)}".strip())
    return named


def _input_digest(info: dict) -> str:
    if info.get("digest"):
        return str(info["digest"])
    digests = info.get("digests")
    if isinstance(digests, dict):
        import hashlib

        joined = "\n".join(f"{k}={v}" for k, v in sorted(digests.items()))
        return "files:" + hashlib.sha256(joined.encode()).hexdigest()[:16]
    return ""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _dict_diff(a: dict, b: dict) -> dict[str, tuple[Any, Any]]:
    """``key → (value in a, value in b)`` for every key whose value differs (a missing key reads as None)."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
