"""The toy chain curate → stage 1 → eval → registry end to end on real components: the session's curated dataset,
stage 1 through its flow (Ray Train + DeepSpeed, the committed toy teacher), the eval flow (Ray actors, diffusers
pipelines, the toy CLIP), the MLflow-backed registry, the promotion gate, and every lineage/audit command of the CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(1200)

EVAL = [
    "promotion.image_teacher=[]",  # the relative rules are what these tests follow (the teacher rule: below)
    "evaluate.num_prompts=3",
    "evaluate.student_steps=[1, 4]",
    "evaluate.teacher_steps=[1, 4]",
    "evaluate.reference_steps=4",
    "evaluate.grid_prompts=2",
]


def _stage1(curated, tmp: Path, name: str, steps: int) -> tuple[Path, dict]:
    from flows.distill import DistillImageParams, distill_image_flow

    out = tmp / name
    manifest = distill_image_flow(DistillImageParams(
        input_dir=str(curated.output), output_dir=str(out),
        overrides=[f"distill_image.cache_dir={tmp / 'cache'}", f"distill_image.train.storage_path={tmp / 'runs'}",
                   f"distill_image.train.steps={steps}", "distill_image.train.checkpoint_every=10",
                   "distill_image.train.micro_batch_size=4", "distill_image.train.warmup_steps=0",
                   "distill_image.preview_prompts=[]"],
    ))  # fmt: skip
    return out, manifest


def _evaluate(ckpt: Path, out: Path) -> dict:
    from flows.evaluate import EvaluateParams, evaluate_flow

    return evaluate_flow(EvaluateParams(input_dir=str(ckpt), output_dir=str(out), overrides=EVAL, promote=True))


@pytest.fixture(scope="module")
def chain(curated, ray_local, prefect_harness, tmp_path_factory):
    """Two stage-1 checkpoints (2 and 3 steps) on the session's curated dataset, each evaluated and gated."""
    tmp = tmp_path_factory.mktemp("chain")
    ckpt1, m1 = _stage1(curated, tmp, "s1-a", 2)
    eval1 = _evaluate(ckpt1, tmp / "eval-a")
    ckpt2, m2 = _stage1(curated, tmp, "s1-b", 3)
    eval2 = _evaluate(ckpt2, tmp / "eval-b")
    return {"tmp": tmp, "curated": curated, "ckpt": [ckpt1, ckpt2], "manifest": [m1, m2], "eval": [eval1, eval2]}


def _cli(*args: str) -> str:
    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_the_report_tables_every_method_at_every_step_and_the_reference_is_at_distance_zero(chain):
    report_dir = chain["tmp"] / "eval-a"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["methods"] == {"lcm-lora": [1, 4], "ddim": [1, 4], "dpmsolver++": [1, 4]}
    assert {m: sorted(per) for m, per in report["results"].items()} == {
        "lcm-lora": ["1", "4"], "ddim": ["1", "4"], "dpmsolver++": ["1", "4"]}  # fmt: skip
    reference = report["results"]["ddim"]["4"]  # the teacher's 4-step DDIM output is the reference here
    # latent_mse is paired (zero for the reference itself); the teacher reference of fid_teacher is the same sampler
    # from disjoint seeds, so even DDIM-4 is at a distance from it
    assert reference["latent_mse"] == 0.0 and reference["fid_teacher"] > 1e-3
    assert "disjoint seeds" in report["setup"]["reference"] or report["setup"]["reference"].startswith("the prompt")
    assert report["results"]["ddim"]["1"]["latent_mse"] > 0
    assert report["results"]["lcm-lora"]["1"]["unet_evals"] == 1 and reference["unet_evals"] == 8  # CFG doubles
    assert set(report["headline"]) == {f"{m}@{s}" for m in ("fid", "kid", "clipsim", "latent_mse", "latency_s")
                                       for s in (1, 4)}  # fmt: skip
    # N, a 95% interval around every set-level figure, and the floor of the committed set's two reference sets.
    assert report["setup"]["n"] == 3 and all(r["n"] == 3 for per in report["results"].values() for r in per.values())
    for per in report["results"].values():
        for r in per.values():
            assert all(r["ci95"][m][0] <= r["ci95"][m][1] for m in ("fid", "kid", "fid_teacher", "latency_s"))
            lo, hi = r["ci95"]["clipsim"]  # a mean's interval lies around it
            assert lo - 1e-9 <= r["clipsim"] <= hi + 1e-9
    floor = report["floor"]
    assert floor["n"] == 3 and floor["fid"] >= 0 and floor["ci95"]["kid"][0] <= floor["kid"] <= floor["ci95"]["kid"][1]
    assert report["headline"]["fid@4"] == pytest.approx(report["results"]["lcm-lora"]["4"]["fid"], abs=1e-6)
    assert "toy CLIP image tower" in report["setup"]["extractor"]
    md = (report_dir / "report.md").read_text()
    for metric in report["metrics"]:
        assert f"### {metric}" in md
    assert "| method | 1 | 4 |" in md and "| lcm-lora |" in md and "| dpmsolver++ |" in md
    assert "| floor: reference A vs B |" in md and "N = 3 samples per method" in md
    for metric in ("fid", "clipsim", "latency_s", "peak_mem_mb"):
        assert Image.open(report_dir / "plots" / f"{metric}.png").size[0] > 100
    grid = np.asarray(Image.open(report_dir / "samples.png"))
    assert grid.shape == (2 * 64 + 2, 4 * 64 + 3 * 2, 3)  # 2 prompts × (lcm-lora@1, @4, ddim@1, @4)
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert manifest["kind"] == "eval-report"
    # report.html: every table, the plots and the samples embedded; nothing it would fetch (the browser test opens one)
    page = (report_dir / "report.html").read_text()
    assert "report.html" in manifest["files"] and page.count("<table>") == len(report["metrics"])
    assert all(f'<h3 id="metric-{metric}">' in page for metric in report["metrics"])
    plots = [m for m in report["metrics"] if m != "unet_evals"]
    assert re.findall(r'src="data:image/(png|gif);base64,', page) == ["png"] * (len(plots) + 1)  # + samples.png
    assert all(url.startswith("data:") for url in re.findall(r"""(?:src|href)=["']?([^"'\s>]*)""", page))
    assert manifest["inputs"]["checkpoint"]["digest"] == chain["manifest"][0]["digest"]


def test_the_flows_register_the_chain_with_its_lineage_and_the_report(chain):
    from flows.common import open_registry

    registry = open_registry()
    ref1 = chain["eval"][0]["checkpoint"]
    entry = registry.get(ref1)
    assert entry.digest == chain["manifest"][0]["digest"] and entry.ref == chain["manifest"][0]["registered"]
    (parent,) = entry.parents
    dataset = registry.get(parent.ref)
    assert parent.role == "dataset" and dataset.digest == chain["curated"].manifest["digest"]
    assert entry.evaluated and registry.eval_report(entry)["headline"] == json.loads(
        (chain["tmp"] / "eval-a" / "report.json").read_text())["headline"]  # fmt: skip
    assert registry.register(chain["ckpt"][0]).ref == ref1  # idempotent: same digest, same version
    assert registry.get(f"{entry.name}@candidate").digest == chain["manifest"][1]["digest"]  # the latest evaluated


def test_the_gate_promoted_the_first_and_decided_the_second_on_its_numbers(chain):
    from contracts.gate import check
    from flows.common import open_registry

    first, second = chain["eval"][0]["decision"], chain["eval"][1]["decision"]
    registry = open_registry()
    if first["production_before"] is None:
        assert first["promoted"] and first["reason"] == "no production version yet"
    assert second["production_before"] is not None and len(second["checks"]) == 2
    for c in second["checks"]:
        from contracts.gate import GateRule

        assert c["passed"] == check(GateRule(c["metric"], c["direction"], c["margin"]), c["candidate"],
                                    c["production"])  # fmt: skip
    assert second["promoted"] == all(c["passed"] for c in second["checks"])
    production = registry.get(chain["eval"][0]["checkpoint"].split("@")[0] + "@production")
    expected = chain["eval"][1]["checkpoint"] if second["promoted"] else second["production_before"]
    assert production.ref == expected
    recorded = json.loads(registry.get(chain["eval"][1]["checkpoint"]).tags["alcm.promotion"])
    assert recorded["checks"] == second["checks"]


def test_the_teacher_rule_reads_both_sides_and_their_intervals_from_a_real_report(chain):
    from contracts.gate import TeacherRule, check_teacher

    report = json.loads((chain["tmp"] / "eval-a" / "report.json").read_text())
    assert report["student"] == "lcm-lora"
    c = check_teacher(TeacherRule("fid@4", "ddim"), report)
    ours, theirs = report["results"]["lcm-lora"]["4"], report["results"]["ddim"]["4"]
    assert (c["candidate"], c["teacher"]) == (ours["fid"], theirs["fid"])
    assert c["candidate_ci"] == ours["ci95"]["fid"] and c["teacher_ci"] == theirs["ci95"]["fid"]
    apart = c["candidate_ci"][1] < c["teacher_ci"][0]
    assert c["passed"] == (ours["fid"] < theirs["fid"] and apart) and (c["passed"] or c["why"])


def test_the_eval_flow_publishes_the_report_table_as_an_artifact(chain):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-report"])))
    assert arts and "### fid (lower is better)" in arts[0].data and "plots/fid.png" in arts[0].data
    assert "### Promotion gate" in arts[0].data


def test_cli_list_lineage_audit_and_diff_answer_from_the_registry(chain, tmp_path):
    ref1, ref2 = chain["eval"][0]["checkpoint"], chain["eval"][1]["checkpoint"]
    curated = chain["curated"].manifest
    listing = _cli("registry", "list").splitlines()
    line = next(x for x in listing if x.startswith(ref2 + " "))
    assert "checkpoint" in line and "fid@4" in line and "candidate" in line

    lineage = _cli("lineage", ref1)
    dataset_ref = next(x for x in lineage.splitlines() if "dataset: " in x).split("dataset: ")[1].split()[0]
    assert curated["digest"] in lineage and chain["manifest"][0]["digest"] in lineage
    assert "teacher: " in lineage and "part-00000.parquet" in lineage and "code " in lineage

    audit = _cli("audit", "dataset", dataset_ref, "--reason", "watermark", "--show", "2", "--thumbnails",
                 str(tmp_path / "thumbs"))  # fmt: skip
    by = curated["counts"]["by_decision"]
    assert f"kept {by['kept']}" in audit and f"rejected {by['rejected']}" in audit
    assert f"watermark{' ' * (25 - len('watermark'))}{curated['counts']['by_reason']['watermark']}" in audit
    thumbs = sorted((tmp_path / "thumbs").glob("*.png"))
    assert len(thumbs) == 2 and Image.open(thumbs[0]).size[0] <= 128

    consumers = _cli("audit", "consumers", dataset_ref)
    assert ref1 in consumers and ref2 in consumers

    import pyarrow.dataset as ds

    audit_rows = ds.dataset(chain["curated"].output / "audit").to_table(columns=["key", "decision"]).to_pylist()
    kept_key = next(r["key"] for r in audit_rows if r["decision"] == "kept")
    rejected_key = next(r["key"] for r in audit_rows if r["decision"] == "rejected")
    kept_trace = _cli("audit", "sample", kept_key)
    assert f"{dataset_ref}: kept" in kept_trace and ref1 in kept_trace and ref2 in kept_trace
    rejected_trace = _cli("audit", "sample", rejected_key)
    assert f"{dataset_ref}: rejected" in rejected_trace and ref1 not in rejected_trace

    diff = _cli("registry", "diff", ref1, ref2)
    assert "distill_image.train.steps: 2 → 3" in diff
    assert "train.step: 2 → 3" in diff and "eval/fid@1:" in diff


def test_unknown_references_fail_with_a_clear_message(chain):
    from flows.cli import app

    result = CliRunner().invoke(app, ["lineage", "no-such-model@1"])
    assert result.exit_code == 2 and "no registered dataset or checkpoint named 'no-such-model'" in result.output


def test_alcm_evaluate_reads_the_checkpoint_from_and_writes_the_report_to_s3(chain, s3_server, tmp_path):
    """A stage-1 checkpoint on S3 (moto's server, only the standard AWS_* environment): ``alcm evaluate`` in its own
    process loads it from a verified local copy, writes the report to the store, and records both in the registry
    by URI; the figures are those of the evaluation of the same checkpoint on local files."""
    import os
    import subprocess
    import sys

    from contracts import storage
    from contracts.manifest import output_root, read_manifest
    from registry.store import Registry

    s3_server.create_bucket(Bucket="evals")
    local = chain["ckpt"][0]
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        s3_server.upload_file(str(f), "evals", f"checkpoints/s1-a/{f.relative_to(local).as_posix()}")
    ckpt, out = "s3://evals/checkpoints/s1-a", "s3://evals/reports/s1-a"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALCM_", "RAY_ADDRESS", "PREFECT_API"))}
    env.update(ALCM_REGISTRY_DIR=str(tmp_path / "registry"), ALCM_MIRROR_DIR=str(tmp_path / "mirror"))
    args = [str(Path(sys.executable).parent / "alcm"), "evaluate", "--checkpoint", ckpt, "--output", out,
            *(a for o in EVAL for a in ("--set", o))]  # fmt: skip
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(storage.read_bytes(storage.join(output_root(out), "report.json")))
    expected = json.loads((chain["tmp"] / "eval-a" / "report.json").read_text())
    assert report["checkpoint"]["path"] == ckpt and report["checkpoint"]["digest"] == expected["checkpoint"]["digest"]
    for method, per in expected["results"].items():
        for steps, r in per.items():
            for metric in ("fid", "fid_teacher", "latent_mse", "clipsim"):
                assert report["results"][method][steps][metric] == pytest.approx(r[metric], rel=1e-5, abs=1e-7), \
                    (method, steps, metric)  # fmt: skip
    manifest = read_manifest(out)
    assert manifest["inputs"]["checkpoint"]["path"] == ckpt and f"report:     {out}/_attempts/" in run.stdout
    (entry,) = Registry(f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}").list("checkpoint")
    assert entry.location == ckpt and entry.evaluated
