"""Fault scenarios of integrity and outages (issue 22), each against a clean run of the same work, as
:mod:`bench.faults` does for killed processes and full disks; ``bench/fault_matrix.py`` tabulates both.

- a byte flipped in a cached stage output: the retrain flow re-runs the stage instead of reusing it;
- a byte flipped in the latest training checkpoint: the resume passes it over for the one before it, and the run
  ends where an uninterrupted one does, with the same weights;
- a LAVIS worker that hangs (SIGSTOP) mid-job: killed and restarted, its batch sent again, the same captions;
- two jobs writing one output at once without ``--overwrite``: one publishes, the other fails, the output is whole;
- the MLflow server down when the flow records its output: the record task is retried until the server is back;
- the Ray head gone between two attempts: the next ``runtime.connect`` reconnects to the new head.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.faults import FaultResult, alcm, compare_outputs, compare_weights, output_digest, statuses

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retrain(raw: Path, work: Path, env: dict, log: Path, stages=("curate_images",)) -> tuple[int, str, float]:
    args = ["retrain", "--images", str(raw / "images" / "parquet"), "--videos", str(raw / "videos" / "wds"),
            "--dancers", str(raw / "dancers"), "--no-promote", "--work", str(work)]  # fmt: skip
    args += [a for s in stages for a in ("--stage", s)]
    t = time.monotonic()
    rc = alcm(args, env, log).wait(timeout=900)
    return rc, log.read_text(), time.monotonic() - t


def corrupted_cached_output(raw: Path, work: Path) -> FaultResult:
    """``alcm retrain --stage curate_images`` twice, with a byte of the curated data flipped in between: the second
    run must find the digest mismatch, run the stage again and publish what the first run did."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ALCM_REGISTRY_DIR": str(work / "registry"), "PYTHONUNBUFFERED": "1"}
    rc, _, _ = _retrain(raw, work, env, work / "first.log")
    if rc != 0:
        raise RuntimeError(f"the first retrain failed: see {work / 'first.log'}")
    out = (work / "curated-images").resolve()
    clean = output_digest(out)
    victim = sorted((out / "kept").glob("*.parquet"))[0]
    _flip(victim)
    rc, log, seconds = _retrain(raw, work, env, work / "second.log")
    status = statuses(log).get("curate_images")
    from contracts.manifest import verify_files

    verified = verify_files(out) if rc == 0 else 0
    recovered = rc == 0 and status == "ran" and "failed its digest check" in log and verified > 0
    return FaultResult("corrupted cached stage output (retrain)", recovered, output_digest(out) == clean, seconds,
                       f"second run: curate_images {status}; {victim.name} flipped; {verified} files verify after",
                       {"status": status, "rc": rc, "verified": verified})  # fmt: skip


def corrupted_checkpoint(cfg_for, dataset: Path, work: Path) -> FaultResult:
    """Stage 1 to its full ``steps`` uninterrupted; then the same run stopped at ``steps - 3``, its latest checkpoint
    corrupted, and resumed to ``steps``: it must resume from the checkpoint before and end with the clean weights."""
    from pipelines.runtime import run_job

    clean_cfg = cfg_for(work / "run-clean")
    steps = clean_cfg.distill_image.train.steps
    run_job("distill_image", clean_cfg, dataset, work / "clean")
    short = cfg_for(work / "run-faulted", [f"distill_image.train.steps={steps - 3}"])
    run_job("distill_image", short, dataset, work / "faulted")
    (run_dir,) = [p for p in (work / "run-faulted" / "runs").iterdir() if p.is_dir()]
    ckpts = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))
    latest, before = ckpts[-1], ckpts[-2]
    _flip(max((p for p in (latest / "ckpt").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size))
    previous = json.loads((before / "step.json").read_text())["step"]
    t = time.monotonic()
    m = run_job("distill_image", cfg_for(work / "run-faulted"), dataset, work / "faulted", overwrite=True).manifest
    seconds = time.monotonic() - t
    same, worst, why = compare_weights(work / "clean", work / "faulted")
    resumed = int(m["metrics"].get("resumed_from", 0))
    recovered = resumed == previous and m["metrics"]["step"] == steps
    return FaultResult("corrupted latest checkpoint (stage 1 resume)", recovered, same, seconds,
                       f"latest {latest.name} corrupted; resumed from step {resumed} (the one before: {previous}), "
                       f"ended at {m['metrics']['step']}/{steps}; {why}",
                       {"resumed_from": resumed, "previous": previous, "max_abs_diff": worst})  # fmt: skip


def _lavis_workers() -> list[int]:
    """LAVIS worker processes started under this process (its local Ray's actors): never another run's."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"lavis_worker.py" in cmd.read_bytes() and _descends_from(int(cmd.parent.name), os.getpid()):
                pids.append(int(cmd.parent.name))
    return pids


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def lavis_worker_hang(cfg, dancers: Path, work: Path, *, timeout_s: float = 20.0) -> FaultResult:
    """Recaption with the LAVIS backend twice: clean; then with the first worker SIGSTOPped once it has served for
    a second (it hangs: no reply). The client must kill it after ``request_timeout_s``, start a new one and send the
    batch again; the captions must equal the clean run's."""
    from pipelines.config import load_config
    from pipelines.runtime import run_job

    over = ["captioner.backend=lavis", f"captioner.lavis.request_timeout_s={timeout_s}"]
    cfg = load_config(cfg.profile, over)
    run_job("recaption", cfg, dancers, work / "clean")
    stopped: list[int] = []
    seen: set[int] = set()
    done = threading.Event()

    def stopper():
        first_seen = None
        while not done.is_set():
            pids = _lavis_workers()
            seen.update(pids)
            if pids and first_seen is None:
                first_seen = time.monotonic()
            if pids and not stopped and time.monotonic() - first_seen > 1.0:
                os.kill(pids[0], signal.SIGSTOP)
                stopped.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    t = time.monotonic()
    try:
        run_job("recaption", cfg, dancers, work / "faulted")
    finally:
        done.set()
        thread.join()
    seconds = time.monotonic() - t
    same, why = compare_outputs(work / "clean", work / "faulted", ("captioned", "audit"))
    recovered = bool(stopped) and len(seen) >= 2
    return FaultResult("LAVIS worker hangs mid-job (recaption)", recovered, same, seconds,
                       f"worker pid {stopped[0] if stopped else '-'} stopped; {len(seen)} workers seen; "
                       f"request_timeout_s={timeout_s:g}; {why}", {"workers_seen": len(seen)})  # fmt: skip


def concurrent_writers(images: Path, work: Path) -> FaultResult:
    """Two ``alcm curate images`` to one output at once, without ``--overwrite``: exactly one must publish, the
    other fail naming the output, and the published output equal a clean run's."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    clean = alcm(["curate", "images", "--input", str(images), "--output", str(work / "clean")], env, work / "clean.log")
    if clean.wait(timeout=900) != 0:
        raise RuntimeError(f"the clean curation failed: see {work / 'clean.log'}")
    t = time.monotonic()
    procs = [alcm(["curate", "images", "--input", str(images), "--output", str(work / "shared")], env,
                  work / f"writer{i}.log") for i in (1, 2)]  # fmt: skip
    codes = [p.wait(timeout=900) for p in procs]
    seconds = time.monotonic() - t
    logs = [(work / f"writer{i}.log").read_text() for i in (1, 2)]
    loser = logs[codes.index(next(c for c in codes if c != 0))] if sorted(codes)[1] != 0 else ""
    refused = "published by another job" in loser or "is not empty" in loser
    litter = [p.name for p in work.iterdir() if ".staging-" in p.name or ".old-" in p.name]
    recovered = sorted(c == 0 for c in codes) == [False, True] and refused and not litter
    same = output_digest(work / "shared") == output_digest(work / "clean") if recovered else None
    return FaultResult("two writers of one output, no --overwrite", recovered, same, seconds,
                       f"exit codes {codes}; the other refused: {refused}; staging left: {litter or 'none'}",
                       {"codes": codes})  # fmt: skip


def mlflow_down(raw: Path, work: Path) -> FaultResult:
    """``alcm retrain --stage curate_images`` against an MLflow server that is down until the curation has
    published: the record task fails on the connection and is retried until the server is up; a second run finds
    the stage cached and the same version."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    args = ["retrain", "--images", str(raw / "images" / "parquet"), "--videos", str(raw / "videos" / "wds"),
            "--dancers", str(raw / "dancers"), "--no-promote", "--work", str(work), "--stage", "curate_images"]
    t = time.monotonic()
    flow = alcm(args, env, work / "first.log")
    while not list((work / "runs" / "curate_images").glob("*/manifest.json")) and flow.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # the record task's first attempt meets no server
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                               "--artifacts-destination", str(work / "artifacts"), "--serve-artifacts", "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1", "--allowed-hosts",
                               f"127.0.0.1:{port}"], stdout=(work / "mlflow.log").open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        rc = flow.wait(timeout=900)
        seconds = time.monotonic() - t
        log = (work / "first.log").read_text()
        retried = "Retry" in log or "retry" in log
        rc2 = alcm(args, env, work / "second.log").wait(timeout=900)
        again = statuses((work / "second.log").read_text()).get("curate_images")
        from registry.store import Registry

        entries = Registry(url).list() if rc == 0 else []
        versions = [e.ref for e in entries]
        same = len(entries) == 1 and entries[0].digest == output_digest(work / "curated-images")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    recovered = rc == 0 and rc2 == 0 and retried and again == "cached" and len(versions) == 1
    return FaultResult("MLflow server down while recording", recovered, same, seconds,
                       f"first run rc {rc} (retried: {retried}); second run curate_images {again}; versions on the "
                       f"server: {versions}", {"versions": versions})  # fmt: skip


_DRIVER = """
import sys, ray
from flows.retry import is_infrastructure_error
from pipelines import runtime
from pipelines.data_config import RayConfig
cfg = RayConfig(address=sys.argv[1])
node = ray.remote(lambda: ray.get_runtime_context().get_node_id())
print("first", runtime.connect(cfg)["mode"], ray.get(node.remote()), flush=True)
input()
try:
    runtime.connect(cfg)
    print("down reused", flush=True)
except Exception as exc:
    print("down", type(exc).__name__, is_infrastructure_error(exc), flush=True)
input()
print("second", runtime.connect(cfg)["mode"], ray.get(node.remote(), timeout=60), flush=True)
"""


def ray_head_gone(work: Path) -> FaultResult:
    """A driver connected to a Ray head (``ray start --block``, token auth as the stack runs it); the head is killed.
    The driver's next ``runtime.connect`` (a retried stage) must drop the dead connection and fail with an error the
    flow retries as infrastructure (at once: ``connect`` probes the address before ``ray.init``, which would wait
    minutes); once a new head is up on the same port, the next one must connect to it (a task then runs on the new
    head's node)."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex()}  # as the stack's heads

    def head(n: int) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                                 "--include-dashboard=false", "--disable-usage-stats"], env=env,
                                stdout=(work / f"head{n}.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def up(want: bool = True) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if listening() == want:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Ray head on port {port} did not {'come up' if want else 'go away'}")

    def say(line: str) -> list[str]:
        driver.stdin.write(line + "\n")
        driver.stdin.flush()
        return driver.stdout.readline().split()

    heads = [head(1)]
    driver = None
    try:
        up()
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, f"127.0.0.1:{port}"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=(work / "driver.log").open("w"), text=True,
                                  cwd=PROJECT_ROOT, env=env)  # fmt: skip
        first = driver.stdout.readline().split()
        t = time.monotonic()
        os.killpg(heads[0].pid, signal.SIGKILL)
        up(want=False)  # gone: its port refuses connections
        down = say("go")
        heads.append(head(2))
        up()
        second = say("go")
        seconds = time.monotonic() - t
    finally:
        if driver is not None:
            driver.kill()
        for h in heads:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(h.pid, signal.SIGKILL)
    reconnected = "reconnecting" in (work / "driver.log").read_text()
    recovered = (len(first) == 3 and down[:1] == ["down"] and down[-1:] == ["True"] and len(second) == 3
                 and second[2] != first[2] and reconnected)  # fmt: skip
    return FaultResult("Ray head gone between two attempts", recovered, None, seconds,
                       f"attempt while gone: {' '.join(down[1:])} (retried as infrastructure); first node "
                       f"{first[2][:8] if len(first) == 3 else '-'}, after the new head "
                       f"{second[2][:8] if len(second) == 3 else '-'}; reconnect logged: {reconnected}",
                       label="reconnected")  # fmt: skip
