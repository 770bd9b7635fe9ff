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
is reported as such, naming the output. Without overwrite, a job never replaces an output another job published
while it ran (it fails instead); files are flushed before the rename; an overwrite killed between its two renames
is finished or undone by the next job for the same output (:func:`publish`).

:class:`ObjectStorePublisher`, for ``s3://`` and ``gs://`` destinations, where nothing can be renamed: each job
writes under a unique attempt prefix ``DEST/_attempts/<attempt>/`` (the files the job wrote locally are uploaded
there at commit; distributed writers write there directly, :attr:`StagedOutput.location`), then commits by writing
``DEST/manifest.json`` last, one PUT, with ``storage_root`` naming the attempt. Readers trust only a committed
output: :func:`contracts.manifest.read_manifest` reads that manifest and :func:`output_root` resolves the attempt.
A crashed writer leaves only an attempt no manifest names; the next job for the same destination collects it
(its writer on this host is gone, or it is older than :data:`STALE_ATTEMPT_S`). Overwriting replaces the manifest
first and removes the old attempt after, so a reader never sees a manifest whose files are gone mid-commit.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from contracts import storage
from contracts.manifest import MANIFEST, Manifest, output_root, write_manifest


class Publisher(Protocol):
    """How outputs of one kind of store are staged and committed (the small interface every job goes through)."""

    def prepare(self, destination: str, *, overwrite: bool) -> Path:
        """Check that ``destination`` can be written (raising before any work if not) and return a fresh, empty
        local staging directory for the job's files."""

    def commit(self, staging: Path, destination: str, manifest: Manifest | dict) -> str:
        """Write ``manifest`` last and make the staged output visible as ``destination``; return where it is."""

    def discard(self, staging: Path) -> None:
        """Remove a staging area whose job failed."""

    def location(self, staging: Path) -> str:
        """Where writers that take a URI may write this output's files directly (:attr:`StagedOutput.location`)."""


def publisher_for(destination: str | Path) -> Publisher:
    """The publisher of a destination: :class:`ObjectStorePublisher` for an object-store URI (``s3://``,
    ``gs://``), :class:`LocalPublisher` for a path."""
    storage.check_scheme(str(destination))
    return ObjectStorePublisher() if storage.is_uri(destination) else LocalPublisher()


@dataclass
class StagedOutput:
    """A job's output while it is being written: files go under :attr:`dir`; :meth:`commit` publishes them."""

    dir: Path
    """The local staging directory the job writes into."""
    destination: str
    publisher: Publisher
    committed: str | None = None
    location: str = ""
    """Where writers that take a URI (Ray Data's writes, pyarrow) may write directly: the object-store attempt
    prefix for an object-store destination (so writes from every node of a cluster land in it), else :attr:`dir`.
    Files under :attr:`dir` are published too."""

    def __post_init__(self) -> None:
        self.location = self.location or str(self.dir)

    def path(self, *parts: str) -> str:
        """A location under :attr:`location` (a URI or a local path) for a writer that takes either."""
        return storage.join(self.location, *parts)

    def commit(self, manifest: Manifest | dict) -> Path | str:
        """Write the manifest last and publish the output; return its location (a Path, or the URI)."""
        self.committed = self.publisher.commit(self.dir, self.destination, manifest)
        return self.committed if storage.is_uri(self.committed) else Path(self.committed)


@contextmanager
def staged_output(destination: str | Path, *, overwrite: bool = False) -> Iterator[StagedOutput]:
    """A :class:`StagedOutput` for ``destination`` (checked before the block runs); if the block raises, the staging
    area is removed and nothing is published, and a full disk is reported naming the output. A block that ends
    without :meth:`StagedOutput.commit` is an error (nothing is published)."""
    publisher = publisher_for(destination)
    staging = publisher.prepare(str(destination), overwrite=overwrite)
    out = StagedOutput(staging, str(destination), publisher, location=publisher.location(staging))
    try:
        yield out
        if out.committed is None:
            raise RuntimeError(f"output {destination}: the job ended without committing it")
    except BaseException as exc:
        publisher.discard(staging)
        if _disk_full(exc):
            raise OSError(errno.ENOSPC, f"output {storage.normalize(destination)}: no space left on the device while "
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

    def __init__(self) -> None:
        self._overwrite: dict[Path, bool] = {}

    def prepare(self, destination: str, *, overwrite: bool) -> Path:
        staging = prepare_output(Path(destination), overwrite=overwrite)
        self._overwrite[staging] = overwrite
        return staging

    def commit(self, staging: Path, destination: str, manifest: Manifest | dict) -> str:
        write_manifest(staging, manifest)
        return str(publish(staging, Path(destination), overwrite=self._overwrite.pop(staging, False)))

    def discard(self, staging: Path) -> None:
        self._overwrite.pop(staging, None)
        shutil.rmtree(staging, ignore_errors=True)
        _owner_file(staging).unlink(missing_ok=True)

    def location(self, staging: Path) -> str:
        return str(staging)


def prepare_output(out_dir: Path, *, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can be published and return a fresh staging directory beside it.

    Raises before any work if the destination exists and is not empty (unless ``overwrite``) or its parent cannot
    be written (a read-only or missing file system: the staging directory is created here, so the error comes
    now, not after the job). Staging directories that a killed job left for the same destination on this host are
    removed first (:func:`remove_stale_staging`).
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.parent.is_dir():
        with _parent_lock(out_dir):
            restore_interrupted(out_dir)
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


def publish(staging: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Move a finished staging directory into place as ``out_dir``; return it.

    Every staged file and directory is flushed to disk first (``fsync``), so the rename never publishes data that a
    power loss could still take back. Without ``overwrite`` the rename replaces at most an empty directory: if
    another job published ``out_dir`` meanwhile, this one fails (``FileExistsError``) and that output stays as it
    is, byte for byte. With ``overwrite`` the old output is renamed aside, the new one renamed in, and the old one
    removed; if the second rename fails the old output is renamed back, and a process killed between the two
    renames leaves ``.NAME.old-*``, which the next :func:`prepare_output` or :func:`publish` of the same output
    restores (:func:`restore_interrupted`). Both steps hold a lock on the parent directory.
    """
    out_dir = Path(out_dir).resolve()
    _sync_tree(staging)
    with _parent_lock(out_dir):
        restore_interrupted(out_dir)
        if overwrite and out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            try:
                os.rename(staging, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            _fsync_path(out_dir.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(staging, out_dir)  # replaces an empty directory, never a published output
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise FileExistsError(errno.EEXIST, _taken(out_dir)) from exc
            _fsync_path(out_dir.parent)
    _owner_file(staging).unlink(missing_ok=True)
    return out_dir


def _taken(destination: str | Path) -> str:
    return (f"output {destination} was published by another job while this one ran; without overwrite it is left "
            "as it is, and this job's output is discarded")  # fmt: skip


def restore_interrupted(out_dir: Path) -> list[Path]:
    """Finish an overwrite that a killed process left between its two renames: with ``out_dir`` missing, the
    newest ``.NAME.old-*`` beside it is renamed back; with ``out_dir`` there, the ``.old-*`` ones are removed.
    Return the ``.old-*`` directories handled. Call it holding :func:`_parent_lock`."""
    olds = sorted(out_dir.parent.glob(f".{out_dir.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not out_dir.exists():
        os.rename(olds[-1], out_dir)
        _fsync_path(out_dir.parent)
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    return olds


@contextmanager
def _parent_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``out_dir``'s parent directory (no lock file is left beside the outputs)."""
    fd = os.open(out_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync_tree(root: Path) -> None:
    """``fsync`` every file and directory under ``root``, deepest first, then ``root`` itself."""
    for here, dirs, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(here, name))
        for name in dirs:
            _fsync_path(Path(here, name))
    _fsync_path(root)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ object stores

ATTEMPTS = "_attempts"
#: An uncommitted attempt older than this (seconds) is a crashed writer's, whatever host wrote it.
STALE_ATTEMPT_S = float(os.environ.get("ALCM_STALE_ATTEMPT_S", 24 * 3600))


class ObjectStorePublisher:
    """Unique attempt prefix, committed by writing the manifest last (see the module docstring)."""

    def __init__(self) -> None:
        self._attempts: dict[Path, tuple[str, str]] = {}  # staging dir → (destination, attempt id)
        self._overwrite: dict[Path, bool] = {}

    def prepare(self, destination: str, *, overwrite: bool) -> Path:
        dest = storage.normalize(destination)
        committed = _committed_manifest(dest)
        if committed is not None and not overwrite:
            raise FileExistsError(f"output {dest} already holds a published output; choose a new location or pass "
                                  "overwrite")  # fmt: skip
        collect_leftovers(dest, keep=(committed or {}).get("storage_root"))
        attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        try:  # written before any work: an unwritable bucket or missing credentials fail now
            storage.write_bytes(storage.join(dest, ATTEMPTS, f"{attempt}.owner"), json.dumps(owner).encode())
        except OSError as exc:
            raise OSError(getattr(exc, "errno", None) or errno.EACCES, f"output {dest}: cannot write there ({exc}); "
                          "nothing was started") from exc  # fmt: skip
        staging = Path(tempfile.mkdtemp(prefix="alcm-staging-"))
        self._attempts[staging] = (dest, attempt)
        self._overwrite[staging] = overwrite
        return staging

    def location(self, staging: Path) -> str:
        dest, attempt = self._attempts[staging]
        return storage.join(dest, ATTEMPTS, attempt)

    def commit(self, staging: Path, destination: str, manifest: Manifest | dict) -> str:
        dest, attempt = self._attempts[staging]
        root = storage.join(ATTEMPTS, attempt)
        write_manifest(staging, manifest)
        storage.upload_tree(staging, storage.join(dest, root))
        previous = _committed_manifest(dest)
        if previous is not None and not self._overwrite.pop(staging, False):
            # Another job committed here while this one ran: its output stays; this attempt is discarded.
            raise FileExistsError(errno.EEXIST, _taken(dest))
        written = json.loads((staging / MANIFEST).read_text())
        storage.write_bytes(storage.join(dest, MANIFEST), (json.dumps({**written, "storage_root": root}, indent=2,
                                                                      sort_keys=True) + "\n").encode())  # fmt: skip
        storage.delete_tree(storage.join(dest, ATTEMPTS, f"{attempt}.owner"))
        old_root = (previous or {}).get("storage_root")
        if old_root and old_root != root and not storage.is_uri(old_root):  # a link's root is another output's
            storage.delete_tree(storage.join(dest, old_root))
        shutil.rmtree(staging, ignore_errors=True)
        self._attempts.pop(staging, None)
        return dest

    def discard(self, staging: Path) -> None:
        self._overwrite.pop(staging, None)
        dest, attempt = self._attempts.pop(staging, (None, None))
        shutil.rmtree(staging, ignore_errors=True)
        if dest is not None:
            storage.delete_tree(storage.join(dest, ATTEMPTS, attempt))
            storage.delete_tree(storage.join(dest, ATTEMPTS, f"{attempt}.owner"))


def _committed_manifest(dest: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(dest, MANIFEST)))
    except FileNotFoundError:
        return None


def link_output(target: str | Path, link: str | Path) -> str:
    """Make ``link`` name the committed output ``target`` (what the retrain flow's ``WORK/<output>`` entries are).

    On a file system a relative symlink. On an object store, which has no links, a copy of ``target``'s manifest
    at ``link/manifest.json`` whose ``storage_root`` is the whole URI of ``target``'s files and ``link_to`` names
    ``target``: one PUT switches it, and every reader (datasets, checkpoints, the registry, audit queries) reads the
    link as the output itself. A real output already at ``link`` is refused, not replaced."""
    if storage.is_uri(target) != storage.is_uri(link):
        raise ValueError(f"cannot link {link} to {target}: both must be paths or both object-store URIs")
    if not storage.is_uri(link):
        link, target = Path(link), Path(target)
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link} exists and is not a link to an output; move it away")
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
        return str(link)
    link, target = storage.normalize(link), storage.normalize(target)
    current = _committed_manifest(link)
    if current is not None and not current.get("link_to"):
        raise FileExistsError(f"{link} holds an output of its own, not a link to one; move it away")
    manifest = _committed_manifest(target)
    if manifest is None:
        raise FileNotFoundError(f"cannot link {link} to {target}: it has no committed manifest.json")
    pointer = {**manifest, "storage_root": output_root(target, manifest), "link_to": target}
    storage.write_bytes(storage.join(link, MANIFEST), (json.dumps(pointer, indent=2, sort_keys=True) + "\n").encode())
    return link


def collect_leftovers(destination: str, *, keep: str | None = None) -> list[str]:
    """Remove the attempts under an object-store ``destination`` that no manifest names (``keep``: the committed
    one) and whose writer is gone: a process on this host that no longer runs, or any writer after
    :data:`STALE_ATTEMPT_S`. Return the attempts removed."""
    removed = []
    files = storage.list_files(storage.join(destination, ATTEMPTS))
    attempts = sorted({rel.split("/", 1)[0].removesuffix(".owner") for rel, _ in files})
    for attempt in attempts:
        if keep and keep.rstrip("/").endswith(f"/{attempt}"):
            continue
        try:
            owner = json.loads(storage.read_bytes(storage.join(destination, ATTEMPTS, f"{attempt}.owner")))
        except (FileNotFoundError, ValueError):
            owner = {}
        pid = owner.get("pid")
        here = pid is not None and owner.get("host") == socket.gethostname() and not _alive(int(pid))
        old = time.time() - float(owner.get("started", 0)) > STALE_ATTEMPT_S
        if here or old:
            storage.delete_tree(storage.join(destination, ATTEMPTS, attempt))
            storage.delete_tree(storage.join(destination, ATTEMPTS, f"{attempt}.owner"))
            removed.append(attempt)
    return removed
