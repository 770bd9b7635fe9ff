"""The registry on a real MLflow store, embedded (SQLite + local artifacts) and a running ``mlflow server`` over
HTTP: registration, idempotency, aliases, the promotion gate, lineage and the audit queries, on a hand-built chain
raw → curated → stage 1 → stage 2, and what MLflow's own UI shows of it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.gate import GateRule
from contracts.manifest import write_manifest
from registry.audit import dataset_audit, sample_trace
from registry.gate import promote
from registry.store import Registry, RegistryError


@pytest.fixture(scope="module", params=["embedded", "server"])
def registry(request, tmp_path_factory) -> Registry:
    if request.param == "server":
        return Registry(request.getfixturevalue("mlflow_server"))
    root = tmp_path_factory.mktemp("registry")
    return Registry(f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri())


def curated(out: Path, name: str, digest: str, rows: list[tuple[str, str, list[str]]]) -> Path:
    """A curated dataset directory: audit/ with (key, decision, reasons) rows and its manifest."""
    (out / "audit").mkdir(parents=True)
    table = pa.table({
        "id": [f"part-0.parquet#{i:08d}" for i in range(len(rows))],
        "key": [k for k, _, _ in rows],
        "source": ["part-0.parquet"] * len(rows),
        "caption": [f"caption of {k}" for k, _, _ in rows],
        "decision": [d for _, d, _ in rows],
        "reasons": [r for _, _, r in rows],
        "clip_score": [float(i) for i in range(len(rows))],
        "image": [b"\x00"] * len(rows),
    })  # fmt: skip
    pq.write_table(table, out / "audit" / "part-0.parquet")
    decisions = {d: sum(1 for _, dd, _ in rows if dd == d) for d in ("kept", "rejected", "quarantined")}
    reasons = {r: sum(1 for _, _, rr in rows if r in rr) for r in sorted({r for _, _, rr in rows for r in rr})}
    write_manifest(out, {
        "name": name, "version": digest[7:19], "digest": digest, "kind": "image-text-dataset",
        "counts": {"input": len(rows), "by_decision": decisions, "by_reason": reasons},
        "config": {"filters": {"min_clip": 20}},
        "inputs": [{"path": "part-0.parquet", "digest": "sha256:raw0", "kind": "parquet"}],
        "input_root": str(out.parent / "raw"), "code_version": "abc123",
    })  # fmt: skip
    return out


def checkpoint(out: Path, name: str, digest: str, inputs: dict, *, steps: int = 300, loss: float = 0.1) -> Path:
    out.mkdir(parents=True)
    write_manifest(out, {
        "name": name, "digest": digest, "kind": "checkpoint", "stage": "image_consistency_distillation",
        "profile": "toy", "inputs": inputs, "config": {"distill_image": {"steps": steps, "lr": 1e-4}},
        "metrics": {"loss": loss, "step": steps}, "code_version": "abc123",
        "loss_history": {"run": [[100, 0.3, 1e-4], [200, 0.2, 1e-4], [steps, loss, 1e-4]]},
    })  # fmt: skip
    return out


def report(out: Path, ckpt: Path, headline: dict, results: dict | None = None) -> Path:
    out.mkdir(parents=True)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    digest = "sha256:" + json.dumps([headline, results], sort_keys=True).encode().hex()[:64].ljust(64, "0")
    (out / "report.json").write_text(json.dumps({
        "checkpoint": {"name": manifest["name"], "digest": manifest["digest"]}, "headline": headline,
        **(results or {})}))  # fmt: skip
    (out / "report.md").write_text("| method | 1 |\n")
    write_manifest(out, {"name": manifest["name"] + "-eval", "digest": digest, "kind": "eval-report"})
    return out


ROWS = [("a", "kept", []), ("b", "rejected", ["watermark"]), ("c", "rejected", ["low_clip_score", "watermark"]),
        ("d", "quarantined", ["undecodable"]), ("e", "kept", [])]  # fmt: skip


@pytest.fixture(scope="module")
def chain(registry, tmp_path_factory):
    """curated@1 → s1 (stage 1) → s2 (a checkpoint with s1 as parent); a second curated version without key a."""
    root = tmp_path_factory.mktemp("chain")
    data = curated(root / "curated", "t-curated", "sha256:" + "1" * 64, ROWS)
    data2 = curated(root / "curated2", "t-curated", "sha256:" + "2" * 64, [("a", "rejected", ["watermark"])])
    dataset = {"name": "t-curated", "digest": "sha256:" + "1" * 64, "path": str(data)}
    teacher = {"pretrained_dir": "/zoo/teacher", "digests": {"unet.safetensors": "ff"}}
    s1 = checkpoint(root / "s1", "t-lora", "sha256:" + "a" * 64, {"dataset": dataset, "teacher": teacher})
    s1b = checkpoint(root / "s1b", "t-lora", "sha256:" + "b" * 64, {"dataset": dataset, "teacher": teacher},
                     steps=600, loss=0.05)  # fmt: skip
    s2 = checkpoint(root / "s2", "t-video", "sha256:" + "c" * 64,
                    {"stage1": {"name": "t-lora", "digest": "sha256:" + "a" * 64, "path": str(s1)}})  # fmt: skip
    return {"root": root, "data": data, "data2": data2, "s1": s1, "s1b": s1b, "s2": s2}


def test_registering_a_checkpoint_registers_its_dataset_first_and_links_it(registry, chain):
    entry = registry.register(chain["s1"])
    assert entry.ref == "t-lora@1" and entry.kind == "checkpoint" and entry.digest == "sha256:" + "a" * 64
    assert [(p.role, p.ref) for p in entry.parents] == [("dataset", "t-curated@1")]
    data = registry.get("t-curated@1")
    assert data.kind == "dataset" and data.type == "image-text-dataset" and data.location == str(chain["data"])
    assert data.headline == {"input": 5.0, "kept": 2.0, "rejected": 2.0, "quarantined": 1.0}
    assert registry.manifest("t-lora@1")["config"]["distill_image"]["steps"] == 300


def test_registering_the_same_manifest_twice_returns_the_same_version(registry, chain):
    first = registry.register(chain["s1"])
    again = registry.register(chain["s1"])
    assert again.ref == first.ref and again.run_id == first.run_id
    assert [e.version for e in registry.list() if e.name == "t-lora"] == [first.version]


def test_a_new_digest_under_the_same_name_is_the_next_version(registry, chain):
    registry.register(chain["s1"])
    second = registry.register(chain["data2"])
    assert second.ref == "t-curated@2"
    assert registry.get("t-curated").ref == "t-curated@2"  # a bare name is the latest version


def test_aliases_resolve_and_move(registry, chain):
    registry.register(chain["s1"])
    registry.register(chain["data2"])
    registry.set_alias("t-curated@1", "candidate")
    assert registry.get("t-curated@candidate").version == 1
    registry.set_alias("t-curated@2", "candidate")
    assert registry.get("t-curated@candidate").version == 2
    assert registry.get("t-curated@1").aliases == ()
    with pytest.raises(RegistryError, match="alias 'best'"):
        registry.set_alias("t-curated@2", "best")


def test_unknown_names_versions_and_aliases_are_named_in_the_error(registry, chain):
    registry.register(chain["s1"])
    with pytest.raises(RegistryError, match="no registered dataset or checkpoint named 'nope'"):
        registry.get("nope@1")
    with pytest.raises(RegistryError, match="t-lora@7: no such version"):
        registry.get("t-lora@7")
    with pytest.raises(RegistryError, match="expected NAME@VERSION"):
        registry.get("t-lora@")


def test_lineage_reaches_parent_checkpoints_datasets_and_raw_inputs(registry, chain):
    registry.register(chain["s2"])
    tree = registry.lineage("t-video@1")
    assert tree["entry"].ref == "t-video@1"
    (stage1,) = tree["parents"]
    assert stage1["role"] == "stage1" and stage1["node"]["entry"].ref == "t-lora@1"
    (dataset,) = stage1["node"]["parents"]
    assert dataset["node"]["entry"].ref == "t-curated@1"
    assert [r["role"] for r in stage1["node"]["raw"]] == ["teacher"]
    assert dataset["node"]["raw"] == [{"role": "raw", "path": "part-0.parquet", "digest": "sha256:raw0",
                                       "kind": "parquet"}]  # fmt: skip
    assert tree["manifest"]["code_version"] == "abc123"


def test_consumers_are_transitive_and_only_checkpoints(registry, chain):
    registry.register(chain["s2"])
    registry.register(chain["data2"])
    assert [e.ref for e in registry.consumers("t-curated@1")] == ["t-lora@1", "t-video@1"]
    assert registry.consumers("t-curated@2") == []
    assert [e.ref for e in registry.consumers("t-lora@1")] == ["t-video@1"]


def test_audit_counts_reasons_and_shows_examples_of_one_reason(registry, chain):
    registry.register(chain["s1"])
    audit = dataset_audit(registry, "t-curated@1", reason="watermark", show=1)
    assert audit["by_decision"] == {"kept": 2, "quarantined": 1, "rejected": 2}
    assert audit["by_reason"] == {"watermark": 2, "low_clip_score": 1, "undecodable": 1}
    assert audit["consistent"] and audit["matching"] == 2
    assert [(e["key"], e["reasons"], e["clip_score"]) for e in audit["examples"]] == [("b", ["watermark"], 1.0)]
    assert "image" not in audit["examples"][0]
    with pytest.raises(RegistryError, match="no row has reason 'blurry'"):
        dataset_audit(registry, "t-curated@1", reason="blurry")


def test_a_raw_sample_is_traced_to_the_checkpoints_trained_on_it(registry, chain):
    registry.register(chain["s2"])
    registry.register(chain["data2"])
    trace = sample_trace(registry, "a")
    assert {(d["dataset"], d["decision"]) for d in trace["datasets"]} == {
        ("t-curated@1", "kept"),
        ("t-curated@2", "rejected"),
    }
    assert trace["kept_in"] == ["t-curated@1"]
    assert [e.ref for e in trace["checkpoints"]] == ["t-lora@1", "t-video@1"]
    assert sample_trace(registry, "b")["checkpoints"] == []  # rejected everywhere: nothing trained on it


def test_diff_names_config_metric_and_eval_changes(registry, chain):
    registry.register(chain["s1"])
    registry.register(chain["s1b"])
    d = registry.diff("t-lora@1", "t-lora@2")
    assert d["config"] == {"distill_image.steps": (300, 600)}
    assert d["metrics"] == {"train.loss": (0.1, 0.05), "train.step": (300, 600)}
    assert d["inputs"] == {}  # same dataset, same teacher


def test_the_gate_promotes_only_a_candidate_that_beats_production(registry, chain):
    root = chain["root"]
    rules = [GateRule("fvd@4", "lower", 0.05), GateRule("clipsim@4", "higher", 0.0)]
    v1 = registry.register(chain["s1"])
    assert promote(registry, v1.ref, rules)["promoted"] is False  # no eval yet: refused, with the reason recorded
    assert "no eval report" in json.loads(registry.get(v1.ref).tags["alcm.promotion"])["reason"]

    registry.attach_eval(v1.ref, report(root / "eval1", chain["s1"], {"fvd@4": 1.0, "clipsim@4": 50.0}))
    first = promote(registry, v1.ref, rules)
    assert first["promoted"] and first["reason"] == "no production version yet"
    assert registry.get("t-lora@production").ref == v1.ref

    v2 = registry.register(chain["s1b"])
    registry.attach_eval(v2.ref, report(root / "eval2", chain["s1b"], {"fvd@4": 0.97, "clipsim@4": 55.0}))
    refused = promote(registry, v2.ref, rules)  # better, but by less than the 0.05 margin on fvd
    assert refused["promoted"] is False and refused["reason"] == "worse than production on fvd@4"
    assert [(c["metric"], c["candidate"], c["production"], c["passed"]) for c in refused["checks"]] == [
        ("fvd@4", 0.97, 1.0, False), ("clipsim@4", 55.0, 50.0, True)]  # fmt: skip
    assert registry.get("t-lora@production").ref == v1.ref
    recorded = json.loads(registry.get(v2.ref).tags["alcm.promotion"])
    assert recorded["checks"] == refused["checks"] and recorded["production_before"] == v1.ref

    looser = [GateRule("fvd@4", "lower", 0.01), GateRule("clipsim@4", "higher", 0.0)]
    assert promote(registry, v2.ref, looser)["promoted"]
    assert registry.get("t-lora@production").ref == v2.ref


def _results(student: tuple[float, float, float], ddim: tuple[float, float, float]) -> dict:
    """A report's results at 4 steps: (fvd, lo, hi) of the checkpoint and of the teacher's DDIM."""
    return {"methods": {"ddim": [4], "animatelcm": [4]},  # as report.json has them: keys sorted
            "results": {m: {"4": {"fvd": v, "ci95": {"fvd": [lo, hi]}, "n": 8}}
                        for m, (v, lo, hi) in (("animatelcm", student), ("ddim", ddim))}}  # fmt: skip


def test_the_teacher_rule_refuses_even_the_first_candidate_and_records_both_sides(registry, tmp_path):
    from contracts.gate import TeacherRule

    rules, teacher = [GateRule("fvd@4", "lower", 0.0)], [TeacherRule("fvd@4", "ddim")]
    ckpts = {n: checkpoint(tmp_path / n, "t-gated", "sha256:" + d * 64, {}) for n, d in (("c1", "d"), ("c2", "e"),
                                                                                          ("c3", "f"))}  # fmt: skip
    v = registry.register(ckpts["c1"])
    # Better than DDIM@4 by the figure, but the intervals overlap: not promoted, though nothing is in production.
    registry.attach_eval(v.ref, report(tmp_path / "e1", ckpts["c1"], {"fvd@4": 1.0},
                                       _results((1.0, 0.8, 1.3), (1.2, 1.1, 1.4))))  # fmt: skip
    assert registry.alias_holder(v.name, "production") is None
    d = promote(registry, v.ref, rules, teacher)
    assert d["promoted"] is False and d["reason"].startswith("does not beat its teacher: fvd@4 against ddim@4")
    (c,) = d["teacher_checks"]
    assert (c["candidate"], c["candidate_ci"], c["teacher"], c["teacher_ci"]) == (1.0, [0.8, 1.3], 1.2, [1.1, 1.4])
    assert "overlaps" in c["why"] and json.loads(registry.get(v.ref).tags["alcm.promotion"])["teacher_checks"] == [c]
    assert registry.alias_holder(v.name, "production") is None
    # Worse than the teacher by the figure: refused saying so; separated and better: promoted.
    v2 = registry.register(ckpts["c2"])
    registry.attach_eval(v2.ref, report(tmp_path / "e2", ckpts["c2"], {"fvd@4": 1.5},
                                        _results((1.5, 1.4, 1.6), (1.2, 1.1, 1.3))))  # fmt: skip
    assert "is not lower than the teacher's ddim@4 1.2" in promote(registry, v2.ref, rules, teacher)["reason"]
    v3 = registry.register(ckpts["c3"])
    registry.attach_eval(v3.ref, report(tmp_path / "e3", ckpts["c3"], {"fvd@4": 0.5},
                                        _results((0.5, 0.4, 0.6), (1.2, 1.1, 1.3))))  # fmt: skip
    d3 = promote(registry, v3.ref, rules, teacher)
    assert d3["promoted"] and d3["reason"] == "no production version yet" and d3["teacher_checks"][0]["passed"]
    # A report without intervals cannot show separation.
    no_ci = _results((0.5, 0.4, 0.6), (1.2, 1.1, 1.3))
    for r in no_ci["results"].values():
        del r["4"]["ci95"]
    from contracts.gate import check_teacher

    assert "no intervals" in check_teacher(teacher[0], no_ci)["why"]
    assert check_teacher(TeacherRule("fvd@8"), no_ci)["why"].startswith("the report has no fvd at 8 steps")
    with pytest.raises(ValueError, match="against 'euler'"):
        TeacherRule("fvd@4", "euler")


def test_attaching_a_report_of_another_checkpoint_is_refused(registry, chain):
    v = registry.register(chain["s2"])
    wrong = report(chain["root"] / "eval-wrong", chain["s1"], {"fvd@4": 1.0})
    with pytest.raises(RegistryError, match="the report evaluates digest"):
        registry.attach_eval(v.ref, wrong)


def test_a_gate_rule_with_a_bad_direction_names_it():
    with pytest.raises(ValueError, match="direction 'down'"):
        GateRule("fvd@4", "down")
    with pytest.raises(ValueError, match="expected metric@steps"):
        GateRule("fvd")


def test_mlflow_shows_parents_params_dataset_inputs_the_loss_curve_and_the_reason_table(registry, chain):
    s2 = registry.register(chain["s2"])
    client = registry._client
    mv = client.get_model_version("t-video", str(s2.version))
    # A source the server accepts; the output's own location in the pointer artifact and the alcm.location tag.
    assert mv.source == f"runs:/{s2.run_id}/output" and s2.location == str(chain["s2"])
    with tempfile.TemporaryDirectory() as tmp:
        pointer = json.loads(Path(client.download_artifacts(s2.run_id, "output/location.json", tmp)).read_text())
    assert pointer == {"location": str(chain["s2"]), "uri": chain["s2"].resolve().as_uri()}
    assert "- stage1: [models:/t-lora/1](#/models/t-lora/versions/1)" in mv.description
    run = client.get_run(client.get_model_version("t-lora", "1").run_id)
    assert run.data.params["distill_image.steps"] == "300"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "t-curated"
    assert json.loads(dataset_input.dataset.source)["uri"] == "models:/t-curated/1"
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "dataset"}
    curve = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted({(m.step, m.value) for m in curve}) == [(100, 0.3), (200, 0.2), (300, 0.1)]
    data_run = registry.get("t-curated@1").run_id
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(data_run, "reasons.json", tmp)).read_text())
    assert table["columns"] == ["reason", "rows"]
    assert table["data"] == [["watermark", 2], ["low_clip_score", 1], ["undecodable", 1]]


def test_every_registry_and_audit_command_works_against_an_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data = curated(tmp_path / "curated", "cli-curated", "sha256:" + "d" * 64, ROWS)
    inputs = {"dataset": {"name": "cli-curated", "digest": "sha256:" + "d" * 64, "path": str(data)}}
    one = checkpoint(tmp_path / "one", "cli-lora", "sha256:" + "e" * 64, inputs)
    two = checkpoint(tmp_path / "two", "cli-lora", "sha256:" + "f" * 64, inputs, steps=600)
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    assert ok("registry", "register", str(one)).startswith("cli-lora@1 checkpoint")
    assert ok("registry", "register", str(two)).startswith("cli-lora@2 checkpoint")
    listed = ok("registry", "list")
    assert "cli-curated@1" in listed and "cli-lora@2" in listed
    assert str(data) in ok("registry", "show", "cli-curated@1")
    assert "cli-curated@1" in ok("lineage", "cli-lora@1")
    assert "distill_image.steps" in ok("registry", "diff", "cli-lora@1", "cli-lora@2")
    assert ok("registry", "alias", "cli-lora@2", "candidate").strip() == "cli-lora@2"
    assert "watermark" in ok("audit", "dataset", "cli-curated@1", "--reason", "watermark")
    assert "2 checkpoint(s) made from cli-curated@1" in ok("audit", "consumers", "cli-curated@1")
    assert "cli-lora@1" in ok("audit", "sample", "a")
    missing = runner.invoke(app, ["registry", "show", "cli-lora@9"])
    assert missing.exit_code == 2 and "no such version" in missing.output


def test_an_attached_reports_plot_is_served_over_http_by_the_mlflow_server(mlflow_server, tmp_path, monkeypatch):
    import urllib.request

    from flows.evaluate import plot_links

    registry = Registry(mlflow_server)
    data = curated(tmp_path / "curated", "plot-curated", "sha256:" + "7" * 64, ROWS)
    ckpt = checkpoint(tmp_path / "ckpt", "plot-lora", "sha256:" + "8" * 64,
                      {"dataset": {"name": "plot-curated", "digest": "sha256:" + "7" * 64, "path": str(data)}})
    entry = registry.register(ckpt)
    rep = report(tmp_path / "eval", ckpt, {"fvd@4": 1.0})
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (rep / "plots").mkdir()
    (rep / "plots" / "few_step.png").write_bytes(png)
    registry.attach_eval(entry.ref, rep)
    url = registry.artifact_url(entry, "eval/plots/few_step.png")
    assert url.startswith(f"{mlflow_server}/get-artifact?")
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.read() == png
    # The eval flow's report artifact shows the plot inline from that URL, never as a file:// link.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    files = {"plots/few_step.png": "d1", "report.md": "d2", "report.html": "d3"}
    shown = plot_links({"files": files}, str(rep), entry.ref)
    page = registry.artifact_url(entry, "eval/report.html")
    assert shown == [f"- plots/few_step.png\n\n  ![plots/few_step.png]({url})", f"- [report.html]({page})"]
    unattached = plot_links({"files": files}, str(rep), None)
    assert unattached == [f"- [plots/few_step.png]({rep.resolve().as_uri()}/plots/few_step.png)",
                          f"- [report.html]({rep.resolve().as_uri()}/report.html)"]  # fmt: skip
