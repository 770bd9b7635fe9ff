"""Job manifests: the contract between a job's outputs and whatever records them.

Every job writes ``manifest.json`` at the root of its output, *last*, after its data files are complete
(:mod:`contracts.publish` does it as the commit of the output). A manifest is a :class:`Manifest`: ``name``,
``kind``, ``job``, ``digest`` (the output's content identity), ``inputs`` (each with its path and digest),
``config`` (the settings the job received), ``code_version``, and where they apply ``profile``, ``stage``,
``version``, ``counts``, ``metrics``, ``files`` (relative path → sha256 hex of every file the job wrote, checked by
:func:`verify_files` when a later stage loads the output), ``timings``, plus job-specific fields (``export``,
``run``, ``adapters``, ``headline``, ...). Flows read it and record it in the registry; jobs never write the
registry. A manifest never holds a credential: :func:`write_manifest` redacts it (:mod:`contracts.redact`).

Digests in a manifest are computed by the job from its data, files and inputs, never from the written text, so
redaction changes none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts import storage
from contracts.digests import json_digest, sha256_file
from contracts.redact import redact

MANIFEST = "manifest.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Manifest:
    """A job output's ``manifest.json`` as a typed object (see the module docstring).

    The common fields are attributes; job-specific ones are in :attr:`extra` and are written at the top level of
    the JSON beside them. Optional fields left ``None`` are not written."""

    name: str
    """Name the output is registered under (``toy-curated-images``, ``toy-lcm-lora``, ...)."""
    kind: str
    """What the output is: ``image-text-dataset``, ``text-video-dataset``, ``captioned-video-dataset``,
    ``checkpoint``, ``eval-report``."""
    job: str
    """The job (stage) that wrote it."""
    digest: str
    """``sha256:<hex>`` content identity: of the kept rows for datasets, of the files and inputs for checkpoints."""
    inputs: dict | list
    """What it was made from: named inputs (``dataset``, ``stage1``, ``teacher``, ...) each with its path and digest,
    or, for datasets, the list of raw sources read."""
    config: dict
    """The settings the job received (its sections of the profile), as plain JSON."""
    code_version: str
    """The git commit of the code that wrote it (:func:`code_version`)."""
    profile: str | None = None
    """The config profile."""
    stage: str | None = None
    """The stage tag of a checkpoint (the stage's name in :mod:`contracts.stages`)."""
    version: str | None = None
    """A short version string of a dataset (the first hex digits of its digest)."""
    counts: dict | None = None
    """Row accounting: inputs, decisions, reasons (datasets); rows encoded and failed by reason (checkpoints)."""
    metrics: dict | None = None
    """Training metrics of the final step (checkpoints)."""
    files: dict | list | None = None
    """Relative path → sha256 hex of every file written (checked on load by :func:`verify_files`)."""
    timings: dict | None = None
    """Seconds per step of the job."""
    extra: dict = field(default_factory=dict)
    """Job-specific fields, written at the top level."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json`` (common fields, then :attr:`extra`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        clash = sorted(set(out) & set(self.extra))
        if clash:
            raise ValueError(f"manifest extra fields {clash} clash with common fields; set them as attributes")
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """A manifest read back (unknown keys go to :attr:`extra`); raises naming a missing common field."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"manifest has no {', '.join(missing)}: not written by a job of this platform")
        return cls(**{k: v for k, v in data.items() if k in names}, extra={k: v for k, v in data.items()
                                                                           if k not in names})  # fmt: skip


def checkpoint_digest(files: dict[str, str], inputs: dict) -> str:
    """A checkpoint's content identity: ``sha256:`` over its files' digests and its inputs."""
    return "sha256:" + json_digest({"files": files, "inputs": inputs})


def code_version() -> str:
    """The git commit of the project (with ``-dirty`` if the tree has changes), or ``$ALCM_CODE_VERSION`` (else
    ``unknown``) outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("ALCM_CODE_VERSION", "unknown")
    return sha + ("-dirty" if dirty else "")


def write_manifest(out_dir: Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Write ``manifest.json`` (sorted keys, atomic replace) and return its path.

    What is written is :func:`contracts.redact.redact` of ``manifest`` (``manifest`` itself is not changed): no
    credential in a config value, input path or URI reaches the file, nor the registry and the flow artifacts that
    copy it. The digests in it are written as given: jobs compute them from their data, files and inputs, never
    from the written text, so redaction changes none."""
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(redact(data), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read a job's manifest as JSON (of a directory, or of an object-store output: its committed manifest); a
    missing one means the job did not finish."""
    if storage.is_uri(out_dir):
        try:
            return json.loads(storage.read_bytes(storage.join(out_dir, MANIFEST)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{storage.join(out_dir, MANIFEST)} does not exist: the job that writes "
                                    f"{out_dir} did not finish") from None  # fmt: skip
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the job that writes {out_dir} did not finish")
    return json.loads(path.read_text())


class IntegrityError(ValueError):
    """A job output's file no longer has the content its manifest recorded (or is missing, or is not listed)."""


def files_map(root: str | Path, dirs: tuple[str, ...] | None = None) -> dict[str, str]:
    """``files`` of a manifest: every file under ``root/<dir>`` for each of ``dirs`` (every file under ``root``
    when ``dirs`` is None), relative path → sha256 hex. ``root`` may be an object-store prefix."""
    if storage.is_uri(root):
        out = {}
        for top in dirs if dirs is not None else ("",):
            for rel, _ in storage.list_files(storage.join(root, top)):
                name = f"{top}/{rel}" if top else rel
                out[name] = storage.sha256(storage.join(root, name))
        return dict(sorted(out.items()))
    root = Path(root)
    tops = [root / d for d in dirs] if dirs is not None else [root]
    return {f.relative_to(root).as_posix(): sha256_file(f) for top in tops for f in sorted(top.rglob("*"))
            if f.is_file()}  # fmt: skip


def output_root(location: str | Path, manifest: dict | None = None) -> str:
    """Where a committed output's files are: the attempt prefix its manifest's ``storage_root`` names on an object
    store (relative to the output, or a whole URI: a link to another output, :func:`contracts.publish.link_output`),
    the directory itself for a path."""
    if not storage.is_uri(location):
        return str(location)
    if manifest is None:
        try:
            manifest = read_manifest(location)
        except FileNotFoundError:
            manifest = {}
    root = manifest.get("storage_root")
    if not root:
        return str(location)
    return root if storage.is_uri(root) else storage.join(location, root)


def verify_files(out_dir: str | Path, manifest: dict[str, Any] | None = None) -> int:
    """Check every file a manifest lists (``files``: relative path → sha256 hex) against its bytes; return how many
    were checked. Raises :class:`IntegrityError` naming the file and both digests, so a flipped byte or a truncated
    copy is caught when a later stage loads the output, not as a wrong model downstream. A manifest without a
    per-file map checks nothing here. ``out_dir`` may be a committed object-store output (its files are read where
    its manifest says, streamed)."""
    manifest = read_manifest(out_dir) if manifest is None else manifest
    files = manifest.get("files")
    if not isinstance(files, dict):
        return 0
    if storage.is_uri(out_dir):
        return _verify_remote(str(out_dir), manifest, files)
    out_dir = Path(out_dir)
    for rel, expected in sorted(files.items()):
        path = out_dir / rel
        if not path.is_file():
            raise IntegrityError(f"{path} is missing: {out_dir / MANIFEST} lists it (sha256:{expected})")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: content digest sha256:{actual} does not match sha256:{expected} recorded "
                                 f"in {out_dir / MANIFEST}; the file changed or was corrupted after the job wrote "
                                 "it")  # fmt: skip
    return len(files)


def _verify_remote(location: str, manifest: dict, files: dict[str, str]) -> int:
    root = output_root(location, manifest)
    present = dict(storage.list_files(root))
    for rel, expected in sorted(files.items()):
        where = storage.join(root, rel)
        if rel not in present:
            raise IntegrityError(f"{where} is missing: {storage.join(location, MANIFEST)} lists it (sha256:{expected})")
        actual = storage.sha256(where)
        if actual != expected:
            raise IntegrityError(f"{where}: content digest sha256:{actual} does not match sha256:{expected} recorded "
                                 f"in {storage.join(location, MANIFEST)}; the object changed after the job wrote it")
    return len(files)


def check_listed(input_dir: str | Path, manifest: dict, files: list[str] | list[Path]) -> None:
    """Refuse data files the dataset's manifest does not list (added after the job published it, so its digest and
    audit do not cover them); a manifest without a per-file map lists nothing to check against."""
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return
    rels = [_relative(input_dir, manifest, f) for f in files]
    extra = [rel for rel in rels if rel not in listed]
    if extra:
        names = ", ".join(extra[:5])
        raise IntegrityError(f"{input_dir}: {len(extra)} data file(s) not listed in its manifest.json ({names}): "
                             "added after the job published the dataset, so its digest and audit do not cover them")


def _relative(location: str | Path, manifest: dict, file: str | Path) -> str:
    if storage.is_uri(location):
        return str(file)[len(output_root(location, manifest).rstrip("/")) + 1:]
    return Path(file).relative_to(location).as_posix()
