"""Preflight of the training runs' storage (``<stage>.train.storage_path``), before any work starts.

Ray Train writes checkpoints to a local directory or an object-store URI. A mistyped or missing one would otherwise
fail after the data was read and the workers started, or at the first checkpoint. :func:`check_storage` resolves the
URI's file system (pyarrow, as Ray Train does), creates the run root if it is missing, and writes and deletes a probe
file, raising :class:`StorageError` naming the config key, the URI and the cause.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs


class StorageError(ValueError):
    """The checkpoint storage cannot be used (a bad config value: not retried)."""


def check_storage(storage_path: str, key: str) -> str:
    """Check that ``storage_path`` (the value of config ``key``) can hold checkpoints; return it resolved."""
    where = f"{key}={storage_path!r}"
    try:
        if "://" in storage_path:
            fs, root = pafs.FileSystem.from_uri(storage_path)
        else:
            fs, root = pafs.LocalFileSystem(), str(Path(storage_path).resolve())
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError / ValueError for a bad URI
        raise StorageError(f"{where}: not a usable storage URI ({exc})") from exc
    probe = f"{root.rstrip('/')}/.alcm-probe-{uuid.uuid4().hex[:8]}"
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            raise StorageError(f"{where}: {root} is a file, not a directory")
        if info.type == pafs.FileType.NotFound:
            fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to list, create or write is the same answer
        raise StorageError(f"{where}: cannot create or write checkpoints there ({exc})") from exc
    return storage_path if "://" in storage_path else root
