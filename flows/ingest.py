"""``alcm ingest PATH --kind KIND``: land a raw shard and tell the platform (a Prefect ``alcm.data.landed`` event).

With ``--data-root ROOT`` the shard (a file or a directory) is copied into ``ROOT/<layout>`` (see
:data:`flows.serve.RAW_LAYOUT`: ``images/parquet``, ``videos/wds``, ``dancers``) under its own name, through a
temporary name and a rename, so a retrain never reads half a shard; a shard already inside its root is only
announced. The event's resource is ``alcm.raw.<kind>`` and its payload names the kind, the shard, the root, the
number of files and bytes: the retrain deployment's trigger (:func:`flows.serve.build_deployments`) starts a run on
the root that names the shard. The event goes to the Prefect server at ``PREFECT_API_URL`` (``alcm serve`` prints it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from flows.serve import DATA_LANDED, RAW_LAYOUT


class IngestError(ValueError):
    """A shard that cannot be landed (named with the reason)."""


def _size(path: Path) -> tuple[int, int]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def land(path: str | Path, kind: str, data_root: str | Path | None) -> dict:
    """Copy ``path`` into its kind's directory under ``data_root`` (if given and not already there); return the
    event payload."""
    if kind not in RAW_LAYOUT:
        raise IngestError(f"--kind {kind!r}: choose one of {', '.join(RAW_LAYOUT)}")
    src = Path(path).resolve()
    if not src.exists():
        raise IngestError(f"shard {src} does not exist")
    files, size = _size(src)
    if files == 0:
        raise IngestError(f"shard {src} holds no file")
    if data_root is None:
        return {"kind": kind, "shard": str(src), "root": str(src.parent), "files": files, "bytes": size}
    root = Path(data_root).resolve() / RAW_LAYOUT[kind]
    if src.is_relative_to(root):
        return {"kind": kind, "shard": str(src), "root": str(root), "files": files, "bytes": size}
    dest = root / src.name
    if dest.exists():
        raise IngestError(f"{dest} already exists: a landed shard is never replaced; give the new shard a new name")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{src.name}.landing-{os.getpid()}"
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.rename(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return {"kind": kind, "shard": str(dest), "root": str(root), "files": files, "bytes": size}


def emit_landed(payload: dict) -> str:
    """Send the ``alcm.data.landed`` event to the Prefect server; return the event id."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise IngestError("no Prefect server: set PREFECT_API_URL (alcm serve prints it), e.g. "
                          "http://127.0.0.1:4200/api")  # fmt: skip
    event = Event(
        event=DATA_LANDED,
        resource={
            "prefect.resource.id": f"alcm.raw.{payload['kind']}",
            "prefect.resource.name": Path(payload["shard"]).name,
            "alcm.kind": payload["kind"],
        },  # fmt: skip
        payload=payload,
    )

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return str(event.id)
