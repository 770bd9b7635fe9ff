"""Reading raw video inputs into uniform raw rows, safely and without losing any.

The video counterpart of :mod:`pipelines.sources`. Three layouts are read, and one root may hold all of them:

- TikTok-dataset sequences: a directory ``SEQ/`` holding ``images/`` with numbered frames (``0001.png ...``,
  png/jpg), optionally ``masks/`` (same numbering), ``densepose/`` and our ``pose/`` (``0001.json`` per frame),
  and optionally ``caption.txt``. A directory is a sequence iff it has an ``images/`` subdirectory; one sequence
  is one row (key: the folder name), and nothing under it is a separate input;
- video files (``.mp4 .webm .mov .mkv .avi``) anywhere else, with optional ``KEY.txt`` (caption) and ``KEY.json``
  (metadata) sidecars of the same stem; key: the file stem;
- video2dataset-style webdataset tars: members ``KEY.mp4|webm|mov|mkv|avi`` with ``KEY.txt`` and ``KEY.json``.

Every input becomes exactly one raw row, a dict with the columns of :data:`RAW_VIDEO_COLUMNS`. A row that cannot be
read is still emitted, with ``quarantine`` set to its reason (``bad_schema``, ``unsafe_path``, ``bad_encoding``,
``too_large``, ``missing_frames``) and ``error`` explaining it; a quarantined row carries no payload (``video``,
``frame_files`` ... are None). An unreadable tar is one quarantined row naming it. Paths and member names that leave
the input root (absolute, ``..``, symlinks, devices) are never opened; tar members are read in memory, never
extracted. Files that are none of the above are returned by :func:`discover_videos` as ignored, never dropped
silently. This module only reads bytes and lists files: decoding (and ``undecodable``) is the decode stage's job.

The root may be an object-store prefix (``s3://...``, :mod:`contracts.storage`): :func:`discover_videos` finds the
same sources from a listing, and :func:`localize` copies the files of one source into a local directory, which the
same readers then read, so a prefix gives the same rows as a local copy of it.

A row's ``id`` is ``<label>#<index>`` with a six-digit index: the sequence directory or the video file (index 0),
or the tar with the reading-order index of the row in it; ids are unique and sort in reading order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from contracts import storage
from pipelines.safe_read import (
    ReadLimits,
    SpecialFile,
    caption_text,
    escape_name,
    full_path,
    inside_root,
    json_problem,
    open_tar,
    over_limit,
    read_regular,
    unsafe_member,
)

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".avi")
"""Video file and tar member extensions, in order of preference when one key has several."""
FRAME_EXTS = (".png", ".jpg", ".jpeg")
"""Frame (and mask) file extensions of a TikTok sequence."""
RAW_VIDEO_COLUMNS = (
    "id",
    "key",
    "source",
    "kind",
    "caption",
    "video",
    "frame_files",
    "pose_files",
    "mask_files",
    "meta",
    "quarantine",
    "error",
)
"""Columns of a raw video row, in order."""

SEQUENCE_DIRS = ("images", "pose", "masks", "densepose")
"""Subdirectories of a TikTok sequence that belong to it (``images/`` makes a directory a sequence)."""
CAPTION_FILE = "caption.txt"
"""Optional caption of a TikTok sequence, at ``SEQ/caption.txt``."""

_SIDECAR_EXTS = (".txt", ".json")
# Up to 12 digits: a longer "number" is not a frame index (and int() of thousands of digits is refused anyway).
_FRAME_NUMBER = re.compile(r"[0-9]{1,12}")
# Longest list of missing frame numbers spelled out in an error message.
_MAX_LISTED = 20


@dataclass(frozen=True)
class VideoSource:
    """One unit of reading work: a chunk of TikTok sequences, a chunk of video files, a tar, or an unsafe path."""

    kind: str
    """``tiktok``, ``video``, ``tar`` or ``unsafe`` (a symlink that leaves the root; read as one quarantined row)."""
    path: str
    """Relative to the input root: the tar; the directory of a video chunk; the parent directory of a chunk of
    sequences; the unsafe link."""
    items: tuple[str, ...] = ()
    """Video files (relative paths) of a ``video`` chunk; sequence directories (relative) of a ``tiktok`` chunk."""


def _row(
    rid: str,
    key: str,
    source: str,
    kind: str,
    *,
    caption: str | None = None,
    video: bytes | None = None,
    frame_files: list[str] | None = None,
    pose_files: list[str | None] | None = None,
    mask_files: list[str | None] | None = None,
    meta: str | None = None,
    quarantine: str | None = None,
    error: str | None = None,
) -> dict:
    return {  # names may hold bytes that are not UTF-8: escaped (paths to read stay as they are)
        "id": escape_name(rid),
        "key": escape_name(key),
        "source": escape_name(source),
        "kind": kind,
        "caption": caption,
        "video": video,
        "frame_files": frame_files,
        "pose_files": pose_files,
        "mask_files": mask_files,
        "meta": meta,
        "quarantine": quarantine,
        "error": error,
    }


def _quarantined(rid: str, key: str, source: str, kind: str, reason: str, error: str) -> dict:
    log.debug("quarantined %s (%s): %s", escape_name(rid), reason, escape_name(error))
    return _row(rid, key, source, kind, quarantine=reason, error=escape_name(error))


def _escapes(root: Path, path: Path) -> bool:
    """True for a symlink whose target is outside ``root`` (a plain file or directory never escapes)."""
    return path.is_symlink() and not inside_root(root, path)


def _is_sequence_part(parts: tuple[str, ...]) -> bool:
    """Whether a path inside a sequence directory (its parts below ``SEQ/``) is read as part of the sequence."""
    if parts == (CAPTION_FILE,):
        return True
    if len(parts) < 2 or parts[0] not in SEQUENCE_DIRS:
        return False
    if parts[0] == "densepose":
        return True  # only its presence is recorded; the layout inside it is the dataset's own
    if len(parts) != 2:
        return False  # subfolders of images/, pose/, masks/ are not frames
    ext = PurePosixPath(parts[1]).suffix.lower()
    return ext == ".json" if parts[0] == "pose" else ext in FRAME_EXTS


def _sequence_of(rel_dir: str, sequences: set[str]) -> str | None:
    """The sequence (relative dir) that contains relative directory ``rel_dir``, if any."""
    probe = PurePosixPath(rel_dir)
    for candidate in (probe, *probe.parents):
        if candidate.as_posix() in sequences:
            return candidate.as_posix()
    return None


def discover_videos(root: Path | str, *, chunk: int = 64) -> tuple[list[VideoSource], list[str]]:
    """Walk ``root`` (a directory, or a single video file or .tar) and return the sources to read, in sorted order,
    plus the relative paths of files that are not inputs (reported in the manifest, never silently dropped).

    Video files and TikTok sequences are grouped per directory into chunks of at most ``chunk`` items. ``root`` may
    be an object-store prefix (or a single object): the same sources, from a listing (:func:`_discover_remote`).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be >= 1")
    if storage.is_uri(root):
        return _discover_remote(str(root), chunk=chunk)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    if root.is_file():
        return _single_source(str(root), str(root)), []
    sources: list[VideoSource] = []
    ignored: list[str] = []
    videos: dict[str, list[str]] = defaultdict(list)
    seq_groups: dict[str, list[str]] = defaultdict(list)
    sequences: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        seq = _sequence_of(rel_dir, sequences)
        if seq is None and "images" in dirnames and (here / "images").is_dir():
            seq = rel_dir
            sequences.add(seq)
            seq_groups[PurePosixPath(rel_dir).parent.as_posix()].append(rel_dir)
        seq_parts = PurePosixPath(rel_dir).relative_to(seq).parts if seq is not None else ()
        # os.walk lists symlinked directories but never enters them: each is reported, none vanishes unnoticed.
        for name in list(dirnames):
            full = here / name
            if not full.is_symlink():
                continue
            dirnames.remove(name)
            rel = full.relative_to(root).as_posix()
            if seq is not None and seq_parts == () and name in SEQUENCE_DIRS:
                continue  # the sequence reader checks (and, if it escapes, quarantines) it
            if not inside_root(root, full):
                sources.append(VideoSource("unsafe", rel))
            else:
                ignored.append(rel)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = here / name
            rel = full.relative_to(root).as_posix()
            if seq is not None and _is_sequence_part((*seq_parts, name)):
                continue  # read, and checked, with its sequence
            if _escapes(root, full):
                sources.append(VideoSource("unsafe", rel))
                continue
            ext = full.suffix.lower()
            if seq is not None:
                ignored.append(rel)
            elif ext == ".tar":
                sources.append(VideoSource("tar", rel))
            elif ext in VIDEO_EXTS:
                videos[rel_dir].append(rel)
            elif ext in _SIDECAR_EXTS:
                continue  # sidecars, read with their video
            else:
                ignored.append(rel)
    return _chunked(root, sources, ignored, seq_groups, videos, chunk)


def _chunked(root: Path | str, sources: list[VideoSource], ignored: list[str], seq_groups: dict[str, list[str]],
             videos: dict[str, list[str]], chunk: int) -> tuple[list[VideoSource], list[str]]:  # fmt: skip
    """``sources`` plus the sequences (per parent directory) and video files (per directory) in chunks of at most
    ``chunk``, all sorted; the ignored files sorted."""
    for parent, seqs in seq_groups.items():
        for start in range(0, len(seqs), chunk):
            sources.append(VideoSource("tiktok", parent, tuple(seqs[start : start + chunk])))
    for folder, files in videos.items():
        for start in range(0, len(files), chunk):
            sources.append(VideoSource("video", folder, tuple(files[start : start + chunk])))
    sources.sort(key=lambda s: (s.path, s.kind, s.items[:1]))
    ignored = sorted(escape_name(f) for f in ignored)
    n_seqs, n_videos = sum(len(v) for v in seq_groups.values()), sum(len(v) for v in videos.values())
    log.info("found %d video sources (%d sequences, %d video files) and %d ignored files under %s", len(sources),
             n_seqs, n_videos, len(ignored), root)  # fmt: skip
    return sources, ignored


def _single_source(location: str, ref: str) -> list[VideoSource]:
    """The one source of a root that is a single file, named ``ref`` (its local path, or an object's name)."""
    ext = PurePosixPath(ref).suffix.lower()
    if ext == ".tar":
        return [VideoSource("tar", ref)]
    if ext in VIDEO_EXTS:
        return [VideoSource("video", ref, (ref,))]
    raise ValueError(f"input {location}: a single input file must be a video ({', '.join(VIDEO_EXTS)}) or .tar (or "
                     "pass a directory)")  # fmt: skip


def _discover_remote(root: str, *, chunk: int) -> tuple[list[VideoSource], list[str]]:
    """:func:`discover_videos` of an object-store prefix (or a single object), from one listing: a "directory" is a
    key prefix, there are no symlinks, and names starting with ``.`` are skipped as on a file system."""
    if storage.is_file(root):
        return _single_source(root, root.rsplit("/", 1)[1]), []
    files = [rel for rel, _ in storage.list_files(root) if not any(p.startswith(".") for p in rel.split("/"))]
    if not files:
        raise FileNotFoundError(f"input {root} does not exist or holds no files")
    sequences = _remote_sequences(files)
    sources: list[VideoSource] = []
    ignored: list[str] = []
    videos: dict[str, list[str]] = defaultdict(list)
    seq_groups: dict[str, list[str]] = defaultdict(list)
    for seq in sorted(sequences, key=lambda d: PurePosixPath(d).parts):
        seq_groups[PurePosixPath(seq).parent.as_posix()].append(seq)
    for rel in files:
        rel_dir = PurePosixPath(rel).parent.as_posix()
        seq = _sequence_of(rel_dir, sequences)
        ext = PurePosixPath(rel).suffix.lower()
        if seq is not None:
            if not _is_sequence_part(PurePosixPath(rel).relative_to(seq).parts):
                ignored.append(rel)
        elif ext == ".tar":
            sources.append(VideoSource("tar", rel))
        elif ext in VIDEO_EXTS:
            videos[rel_dir].append(rel)
        elif ext not in _SIDECAR_EXTS:  # sidecars are read with their video
            ignored.append(rel)
    return _chunked(root, sources, ignored, seq_groups, videos, chunk)


def _remote_sequences(files: list[str]) -> set[str]:
    """The sequence directories (relative, ``.`` for the root) among listed ``files``: the prefixes with keys under
    ``PREFIX/images/``, outermost first as in a top-down walk (a prefix inside a sequence is part of it)."""
    candidates = set()
    for rel in files:
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "images":
                candidates.add("/".join(parts[:i]) or ".")
    return {d for d in candidates if not any(p.as_posix() in candidates for p in PurePosixPath(d).parents)}


def localize(root: str, source: VideoSource, into: Path) -> Path:
    """Copy the files one source reads from the object-store prefix ``root`` to ``into/<root's last name>`` (a
    sequence at the root is keyed by that name); return that directory, to read the source from. A tar is copied
    whole, a video with its sidecars, a sequence with its frames, poses, masks and caption (``densepose/``, only
    checked for presence, as an empty folder). The reader checks sizes after, as for a local copy of the prefix."""
    (local := into / (storage.basename(root) or "root")).mkdir(parents=True, exist_ok=True)
    if source.kind == "tar":
        storage.download(storage.join(root, source.path), local / source.path)
    elif source.kind == "video":
        for rel in source.items:
            storage.download(storage.join(root, rel), local / rel)
            for ext in _SIDECAR_EXTS:
                sidecar = PurePosixPath(rel).with_suffix(ext).as_posix()
                if storage.is_file(storage.join(root, sidecar)):
                    storage.download(storage.join(root, sidecar), local / sidecar)
    elif source.kind == "tiktok":
        for seq in source.items:
            _localize_sequence(root, seq, local)
    elif source.kind != "unsafe":
        raise ValueError(f"unknown video source kind {source.kind!r}; expected tiktok, video, tar or unsafe")
    return local


def _localize_sequence(root: str, seq: str, local: Path) -> None:
    """Copy what the sequence reader reads of sequence ``seq`` under ``root`` to ``local/seq``."""
    prefix = root if seq == "." else storage.join(root, seq)
    for rel, _ in storage.list_files(prefix):
        parts = tuple(rel.split("/"))
        if parts[0] == "densepose" and len(parts) > 1:
            (local / seq / "densepose").mkdir(parents=True, exist_ok=True)
        elif _is_sequence_part(parts):
            storage.download(storage.join(prefix, rel), local / seq / rel)


def read_video_source(root: Path, source: VideoSource, *, max_bytes: int, limits: ReadLimits = ReadLimits()) -> Iterator[dict]:  # noqa: B008, E501
    """Yield the raw rows of one source (columns :data:`RAW_VIDEO_COLUMNS`). Never raises for bad data: it yields
    quarantined rows instead. Media above ``max_bytes``, captions and metadata (pose files included) above their
    ``limits`` are ``too_large`` and are not read."""
    root = Path(root)
    if source.kind == "tiktok":
        for seq in source.items:
            yield _read_sequence(root, source.path, seq, max_bytes=max_bytes, limits=limits)
    elif source.kind == "video":
        for rel in source.items:
            yield _read_video_file(root, source.path, rel, max_bytes=max_bytes, limits=limits)
    elif source.kind == "tar":
        yield from _read_tar(root, source.path, max_bytes=max_bytes, limits=limits)
    elif source.kind == "unsafe":
        why = f"{source.path} is a symlink that leaves the input root"
        yield _quarantined(f"{source.path}#{0:06d}", PurePosixPath(source.path).stem, source.path, "unsafe",
                           "unsafe_path", why)  # fmt: skip
    else:
        raise ValueError(f"unknown video source kind {source.kind!r}; expected tiktok, video, tar or unsafe")


def _base(root: Path) -> Path:
    """The directory that paths must stay inside: the root, or the folder of a single-file root."""
    return root if root.is_dir() else root.parent


def _read_text_file(base: Path, path: Path, rel: str, *, limit: int, key: str) -> tuple[str | None, str | None, str | None]:  # noqa: E501
    """A caption or metadata sidecar → (text, quarantine reason, error); (None, None, None) if there is none.
    Above ``limit`` bytes (config key ``key``) it is ``too_large``, unread."""
    if _escapes(base, path):
        return None, "unsafe_path", f"{rel} is a symlink that leaves the input root"
    if not os.path.lexists(path):  # a FIFO or other special file is there, and refused by read_regular
        return None, None, None
    size = path.stat().st_size
    if size > limit:
        return None, "too_large", over_limit(rel, size, key, limit)
    text, why = caption_text(read_regular(path))
    if why:
        return None, why, f"{rel} is not valid UTF-8"
    return text, None, None


def _read_video_file(root: Path, source_path: str, rel: str, *, max_bytes: int, limits: ReadLimits) -> dict:
    rid = f"{rel}#{0:06d}"
    path = full_path(root, rel)
    key = path.stem
    base = _base(root)
    if _escapes(base, path):
        return _quarantined(rid, key, source_path, "video", "unsafe_path", f"{rel} links outside the input root")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return _quarantined(rid, key, source_path, "video", "too_large", f"{rel}: {size} bytes > {max_bytes}")
        stem_rel = rel[: -len(path.suffix)]
        caption, why, err = _read_text_file(base, path.with_suffix(".txt"), f"{stem_rel}.txt",
                                            limit=limits.caption_bytes, key="decode.max_caption_bytes")  # fmt: skip
        if why:
            return _quarantined(rid, key, source_path, "video", why, err)
        meta_rel = f"{stem_rel}.json"
        meta, why, err = _read_text_file(base, path.with_suffix(".json"), meta_rel,
                                         limit=limits.metadata_bytes, key="decode.max_metadata_bytes")  # fmt: skip
        if why:
            return _quarantined(rid, key, source_path, "video", why, err)
        bad_meta = json_problem(meta, meta_rel)
        if bad_meta:
            return _quarantined(rid, key, source_path, "video", "bad_schema", bad_meta)
        video = read_regular(path)
    except SpecialFile as exc:
        return _quarantined(rid, key, source_path, "video", "special_file", f"{rel}: {exc}")
    except OSError as exc:
        return _quarantined(rid, key, source_path, "video", "bad_schema", f"{rel}: read failed: {exc}")
    return _row(rid, key, source_path, "video", caption=caption, video=video, meta=meta)


class _SequenceProblem(Exception):
    """A sequence that cannot be used: its quarantine reason and error text."""

    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason
        self.error = error


def _numbered(root: Path, seq: str, sub: str, exts: tuple[str, ...], *, max_bytes: int) -> dict[int, str] | None:
    """Frame number → relative path of the files of ``SEQ/sub`` with one of ``exts``; None if there is no such dir.

    Raises :class:`_SequenceProblem` for a directory or file that leaves the root, a non-numeric or duplicated
    number, anything but a regular file, a zero-byte file or one above ``max_bytes``.
    """
    directory = root / seq / sub
    rel_dir = (PurePosixPath(seq) / sub).as_posix()
    if _escapes(root, directory):
        raise _SequenceProblem("unsafe_path", f"{rel_dir} is a symlink that leaves the input root")
    if not directory.is_dir():
        return None
    found: dict[int, str] = {}
    for name in sorted(os.listdir(directory)):
        ext = os.path.splitext(name)[1].lower()
        if name.startswith(".") or ext not in exts:
            continue
        path = directory / name
        rel = f"{rel_dir}/{name}"
        if _escapes(root, path):
            raise _SequenceProblem("unsafe_path", f"{rel} is a symlink that leaves the input root")
        stem = name[: -len(ext)]
        if not _FRAME_NUMBER.fullmatch(stem):
            raise _SequenceProblem("bad_schema", f"{rel}: file name is not a frame number (expected e.g. 0001{ext})")
        number = int(stem)
        if number in found:
            raise _SequenceProblem("bad_schema", f"{rel}: frame number {number} also used by {found[number]}")
        if not stat.S_ISREG((info := path.stat()).st_mode):  # a FIFO would block the decoder's read forever
            raise _SequenceProblem("special_file", f"{rel} is not a regular file (FIFO, socket, device or directory)")
        if (size := info.st_size) == 0:
            # An empty frame or mask is a frame that cannot be decoded; an empty pose file is a malformed record.
            raise _SequenceProblem("bad_schema" if sub == "pose" else "missing_frames", f"{rel} is a zero-byte file")
        if size > max_bytes:
            raise _SequenceProblem("too_large", f"{rel}: {size} bytes > max_bytes={max_bytes}")
        found[number] = rel
    return found


def _missing_numbers(numbers: list[int], limit: int) -> tuple[list[int], int]:
    """The first ``limit`` numbers missing between the first and last of sorted ``numbers``, and how many are
    missing in all (without listing them: 0001 and 999999999999 alone must not build a huge list)."""
    listed: list[int] = []
    for before, after in zip(numbers, numbers[1:], strict=False):
        n = before + 1
        while n < after and len(listed) < limit:
            listed.append(n)
            n += 1
    return listed, (numbers[-1] - numbers[0] + 1) - len(numbers)


def _read_sequence(root: Path, source_path: str, seq: str, *, max_bytes: int, limits: ReadLimits) -> dict:
    rid = f"{seq}#{0:06d}"
    key = PurePosixPath(seq).name if seq != "." else root.resolve().name
    try:
        frames = _numbered(root, seq, "images", FRAME_EXTS, max_bytes=max_bytes)
        if not frames:
            raise _SequenceProblem("missing_frames", f"{seq}/images holds no frames ({', '.join(FRAME_EXTS)})")
        numbers = sorted(frames)
        # Gaps are judged between the first and last frame present: a sequence may start at 0, 1 or a later cut.
        missing, n_missing = _missing_numbers(numbers, _MAX_LISTED)
        if n_missing:
            listed = ", ".join(str(n) for n in missing) + (", ..." if n_missing > len(missing) else "")
            raise _SequenceProblem(
                "missing_frames",
                f"{seq}/images: missing frame numbers [{listed}] ({n_missing} missing between frames "
                f"{numbers[0]} and {numbers[-1]})",
            )
        poses = _numbered(root, seq, "pose", (".json",), max_bytes=limits.metadata_bytes)
        masks = _numbered(root, seq, "masks", FRAME_EXTS, max_bytes=max_bytes)
        densepose = root / seq / "densepose"
        if _escapes(root, densepose):
            raise _SequenceProblem("unsafe_path", f"{seq}/densepose is a symlink that leaves the input root")
        caption_rel = f"{seq}/{CAPTION_FILE}"
        caption, why, err = _read_text_file(root, root / caption_rel, caption_rel,
                                            limit=limits.caption_bytes, key="decode.max_caption_bytes")  # fmt: skip
        if why:
            raise _SequenceProblem(why, err)
    except _SequenceProblem as problem:
        return _quarantined(rid, key, source_path, "tiktok", problem.reason, problem.error)
    except SpecialFile as exc:
        return _quarantined(rid, key, source_path, "tiktok", "special_file", f"{seq}: {exc}")
    except OSError as exc:
        return _quarantined(rid, key, source_path, "tiktok", "bad_schema", f"{seq}: listing failed: {exc}")
    meta = json.dumps(
        {
            "frames": len(numbers),
            "first_frame": numbers[0],
            "has_pose": poses is not None,
            "has_masks": masks is not None,
            "has_densepose": densepose.is_dir(),
        },
        sort_keys=True,
    )
    return _row(
        rid,
        key,
        source_path,
        "tiktok",
        caption=caption,
        frame_files=[frames[n] for n in numbers],
        pose_files=None if poses is None else [poses.get(n) for n in numbers],
        mask_files=None if masks is None else [masks.get(n) for n in numbers],
        meta=meta,
    )


def _read_tar(root: Path, rel: str, *, max_bytes: int, limits: ReadLimits) -> Iterator[dict]:
    path = full_path(root, rel)
    try:
        handle, tar = open_tar(path)
    except SpecialFile as exc:
        yield _quarantined(f"{rel}#{0:06d}", rel, rel, "tar", "special_file", f"{rel}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - an unreadable tar is one quarantined row, by contract
        yield _quarantined(f"{rel}#{0:06d}", rel, rel, "tar", "bad_schema", f"{rel}: unreadable tar: {exc}")
        return
    index = 0
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with handle, tar:
        try:
            members = tar.getmembers()
        except Exception as exc:  # noqa: BLE001
            yield _quarantined(f"{rel}#{0:06d}", rel, rel, "tar", "bad_schema", f"{rel}: corrupt tar index: {exc}")
            return
        for member in members:
            if member.isdir():
                continue
            why = unsafe_member(member.name, member)
            if why:
                yield _quarantined(
                    f"{rel}#{index:06d}", member.name, rel, "tar", "unsafe_path", f"{rel}: {member.name}: {why}"
                )
                index += 1
                continue
            base = PurePosixPath(member.name)
            # webdataset: the key is everything before the first dot of the file name, with its directory
            stem, _, ext = base.name.partition(".")
            key = str(base.parent / stem) if str(base.parent) != "." else stem
            groups.setdefault(key, {})["." + ext.lower()] = member
        for key, parts in groups.items():
            rid = f"{rel}#{index:06d}"
            index += 1
            yield _read_tar_sample(tar, rel, rid, key, parts, max_bytes=max_bytes, limits=limits)


def _read_tar_sample(
    tar: tarfile.TarFile, rel: str, rid: str, key: str, parts: dict[str, tarfile.TarInfo], *, max_bytes: int,
    limits: ReadLimits,
) -> dict:
    video_member = next((parts[e] for e in VIDEO_EXTS if e in parts), None)
    if video_member is None:
        members = ", ".join(sorted(parts))
        why = f"{rel}: sample {key!r} is a member without its pair: no video member (members: {members})"
        return _quarantined(rid, key, rel, "tar", "bad_schema", why)
    bounds = ((video_member, max_bytes, "video.max_bytes"), (parts.get(".txt"), limits.caption_bytes,
              "decode.max_caption_bytes"), (parts.get(".json"), limits.metadata_bytes, "decode.max_metadata_bytes"))
    for member, limit, name in bounds:
        if member is not None and member.size > limit:
            error = over_limit(f"{rel}: {member.name}", member.size, name, limit)
            return _quarantined(rid, key, rel, "tar", "too_large", error)
    try:
        video = tar.extractfile(video_member).read()
        caption, why = caption_text(tar.extractfile(parts[".txt"]).read()) if ".txt" in parts else (None, None)
        meta, meta_why = caption_text(tar.extractfile(parts[".json"]).read()) if ".json" in parts else (None, None)
    except Exception as exc:  # noqa: BLE001 - a truncated member is a quarantined row
        return _quarantined(rid, key, rel, "tar", "bad_schema", f"{rel}: sample {key!r}: member read failed: {exc}")
    if why:
        return _quarantined(rid, key, rel, "tar", why, f"{rel}: {parts['.txt'].name} is not valid UTF-8")
    if meta_why:
        return _quarantined(rid, key, rel, "tar", meta_why, f"{rel}: {parts['.json'].name} is not valid UTF-8")
    bad_meta = json_problem(meta, f"{rel}: {parts['.json'].name}") if meta is not None else None
    if bad_meta:
        return _quarantined(rid, key, rel, "tar", "bad_schema", bad_meta)
    return _row(rid, key, rel, "tar", caption=caption, video=video, meta=meta)
