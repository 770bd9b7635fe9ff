"""Fault scenarios on the toy profile, each measured against a clean run of the same work: what the fault-injection
tests assert on and what ``bench/fault_matrix.py`` tabulates.

Faults are real: a process is sent SIGKILL (a Ray Data actor's worker, a Ray Train worker, the flow's own process),
a tmpfs too small for the output fills up, a read-only mount refuses the output, a storage URI names nothing. Every
scenario returns a :class:`FaultResult`:

- ``recovered``: the work completed (killed actor or worker: with the restart Ray did; killed flow: by re-running
  it, with no Prefect server of the killed process left running 5 s later), or, for a fault that cannot be
  recovered from (full disk, unwritable output, missing storage), it failed cleanly: a clear error, nothing
  published, nothing registered;
- ``identical``: the outputs equal the clean run's (None where there is no output to compare);
- ``seconds``: the time the fault cost: the faulted run's wall time minus the clean run's (killed actor or worker),
  the re-run's wall time (killed flow), or the time until the clean error.

Scenarios that kill Ray processes run in this process's Ray (``ray.init`` first); the flow scenario runs ``alcm
retrain`` in subprocesses. Mounting needs root (the CI machine runs as root); without it, the read-only case uses
file permissions and the full-disk case runs in a child process inside a new user and mount namespace, where it
mounts its tmpfs and starts its own local Ray (:func:`disk_full`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Ray Data names a map_batches actor pool's actors ``MapWorker(MapBatches(<class>))``: the job's actor classes.
DATA_ACTORS = {"curate_images": "ScoreActor", "curate_videos": "_VideoScoreActor", "recaption": "CaptionActor"}
TRAIN_WORKER = "RayTrainWorker"
OUTPUT_TABLES = {"curate_images": ("kept", "audit"), "curate_videos": ("kept", "audit"),
                 "recaption": ("captioned", "audit")}  # fmt: skip


@dataclass
class FaultResult:
    fault: str
    recovered: bool
    identical: bool | None
    seconds: float
    detail: str
    data: dict = field(default_factory=dict)
    label: str = ""
    """The "recovered?" cell where neither "yes" (outputs to compare) nor "clean failure" says it (a reconnect)."""


# ------------------------------------------------------------------------------------------------ killing


def alive_actors(class_name: str) -> dict[str, dict]:
    """Actor id → info of the live actors in the connected Ray cluster whose class is ``class_name`` or that
    Ray Data made of it (``MapWorker(MapBatches(<class_name>))``)."""
    from ray._private import state

    def match(name: str) -> bool:
        return name == class_name or (name.startswith("MapWorker(") and f"({class_name})" in name)

    return {aid: info for aid, info in state.actors().items()
            if match(info["ActorClassName"]) and info["State"] == "ALIVE"}  # fmt: skip


def actor_info(actor_id: str) -> dict:
    from ray._private import state

    return state.actors(actor_id=actor_id)


class Killer(threading.Thread):
    """Polls ``find`` (→ a victim's (pid, label) or None) until it answers, then SIGKILLs the pid once."""

    def __init__(self, find: Callable[[], tuple[int, str] | None], *, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.find, self.timeout = find, timeout
        self.victim: str | None = None
        self.pid: int | None = None
        self.at: float | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + self.timeout
        while not self._stop_event.is_set() and time.monotonic() < end:
            try:
                found = self.find()
            except Exception:  # noqa: BLE001 - the cluster state may be briefly unavailable; poll again
                found = None
            if found:
                self.pid, self.victim = found
                os.kill(self.pid, signal.SIGKILL)
                self.at = time.monotonic()
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def kill_actor_after(class_name: str, delay: float) -> Callable[[], tuple[int, str] | None]:
    """A ``find`` for :class:`Killer`: the first live actor of ``class_name``, once it has been alive ``delay`` s
    (so it is working on a batch, not still loading its models)."""
    first_seen: dict[str, float] = {}

    def find():
        for aid, info in sorted(alive_actors(class_name).items()):
            seen = first_seen.setdefault(aid, time.monotonic())
            if time.monotonic() - seen >= delay:
                return int(info["Pid"]), aid
        return None

    return find


# ------------------------------------------------------------------------------------------------ comparing


def compare_tables(a: Path, b: Path, *, sort: str = "id", atol: float = 1e-5) -> tuple[bool, str]:
    """Equal Parquet datasets: same rows by ``sort``, every column equal (floats within ``atol``)."""
    import pyarrow.dataset as pads

    ta = pads.dataset(a).to_table().sort_by(sort)
    tb = pads.dataset(b).to_table().sort_by(sort)
    if ta.num_rows != tb.num_rows or ta.schema.names != tb.schema.names:
        return False, f"{a.name}: {ta.num_rows} vs {tb.num_rows} rows, columns {ta.schema.names} vs {tb.schema.names}"
    for name in ta.schema.names:
        x, y = ta.column(name), tb.column(name)
        if x.type in ("float", "double") or str(x.type) in ("float", "double", "halffloat"):
            xs = np.array(x.to_pylist(), dtype=float)
            ys = np.array(y.to_pylist(), dtype=float)
            if not np.allclose(xs, ys, atol=atol, equal_nan=True):
                return False, f"{a.name}.{name}: max difference {np.nanmax(np.abs(xs - ys)):.3g}"
        elif not x.equals(y):
            return False, f"{a.name}.{name} differs"
    return True, f"{ta.num_rows} rows equal"


def compare_outputs(a: Path, b: Path, tables: tuple[str, ...] = ("kept", "audit")) -> tuple[bool, str]:
    """A job's two outputs: equal manifest digests and equal tables."""
    da = json.loads((a / "manifest.json").read_text())["digest"]
    db = json.loads((b / "manifest.json").read_text())["digest"]
    details = [f"digest {'equal' if da == db else f'{da[:19]} vs {db[:19]}'}"]
    ok = da == db
    for t in tables:
        same, why = compare_tables(a / t, b / t)
        ok, details = ok and same, details + [f"{t}: {why}"]
    return ok, "; ".join(details)


#: Weights of a resumed run against an uninterrupted one. Resuming restores the engine, optimiser, EMA and data
#: position exactly, but not the floating-point summation order of the first steps after it: the toy stage-1 LoRA
#: then differs by a few 1e-6, against about 5e-5 that one Adam step at the final learning rate moves a weight.
WEIGHT_ATOL = 1e-5


def compare_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> tuple[bool, float, str]:
    """Every ``*.safetensors`` under ``a`` against the same file under ``b``: (all within ``atol``, max |diff|)."""
    from safetensors.numpy import load_file

    worst, files = 0.0, sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    if not files:
        return False, float("nan"), f"no weights under {a}"
    for rel in files:
        x, y = load_file(str(a / rel)), load_file(str(b / rel))
        if set(x) != set(y):
            return False, float("nan"), f"{rel}: tensor names differ"
        for k in x:
            worst = max(worst, float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)), initial=0.0)))
    return worst <= atol, worst, f"{len(files)} weight files, max |difference| {worst:.3g} (tolerance {atol:g})"


def timed(fn, *args, **kwargs):
    t = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t


# ------------------------------------------------------------------------------------------------ scenarios


def kill_data_actor(cfg, input_dir: Path, work: Path, *, job: str = "curate_images", delay: float = 0.1,
                    clean: Path | None = None) -> FaultResult:  # fmt: skip
    """SIGKILL one of a Ray Data job's actors (the scorers; the captioner for ``recaption``) ``delay`` s after it
    came up (it is then scoring its first batches); Ray restarts it and retries its batches. Compares kept/ and
    audit/ with a clean run (``clean``: an existing clean output of the same config and input)."""
    from pipelines.runtime import run_job

    clean_s = 0.0
    if clean is None:
        clean = work / "clean"
        _, clean_s = timed(run_job, job, cfg, input_dir, clean)
    killer = Killer(kill_actor_after(DATA_ACTORS[job], delay))
    killer.start()
    t = time.monotonic()
    try:
        run_job(job, cfg, input_dir, work / "faulted")
    finally:
        killer.stop()
    faulted_s = time.monotonic() - t
    if killer.at is None:
        return FaultResult(f"kill a Ray Data actor ({job})", False, None, faulted_s, "the actor was never killed")
    restarts = int(actor_info(killer.victim).get("NumRestarts", 0))
    same, why = compare_outputs(clean, work / "faulted", OUTPUT_TABLES[job])
    return FaultResult(
        f"kill a Ray Data actor ({job})", restarts >= 1, same, faulted_s - clean_s if clean_s else faulted_s,
        f"actor pid {killer.pid} killed {killer.at - t:.1f} s in, restarted {restarts}x; {why}",
        {"restarts": restarts, "killed_after_s": killer.at - t, "clean_s": clean_s, "faulted_s": faulted_s},
    )  # fmt: skip


#: Stage 1 for the worker-kill scenario: 12 steps, a checkpoint every 3, one restart allowed, a one-step preview.
STAGE1_OVERRIDES = (
    "distill_image.train.steps=12",
    "distill_image.train.checkpoint_every=3",
    "distill_image.train.log_every=3",
    "distill_image.train.max_failures=1",
    "distill_image.preview_prompts=[a large red circle in the center on a white background]",
    "distill_image.preview_steps=1",
)
#: Storage URIs that name nothing: an unknown scheme, a local path that cannot be created, an unreachable S3.
MISSING_STORAGE = ("nosuch://bucket/runs", "file:///proc/alcm-missing/runs",
                   "s3://no-such-bucket/runs?endpoint_override=127.0.0.1:9&scheme=http")  # fmt: skip


def stage1_config(root: Path, extra: tuple[str, ...] | list[str] = ()):
    """The toy profile with :data:`STAGE1_OVERRIDES` (then ``extra``), checkpoints under ``root/runs`` and latents
    cached in ``root/cache`` (one root per run, so both runs of a scenario encode their latents and their times
    compare)."""
    from pipelines.config import load_config

    return load_config("toy", [*STAGE1_OVERRIDES, f"distill_image.train.storage_path={root / 'runs'}",
                               f"distill_image.cache_dir={root / 'cache'}", *extra])  # fmt: skip


def _committed(storage: Path) -> int:
    """Checkpoints Ray Train has committed in the runs under ``storage``: those its controller's checkpoint manager
    recorded (``checkpoint_manager_snapshot.json``, rewritten at each commit)."""
    n = 0
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json") if storage.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):  # being rewritten: poll again
            n = max(n, len(json.loads(snapshot.read_text()).get("checkpoint_results") or []))
    return n


def kill_train_worker(cfg_for: Callable[[Path], object], dataset: Path, work: Path) -> FaultResult:
    """Stage 1 twice on the same data and settings: uninterrupted, then with one Ray Train worker SIGKILLed as soon
    as the run's first checkpoint is committed. ``cfg_for(root)`` gives a run's config (small ``steps`` and
    ``checkpoint_every``, ``max_failures`` ≥ 1, checkpoints under ``root/runs``): :func:`stage1_config`. Ray Train
    restarts the worker group from that checkpoint."""
    from pipelines.runtime import run_job

    clean_cfg, faulted_cfg = cfg_for(work / "run-clean"), cfg_for(work / "run-faulted")
    clean, clean_s = timed(run_job, "distill_image", clean_cfg, dataset, work / "clean")
    storage = work / "run-faulted" / "runs"

    def find():
        # Kill once Ray Train has committed a checkpoint (its controller commits one after collecting every rank's
        # report, which it polls for: a checkpoint whose reports were not collected before the kill is lost, and the
        # restart then begins at step 0, correct but not exercising the resume). A second checkpoint's directory
        # appearing used to stand for that, until the workers stopped reading the whole cache per pass
        # (issue 23): steps 3 and 6 then came 2 s apart, and the kill lost both.
        if _committed(storage) < 1:
            return None
        workers = sorted(alive_actors(TRAIN_WORKER).items())
        return (int(workers[0][1]["Pid"]), workers[0][0]) if workers else None

    killer = Killer(find)
    killer.start()
    t = time.monotonic()
    try:
        faulted = run_job("distill_image", faulted_cfg, dataset, work / "faulted")
    finally:
        killer.stop()
    faulted_s = time.monotonic() - t
    steps = faulted_cfg.distill_image.train.steps
    m_clean, m_fault = clean.manifest["metrics"], faulted.manifest["metrics"]
    same, worst, why = compare_weights(work / "clean", work / "faulted")
    resumed = int(m_fault.get("resumed_from", 0))
    recovered = killer.at is not None and m_fault["step"] == steps and 0 < resumed < steps
    return FaultResult(
        "kill a Ray Train worker (stage 1)", recovered, same, faulted_s - clean_s,
        f"worker pid {killer.pid} killed {(killer.at or t) - t:.1f} s in; resumed from step {resumed}, ended at "
        f"{m_fault['step']}/{steps} (clean {m_clean['step']}); {why}",
        {"resumed_from": resumed, "step": m_fault["step"], "steps": steps, "max_abs_diff": worst,
         "clean_s": clean_s, "faulted_s": faulted_s, "killed": killer.at is not None},
    )  # fmt: skip


def alcm(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(Path(c.decode()).name if i == 0 else c.decode() for i, c in enumerate(cmd[:3]) if c)[:80]
    return str(pid)


def statuses(log: str) -> dict[str, str]:
    """``alcm retrain``'s stage table → stage: status."""
    out = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "cached"):
            out[parts[0]] = parts[1]
    return out


def registry_check(registry_dir: Path) -> tuple[bool, str, dict[str, int]]:
    """Every registered version is whole: its source holds a manifest with the digest the version carries and its
    run holds that manifest; returns (ok, detail, versions per name)."""
    from registry.store import Registry

    reg = Registry(f"sqlite:///{registry_dir / 'mlflow.db'}", (registry_dir / "artifacts").as_uri())
    per_name: dict[str, int] = {}
    problems = []
    for e in reg.list():
        per_name[e.name] = per_name.get(e.name, 0) + 1
        src = Path(e.location) / "manifest.json"
        if not src.is_file() or json.loads(src.read_text())["digest"] != e.digest:
            problems.append(f"{e.ref}: its source {e.location} has no matching manifest")
        elif reg.manifest(e)["digest"] != e.digest:
            problems.append(f"{e.ref}: its run's manifest does not match")
    return not problems, "; ".join(problems) or f"{sum(per_name.values())} versions, all whole", per_name


def kill_flow(raw: Path, work: Path, *, stages: tuple[str, ...] = ("curate_images", "curate_videos"),
              kill_in: str = "curate_videos") -> FaultResult:  # fmt: skip
    """``alcm retrain`` three times on the same raw data: clean; killed (SIGKILL to the flow's process) once stage
    ``kill_in`` has started writing; re-run. The re-run must find the finished stages cached, run the interrupted
    one, publish what the clean run published, and leave a registry of whole versions only."""
    from pipelines.stages import BY_NAME

    args = ["retrain", "--images", str(raw / "images" / "parquet"), "--videos", str(raw / "videos" / "wds"),
            "--dancers", str(raw / "dancers"), "--no-promote"]  # fmt: skip
    args += [a for s in stages for a in ("--stage", s)]
    runs = {}
    for name in ("clean", "faulted"):
        w = work / name
        w.mkdir(parents=True, exist_ok=True)
        runs[name] = (w, {**os.environ, "ALCM_REGISTRY_DIR": str(w / "registry"), "PYTHONUNBUFFERED": "1"})
    w, env = runs["clean"]
    t = time.monotonic()
    proc = alcm([*args, "--work", str(w)], env, w / "run.log")
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"the clean retrain failed: see {w / 'run.log'}")
    clean_s = time.monotonic() - t

    w, env = runs["faulted"]
    proc = alcm([*args, "--work", str(w)], env, w / "killed.log")
    stage_dir = w / "runs" / kill_in
    deadline = time.monotonic() + 900
    while not list(stage_dir.glob(".*.staging-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is not None:
        raise RuntimeError(f"the retrain ended before {kill_in} started: see {w / 'killed.log'}")
    time.sleep(1.0)  # well into the stage: its job is reading and writing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5.0)  # what the flow started (Ray, the temporary Prefect server) has time to notice
    leftovers = _group(proc.pid)
    names = sorted(_name(pid) for pid in leftovers)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    before = registry_check(w / "registry")
    t = time.monotonic()
    again = alcm([*args, "--work", str(w)], env, w / "rerun.log")
    rc = again.wait(timeout=900)
    rerun_s = time.monotonic() - t
    log = (w / "rerun.log").read_text()
    status = statuses(log)
    after = registry_check(w / "registry")
    litter = sorted(str(p.relative_to(w)) for p in (w / "runs").rglob(".*staging*"))
    same = all(output_digest(w / BY_NAME[s].output) == output_digest(runs["clean"][0] / BY_NAME[s].output)
               for s in stages)  # fmt: skip
    expected = {s: ("ran" if stages.index(s) >= stages.index(kill_in) else "cached") for s in stages}
    server_left = [n for n in names if "uvicorn" in n]  # the flow's temporary Prefect server (flows.lifeline)
    recovered = rc == 0 and status == expected and before[0] and after[0] and not litter and not server_left
    return FaultResult(
        "kill the flow process, re-run", recovered, same, rerun_s,
        f"re-run {status} (expected {expected}); registry after the kill: {before[1]} {before[2]}; after the re-run: "
        f"{after[1]} {after[2]}; staging left: {litter or 'none'}; processes of the killed flow still alive after 5 s: "
        f"{len(leftovers)} {names}",
        {"status": status, "expected": expected, "rc": rc, "before": before, "after": after, "litter": litter,
         "leftovers": names, "server_left": server_left, "clean_s": clean_s, "rerun_s": rerun_s},
    )  # fmt: skip


def output_digest(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["digest"]




def _mount_tmpfs(path: Path, opts: str) -> str | None:
    """Mount a tmpfs with ``opts`` at ``path``; None once mounted, else why it was not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    return None if p.returncode == 0 else f"mount -t tmpfs failed: {p.stderr.strip() or f'exit {p.returncode}'}"


@contextlib.contextmanager
def _tmpfs(path: Path, *, size: str, read_only: bool = False) -> Iterator[str | None]:
    """Mount a tmpfs of ``size`` at ``path`` for the block; yields None, or why nothing was mounted."""
    path.mkdir(parents=True, exist_ok=True)
    why_not = _mount_tmpfs(path, f"size={size}" + (",ro" if read_only else ""))
    try:
        yield why_not
    finally:
        if why_not is None:
            subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def tmpfs(path: Path, *, size: str, read_only: bool = False) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path`` for the block; yields False (and mounts nothing) without the right."""
    with _tmpfs(path, size=size, read_only=read_only) as why_not:
        yield why_not is None


def _fails_cleanly(fn, where: Path, words: str) -> tuple[bool, float, str, dict]:
    """Run ``fn``, which must raise an error containing ``words`` and leave ``where`` empty; returns (it did, seconds
    to the error, a description, ``{"error", "errno", "left"}``: the message, its errno, what ``where`` holds)."""
    t = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the scenario is about which error and what it leaves
        seconds = time.monotonic() - t
        left = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        ok = words in str(exc) and not left
        data = {"error": str(exc), "errno": getattr(exc, "errno", None), "left": left}
        return ok, seconds, f"{type(exc).__name__}: {str(exc)[:200]}; left in {where.name}/: {left or 'nothing'}", data
    return False, time.monotonic() - t, "no error", {"error": None, "errno": None, "left": None}


DISK_FULL_HOW = ("auto", "mount", "namespace")
"""Where :func:`disk_full`'s tmpfs comes from (see there)."""
DISK_FULL_FAULT = "disk full while writing"


def disk_full(cfg, input_dir: Path, work: Path, *, how: str = "auto") -> FaultResult:
    """Curate into a 256 KiB tmpfs: the write fails; the error says the disk is full, naming the output; nothing is
    left on that disk (no output, no staging directory).

    ``how`` says where the tmpfs comes from: ``"mount"``: mounted here (needs root; the job runs on this process's
    Ray); ``"namespace"``: the scenario runs in a child process inside a new user and mount namespace (``unshare
    --user --map-root-user --mount``, no privilege needed), which mounts the tmpfs, starts its own local Ray (the
    mount exists only inside the namespace, so the Ray workers that write the output must start there) and checks
    what is left before the namespace, and its tmpfs, go away; ``"auto"``: ``"mount"`` where it can mount, else
    ``"namespace"``. ``data["how"]`` says which ran.
    """
    if how not in DISK_FULL_HOW:
        raise ValueError(f"disk_full: how={how!r}; must be one of {', '.join(DISK_FULL_HOW)}")
    from pipelines.runtime import run_job

    small = work / "small-disk"
    if how in ("auto", "mount"):
        with _tmpfs(small, size="256k") as why_not:
            if why_not is None:
                ok, seconds, why, data = _fails_cleanly(lambda: run_job("curate_images", cfg, input_dir, small / "out"),
                                                        small, "no space left on the device")  # fmt: skip
                return FaultResult(DISK_FULL_FAULT, ok, None, seconds, why, {**data, "how": "mount"})
        if how == "mount":
            return FaultResult(DISK_FULL_FAULT, False, None, 0.0, f"not run: {why_not}", {"how": "mount"})
    return _disk_full_in_namespace(cfg, input_dir, work)


def _disk_full_in_namespace(cfg, input_dir: Path, work: Path, *, timeout: float = 900.0) -> FaultResult:
    """:func:`disk_full` with ``how="mount"`` in a child process inside a new user and mount namespace, where it is
    root (mapped to this user) and may mount; its own local Ray keeps its session files in a fresh directory (a
    shared ``/tmp/ray`` may belong to another user)."""
    import tempfile

    from pipelines.config import to_dict

    unshare = shutil.which("unshare")
    if unshare is None:
        why = "not run: mounting here needs root, and there is no unshare (util-linux) to make a namespace with"
        return FaultResult(DISK_FULL_FAULT, False, None, 0.0, why, {"how": "namespace"})
    work.mkdir(parents=True, exist_ok=True)
    spec, result, log = work / "namespace-spec.json", work / "namespace-result.json", work / "namespace.log"
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"config": to_dict(cfg), "input_dir": str(Path(input_dir).resolve()),
                                "work": str(work.resolve()), "result": str(result.resolve())}))  # fmt: skip
    ray_tmp = Path(tempfile.mkdtemp(prefix="alcm-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    # Never this process's Ray (its workers, outside the namespace, would write past the tmpfs).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["RAY_TMPDIR"] = str(ray_tmp)
    child = "import sys; from bench.faults import _disk_full_child; _disk_full_child(sys.argv[1])"
    cmd = [unshare, "--user", "--map-root-user", "--mount", "--", sys.executable, "-c", child, str(spec)]
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the child, its Ray and its workers: one session we started
                proc.wait()
                rc = None
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if not result.is_file():
        tail = log.read_text(errors="replace")[-1500:].strip()
        ended = "timed out" if rc is None else f"exited {rc}"
        return FaultResult(DISK_FULL_FAULT, False, None, 0.0, f"not run: the child in a user and mount namespace "
                           f"{ended} without a result ({' '.join(cmd[:5])}); its log {log}: {tail}",
                           {"how": "namespace", "rc": rc})  # fmt: skip
    r = FaultResult(**json.loads(result.read_text()))
    return dataclasses.replace(r, detail=f"in a user and mount namespace: {r.detail}",
                               data={**r.data, "how": "namespace"})  # fmt: skip


def _disk_full_child(spec_file: str) -> None:
    """The child of :func:`_disk_full_in_namespace`: run the mounted scenario, write its result as JSON."""
    from pipelines.config import config_from_dict

    spec = json.loads(Path(spec_file).read_text())
    cfg = config_from_dict(spec["config"])
    r = disk_full(cfg, Path(spec["input_dir"]), Path(spec["work"]), how="mount")
    Path(spec["result"]).write_text(json.dumps(dataclasses.asdict(r)))


def unwritable_output(cfg, input_dir: Path, work: Path) -> FaultResult:
    """Curate into a read-only mount (or, without root, a directory without write permission): refused before
    any work, naming the output."""
    from pipelines.runtime import run_job

    ro = work / "read-only"
    with tmpfs(ro, size="1m", read_only=True) as mounted:
        if not mounted:
            ro.chmod(0o555)
        ok, seconds, why, data = _fails_cleanly(lambda: run_job("curate_images", cfg, input_dir, ro / "out"), ro,
                                                "nothing was started")  # fmt: skip
    return FaultResult("unwritable output directory", ok, None, seconds, why, data)


def missing_storage(overrides: list[str], dataset: Path, work: Path, uri: str) -> FaultResult:
    """Stage 1 (toy profile with ``overrides``) with ``distill_image.train.storage_path`` set to ``uri``: refused
    before work, naming the key."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    bad = load_config("toy", [*overrides, f"distill_image.train.storage_path={uri}"])
    out = work / "storage-out"
    out.mkdir(parents=True, exist_ok=True)
    ok, seconds, why, data = _fails_cleanly(lambda: run_job("distill_image", bad, dataset, out / "stage1"), out,
                                            "distill_image.train.storage_path")  # fmt: skip
    return FaultResult(f"storage URI that does not exist ({uri.split(':')[0]})", ok, None, seconds, why, data)
