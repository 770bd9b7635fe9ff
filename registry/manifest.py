"""Job manifests: the contract between a job's outputs and whatever records them.

Every job writes ``manifest.json`` at the root of its output, *last*, after its data files are complete. A
manifest holds: ``name``, ``version``, ``digest`` (content digest of the dataset), ``kind``, ``counts``,
``inputs`` (each with its path and digest), ``config`` (the resolved config), ``code_version``, ``timings``
and job-specific fields. Flows read it and record it in the registry; jobs never write the registry. A manifest
never holds a credential: :func:`write_manifest` redacts it (``registry.redact``).

Outputs are published atomically: a job writes into a staging directory next to the destination and renames it
into place, so a reader sees either no dataset or a complete one. This module is torch- and Ray-free.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.redact import redact

MANIFEST = "manifest.json"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def file_digest(path: Path, *, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def tree_digest(paths: list[Path], root: Path) -> str:
    """``sha256:<hex>`` over the sorted (relative path, file digest) pairs of ``paths``."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.relative_to(root).as_posix()):
        h.update(f"{p.relative_to(root).as_posix()}\0{file_digest(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def code_version() -> str:
    """The git commit of the project (with ``-dirty`` if the tree has changes), or ``unknown`` outside git."""
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


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (sorted keys, atomic replace) and return its path.

    What is written is :func:`registry.redact.redact` of ``manifest`` (``manifest`` itself is not changed): no
    credential in a config value, input path or URI reaches the file, nor the registry and the flow artifacts that
    copy it. The digests in it are written as given: jobs compute them from their data, files and inputs, never
    from the written text, so redaction changes none."""
    path = Path(out_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(redact(manifest), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


class IntegrityError(ValueError):
    """A job output's file no longer has the content its manifest recorded (or is missing)."""


def verify_files(out_dir: Path, manifest: dict[str, Any] | None = None) -> int:
    """Check every file a checkpoint's manifest lists (``files``: relative path → sha256 hex) against its bytes;
    return how many were checked. Raises :class:`IntegrityError` naming the file and both digests, so a flipped
    byte or a truncated copy is caught when a later stage loads the output, not as a wrong model downstream.
    A manifest without a per-file map (datasets, whose ``digest`` covers the table) checks nothing here."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir) if manifest is None else manifest
    files = manifest.get("files")
    if not isinstance(files, dict):
        return 0
    for rel, expected in sorted(files.items()):
        path = out_dir / rel
        if not path.is_file():
            raise IntegrityError(f"{path} is missing: {out_dir / MANIFEST} lists it (sha256:{expected})")
        actual = file_digest(path).removeprefix("sha256:")
        if actual != expected:
            raise IntegrityError(f"{path}: content digest sha256:{actual} does not match sha256:{expected} recorded "
                                 f"in {out_dir / MANIFEST}; the file changed or was corrupted after the job wrote "
                                 "it")  # fmt: skip
    return len(files)


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """Read a job's manifest; a missing one means the job did not finish."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the job that writes {out_dir} did not finish")
    return json.loads(path.read_text())


def prepare_output(out_dir: Path, *, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can be published and return a fresh staging directory beside it.

    Raises before any work if the destination exists and is not empty (unless ``overwrite``) or its parent cannot
    be written (a read-only or missing file system: the staging directory is created here, so the error comes
    now, not after the job). Staging directories that a killed job left for the same destination on this host are
    removed first (:func:`remove_stale_staging`).
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output {out_dir} is not empty; choose a new directory or pass overwrite")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir.parent, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        remove_stale_staging(out_dir)
        staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        _owner_file(staging).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    except OSError as exc:
        raise OSError(exc.errno, f"output {out_dir}: cannot write in {out_dir.parent} ({exc.strerror or exc}); "
                                 "nothing was started") from exc  # fmt: skip
    return staging


def _owner_file(staging: Path) -> Path:
    """The file beside a staging directory naming the process that writes it (never inside: it would be
    published)."""
    return staging.parent / f"{staging.name}.owner"


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging directories of ``out_dir`` whose writer was a process on this host that no longer runs
    (a job killed before it could clean up); return them. A staging directory of a live process, of another host,
    or without an owner file is left alone."""
    removed = []
    for owner in sorted(out_dir.parent.glob(f".{out_dir.name}.staging-*.owner")):
        try:
            info = json.loads(owner.read_text())
            if info.get("host") != socket.gethostname() or _alive(int(info["pid"])):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        staging = owner.with_name(owner.name.removesuffix(".owner"))
        shutil.rmtree(staging, ignore_errors=True)
        owner.unlink(missing_ok=True)
        removed.append(staging)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staged_output(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A staging directory for ``out_dir`` (see :func:`prepare_output`), removed if the block raises, so a failed
    job leaves no partial dataset; the block publishes it with :func:`publish` when done. A full disk while
    writing is reported as such, naming the output."""
    staging = prepare_output(out_dir, overwrite=overwrite)
    try:
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _owner_file(staging).unlink(missing_ok=True)
        if _disk_full(exc):
            raise OSError(errno.ENOSPC, f"output {Path(out_dir).resolve()}: no space left on the device while "
                                        "writing; the partial output was removed and nothing was published") from exc
        raise


def _disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or what it wraps: Ray re-raises a worker's OSError inside its own error) is a full disk."""
    seen = 0
    while exc is not None and seen < 8:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def publish(staging: Path, out_dir: Path) -> Path:
    """Move a finished staging directory into place as ``out_dir`` (replacing an empty or overwritable one)."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, old)
        os.rename(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out_dir)
    _owner_file(staging).unlink(missing_ok=True)
    return out_dir
