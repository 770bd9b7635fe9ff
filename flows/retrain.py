"""Flow ``retrain-animatelcm``: raw data → curated datasets → the three distillation stages → evaluation → registry
→ promotion gate, as one flow run with a form in the Prefect UI.

Stages (each the same job its own flow runs, recorded in the registry as it finishes), in the order of the stage
graph (:data:`pipelines.stages.STAGES`, which declares them, their inputs and their output links):

    curate_images(images)            → curated-images
    curate_videos(videos)            → curated-videos
    recaption(dancers)               → recaptioned-dancers
    distill_image(curated-images)    → distilled-image     (stage 1)
    distill_video(curated-videos, distilled-image) → distilled-video  (stage 2)
    adapt(distilled-video, recaptioned-dancers, curated-videos) → adapters  (stage 3)
    evaluate(distilled-video)        → eval-video, attached to the stage-2 checkpoint; candidate; gate

Caching: a stage's output directory is keyed by what it depends on: ``WORK/runs/<stage>/<key>/`` with ``key``
(:meth:`pipelines.stages.Stage.key`) the sha256 of the stage name, its inputs' digests (the upstream outputs'
manifest digests; for raw directories a digest of the file listing — relative path, size, modification time — so a
retrain does not re-read terabytes to find out nothing changed), every setting the stage's job receives (its
settings: the config sections it reads, profile included) and the code version. A finished stage's output (its
``manifest.json``, written last and published atomically) is the persisted result: re-running with unchanged inputs
finds it and skips the stage; changing one input or one setting a stage reads changes the keys of that stage and of
everything downstream of it, and only those re-run. ``WORK/<output>`` links point at the latest output of each stage.

Object storage: ``work_dir`` and the raw inputs may be object-store URIs. A raw prefix's listing digest is taken from
the listing (no object is read), outputs are committed on the store (:mod:`contracts.publish`), and the links are
one ``manifest.json`` each naming the target (:func:`contracts.publish.link_output`).

Retries: a stage is retried (twice, with backoff) only on infrastructure errors — lost Ray workers or actors,
connection and timeout errors, other OS errors — never on a bad config, a missing input or bad data
(:func:`flows.retry.is_infrastructure_error`).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import ClassVar, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import Field

from contracts import storage
from contracts.manifest import IntegrityError, code_version, output_root, read_manifest, verify_files
from contracts.publish import link_output
from flows.common import FormChecked, apply_env_defaults, run_io_job
from flows.curate import CurateImagesParams
from flows.distill import AdaptParams, DistillImageParams, DistillVideoParams
from flows.evaluate import EvaluateParams, attach_report, run_gate
from flows.record import record_output
from flows.retry import retry_condition
from flows.videos import RecaptionParams, VideoJobParams
from pipelines.config import Config, load_config
from pipelines.stages import BY_NAME, STAGES, needed

Stage = Literal[tuple(s.name for s in STAGES)]
FLOW_PARAMS = {"curate_images": CurateImagesParams, "curate_videos": VideoJobParams, "recaption": RecaptionParams,
               "distill_image": DistillImageParams, "distill_video": DistillVideoParams, "adapt": AdaptParams,
               "evaluate": EvaluateParams}  # fmt: skip
"""The parameters of each stage's flow (the inputs are the stage graph's, :mod:`pipelines.stages`)."""


class RetrainParams(FormChecked):
    """Parameters of the ``retrain-animatelcm`` flow (rendered as a form in the Prefect UI)."""

    FORM_INPUTS: ClassVar[tuple[str, ...]] = ("images", "videos", "dancers")
    FORM_OUTPUTS: ClassVar[tuple[str, ...]] = ("work_dir",)

    images: str = Field(description="Raw image-text data: img2dataset Parquet shards, webdataset tars or images.")
    videos: str = Field(description="Raw text-video data: video files with .txt captions or video2dataset tars.")
    dancers: str = Field(description="TikTok-style dance videos (SEQ/images/*.png) for the pose control adapter.")
    work_dir: str = Field(description="Root of every stage's outputs (WORK/runs/<stage>/<key>/, links WORK/<name>).")
    profile: str = Field("toy", description="Config profile: toy, sd15 or a YAML path.")
    overrides: list[str] = Field(default_factory=list, description="Config overrides, key=value.")
    stages: list[Stage] = Field(
        default_factory=lambda: [s.name for s in STAGES],
        description="Stages to run; a stage left out must already have an output for its inputs if a chosen stage "
        "needs it.",
    )
    promote: bool = Field(True, description="Run the promotion gate on the evaluated stage-2 checkpoint.")
    submit: bool | None = Field(None, description="Submit each job to the Ray cluster's Jobs API; empty: when a "
                                "cluster is configured (ray.dashboard_address or RAY_ADDRESS=http://head:8265).")
    new_data: str = Field("", description="The raw shard whose landing started this run (set by the new-data "
                          "trigger; empty for a manual or scheduled run).")  # fmt: skip
    debounce_s: float = Field(0.0, ge=0, description="For a run started by new data: wait this long for more "
                              "shards; a newer landing's run takes over, so a burst of shards starts one retrain.")

    def raw(self) -> dict[str, str]:
        """The raw inputs by the stage graph's source names (``raw:images``, ...)."""
        return {"raw:images": self.images, "raw:videos": self.videos, "raw:dancers": self.dancers}


# ------------------------------------------------------------------------------------------------ caching


def listing_digest(root: str | Path) -> str:
    """``sha256:`` of a raw input's file listing (relative path, size, modification time), sorted; an object-store
    prefix is listed, nothing is read."""
    if storage.is_uri(root):
        files = storage.listing(str(root))
        if not files:
            raise FileNotFoundError(f"raw input {root} does not exist or holds no files")
        h = hashlib.sha256()
        for rel, size, mtime_ns in files:
            h.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
        return "sha256:" + h.hexdigest()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"raw input {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.name if p == root else p.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "sha256:" + h.hexdigest()


@task(name="run-stage", cache_policy=NONE, retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_condition)
def run_stage(stage: str, cfg: Config, params) -> dict:
    """Run one stage's job (here, or submitted to the cluster); retried only on infrastructure errors."""
    return run_io_job(stage, cfg, params)


def _params(stage, p: RetrainParams, out: str, outs: dict[str, str]):
    """The stage's flow parameters: its inputs from the raw data or the upstream outputs, its output ``out``."""
    raw = p.raw()
    inputs = {i.option: raw[i.source] if i.source in raw else str(outs[i.source]) for i in stage.inputs}
    return FLOW_PARAMS[stage.name](**inputs, output_dir=str(out), profile=p.profile, overrides=list(p.overrides),
                                   submit=p.submit, overwrite=True)  # fmt: skip


verified: dict[str, int] = {}
"""Files checked per cached output by :func:`cached_problem` in this process (for the flow's log)."""


def cached_problem(out: str) -> str | None:
    """Why the cached output ``out`` may not be reused: a file its manifest lists that is missing or whose sha256
    differs (:func:`contracts.manifest.verify_files`); None when it verifies, or when there is no output yet."""
    if not storage.is_file(storage.join(out, "manifest.json")):
        return None
    try:
        verified[out] = verify_files(out)
    except IntegrityError as exc:
        return str(exc)
    return None


def _link(work: str, stage, out: str) -> None:
    try:
        link_output(out, storage.join(work, stage.output))
    except FileExistsError as exc:
        raise FileExistsError(f"{exc} (WORK/{stage.output} is the link to the latest {stage.name} output)") from None


# ------------------------------------------------------------------------------------------------ new-data debounce


def debounce(window_s: float) -> str | None:
    """Debounce of new-data runs (this flow run was started by a landing event): the id of a run of the same
    deployment started by a later landing, if there is one now or after ``window_s`` seconds; None means this run
    is the latest and retrains. Several shards landing within the window thus start one retrain, the last one's
    (it sees every shard); a run that waited for the deployment's concurrency slot finds its successors at once."""
    from prefect.runtime import deployment, flow_run

    newer = later_landing_run(flow_run.id, deployment.id)
    if newer is None and window_s > 0:
        time.sleep(window_s)
        newer = later_landing_run(flow_run.id, deployment.id)
    return newer


def later_landing_run(run_id: str | None, deployment_id: str | None) -> str | None:
    """The newest run of ``deployment_id`` created after run ``run_id`` by a landing event (``new_data`` set) and
    not failed, crashed or cancelled; None if there is none (or this is no deployment run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    if not run_id or not deployment_id:
        return None
    with get_client(sync_client=True) as client:
        mine = client.read_flow_run(run_id)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(
            any_=[deployment_id])), sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)  # fmt: skip
    later = [r for r in runs if r.id != mine.id and r.created and mine.created and r.created > mine.created
             and (r.parameters.get("params") or {}).get("new_data")
             and not (r.state and r.state.type.value in ("FAILED", "CRASHED", "CANCELLED"))]  # fmt: skip
    return str(max(later, key=lambda r: r.created).id) if later else None


# ------------------------------------------------------------------------------------------------ the flow


@flow(name="retrain-animatelcm")
def retrain_flow(params: RetrainParams) -> dict:
    """curate images, curate videos, recaption → stage 1 → stage 2 → stage 3 → evaluate → register → gate."""
    apply_env_defaults()
    logger = get_run_logger()
    t_flow = time.monotonic()
    cfg = load_config(params.profile, params.overrides)
    if params.new_data:
        logger.info("started by new data: %s", params.new_data)
        newer = debounce(params.debounce_s)
        if newer is not None:
            logger.info("superseded: a later landing started run %s, which retrains on every shard", newer)
            return {"superseded_by": newer, "new_data": params.new_data, "stages": [], "registered": {}}
    work = storage.normalize(params.work_dir)
    if not storage.is_uri(work):
        Path(work).mkdir(parents=True, exist_ok=True)
    raw = params.raw()
    chosen = needed(params.stages)  # a chosen stage needs its upstream outputs, run or cached
    code = code_version()
    outs: dict[str, str] = {}
    digests: dict[str, str] = {}
    rows: list[dict] = []
    registered: dict[str, str] = {}
    for stage in STAGES:
        if stage.name not in chosen:
            rows.append({"stage": stage.name, "status": "not requested", "seconds": 0.0, "output": ""})
            continue
        main = stage.inputs[0].source
        inputs = {"raw": listing_digest(raw[main])} if main in raw else {u: digests[u] for u in stage.upstream}
        key = stage.key(cfg, inputs, code)
        out = storage.join(work, "runs", stage.name, key[:16])
        t = time.monotonic()
        corrupt = cached_problem(out)
        if corrupt and stage.name not in params.stages:
            raise IntegrityError(f"stage {stage.name} was not requested and its cached output failed its digest "
                                 f"check: {corrupt}; add it to stages to make it again")  # fmt: skip
        if corrupt:
            logger.warning("%s: the cached output %s failed its digest check (%s): running the stage again",
                           stage.name, out, corrupt)  # fmt: skip
        if storage.is_file(storage.join(out, "manifest.json")) and not corrupt:
            status = "cached"
            logger.info("%s: cached (%s, %d files verified)", stage.name, out, verified.get(out, 0))
        elif stage.name not in params.stages:
            raise ValueError(f"stage {stage.name} was not requested and has no output for these inputs at {out}; "
                             "add it to stages")  # fmt: skip
        else:
            logger.info("%s: running → %s", stage.name, out)
            run_stage.with_options(name=f"stage-{stage.name}")(stage.name, cfg, _params(stage, params, out, outs))
            status = "ran"
        seconds = time.monotonic() - t
        manifest = read_manifest(out)
        outs[stage.name], digests[stage.name] = out, manifest["digest"]
        _link(work, stage, out)
        if stage.produces == "report":
            ref = record_output(str(outs[stage.upstream[0]]))
            registered[stage.name] = attach_report(ref, str(out))
        else:
            registered[stage.name] = record_output(str(out))
        rows.append({"stage": stage.name, "status": status, "seconds": seconds,
                     "output": storage.join(work, stage.output),
                     "registered": registered[stage.name]})  # fmt: skip
    decision = None
    if params.promote and "evaluate" in outs:
        decision = run_gate(cfg, registered["evaluate"])
    total = time.monotonic() - t_flow
    in_jobs = sum(r["seconds"] for r in rows if r["status"] == "ran")
    summary = {
        "stages": rows,
        "total_s": total,
        "jobs_s": in_jobs,
        "outside_jobs_s": total - in_jobs,
        "work_dir": work,
        "report": storage.join(output_root(storage.join(work, BY_NAME["evaluate"].output)), "report.md")
        if "evaluate" in outs else None,
        "checkpoint": registered.get("evaluate"),
        "registered": registered,
        "decision": decision,
        "new_data": params.new_data,
    }
    create_markdown_artifact(key="retrain-summary", markdown=summary_markdown(summary),
                             description="Retrain: stages, timings, registered versions")  # fmt: skip
    logger.info("retrain finished in %.0f s (%.0f s in jobs): %s", total, in_jobs,
                ", ".join(f"{r['stage']} {r['status']}" for r in rows))  # fmt: skip
    return summary


def summary_markdown(summary: dict) -> str:
    """The per-stage table (status, wall time, output, registered version) and the time outside jobs."""
    lines = [f"started by new data: `{summary['new_data']}`\n"] if summary.get("new_data") else []
    lines += ["| stage | status | wall s | output | registered |", "|---|---|---|---|---|"]
    for r in summary["stages"]:
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} | `{r['output']}` | "
                     f"{r.get('registered', '')} |")  # fmt: skip
    lines += ["", f"total {summary['total_s']:.0f} s: {summary['jobs_s']:.0f} s in jobs that ran, "
              f"{summary['outside_jobs_s']:.0f} s outside them (flow, registry, cached-stage checks)"]  # fmt: skip
    if summary["decision"]:
        d = summary["decision"]
        lines.append(f"\ngate: {'promoted' if d['promoted'] else 'not promoted'} {d['candidate']} — {d['reason']}")
    return "\n".join(lines)
