"""Staging and publishing a job's output: a reader sees either no output or a whole one, its manifest written last.

Every job writes into a staging area and commits it when done::

    with staged_output(output_dir, overwrite=overwrite) as out:
        ...write files under out.dir...
        out.commit(manifest)          # manifest.json last, then the output appears whole

How the staging area is made and how the commit makes it visible is a :class:`Publisher`'s business, chosen by the
destination (:func:`publisher_for`), so a commit protocol for another store (an object store, where nothing is
renamed: files under a unique prefix, committed by writing the manifest last) slots in without touching the jobs.

:class:`LocalPublisher`, for local and mounted file systems: a staging directory next to the destination (created
before any work, so an unwritable destination fails at once), renamed into place; an overwritten output is moved
aside and removed after the rename. Staging directories that a killed job left behind are removed by the next job
for the same destination on this host. A failed job leaves nothing (its staging directory is removed); a full disk
is reported as such, naming the output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from contracts.manifest import Manifest, write_manifest


class Publisher(Protocol):
    """How outputs of one kind of store are staged and committed (the small interface every job goes through)."""

    def prepare(self, destination: str, *, overwrite: bool) -> Path:
        """Check that ``destination`` can be written (raising before any work if not) and return a fresh, empty
        local staging directory for the job's files."""

    def commit(self, staging: Path, destination: str, manifest: Manifest | dict) -> str:
        """Write ``manifest`` last and make the staged output visible as ``destination``; return where it is."""

    def discard(self, staging: Path) -> None:
        """Remove a staging area whose job failed."""


def publisher_for(destination: str | Path) -> Publisher:
    """The publisher of a destination: :class:`LocalPublisher` for a path (no other store is supported yet)."""
    if "://" in str(destination):
        raise ValueError(f"output {destination}: only local or mounted paths can be published to so far; write to "
                         "a path (an object store mount, or a shared volume)")  # fmt: skip
    return LocalPublisher()


@dataclass
class StagedOutput:
    """A job's output while it is being written: files go under :attr:`dir`; :meth:`commit` publishes them."""

    dir: Path
    """The local staging directory the job writes into."""
    destination: str
    publisher: Publisher
    committed: str | None = None

    def commit(self, manifest: Manifest | dict) -> Path:
        """Write the manifest last and publish the output; return its location."""
        self.committed = self.publisher.commit(self.dir, self.destination, manifest)
        return Path(self.committed)


@contextmanager
def staged_output(destination: str | Path, *, overwrite: bool = False) -> Iterator[StagedOutput]:
    """A :class:`StagedOutput` for ``destination`` (checked before the block runs); if the block raises, the staging
    area is removed and nothing is published, and a full disk is reported naming the output. A block that ends
    without :meth:`StagedOutput.commit` is an error (nothing is published)."""
    publisher = publisher_for(destination)
    staging = publisher.prepare(str(destination), overwrite=overwrite)
    out = StagedOutput(staging, str(destination), publisher)
    try:
        yield out
        if out.committed is None:
            raise RuntimeError(f"output {destination}: the job ended without committing it")
    except BaseException as exc:
        publisher.discard(staging)
        if _disk_full(exc):
            raise OSError(errno.ENOSPC, f"output {Path(destination).resolve()}: no space left on the device while "
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


# ------------------------------------------------------------------------------------------------ local file systems


class LocalPublisher:
    """Staging directory beside the destination, renamed into place (see the module docstring)."""

    def prepare(self, destination: str, *, overwrite: bool) -> Path:
        return prepare_output(Path(destination), overwrite=overwrite)

    def commit(self, staging: Path, destination: str, manifest: Manifest | dict) -> str:
        write_manifest(staging, manifest)
        return str(publish(staging, Path(destination)))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        _owner_file(staging).unlink(missing_ok=True)



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

