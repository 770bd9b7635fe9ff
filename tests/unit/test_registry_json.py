"""``--json`` on ``alcm registry list|show|diff``, ``alcm lineage`` and ``alcm audit dataset|consumers|sample``: one
JSON document on stdout with its ``schema``, the same facts the text gives, plain JSON values (no NaN, ISO times,
ASCII), and errors on stderr only. On the embedded store, with test_registry's chain raw → curated → stage 1 →
stage 2."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
from typer.testing import CliRunner

from contracts.gate import GateRule
from flows.cli import app
from registry.gate import promote
from registry.store import Registry
from registry.views import audit_view, document, dumps
from tests.unit.test_registry import ROWS, checkpoint, curated, report

NAN = float("nan")
EVAL = {
    "metrics": ["fvd", "kid", "clipsim", "latency_s", "peak_mem_mb"],
    "setup": {"fd": "fvd", "num_prompts": 2, "extractor": "toy CLIP", "reference": "the prompt set's renders"},
    "results": {"animatelcm": {"4": {"fvd": 1.0, "kid": 0.1, "clipsim": 50.0, "latency_s": 0.2, "peak_mem_mb": 9.0,
                                     "ci95": {"fvd": [0.9, NAN], "clipsim": [49.0, 51.0]}, "n": 8}},
                "ddim": {"4": {"fvd": 1.2, "clipsim": 51.0, "latency_s": 0.3, "n": 8}}},
}  # fmt: skip
"""An eval report's figures: the student's FVD interval has a NaN bound (nothing to resample), DDIM has no KID."""

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The chain in an embedded store that ``alcm`` opens (``ALCM_REGISTRY_DIR``): t-curated@1 (5 audited rows),
    t-lora@1 (evaluated, promoted to production) and @2 (600 steps), t-video@1 (stage 2 on t-lora@1)."""
    root = tmp_path_factory.mktemp("json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALCM_REGISTRY_DIR", str(root / "registry"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        data = curated(root / "curated", "t-curated", "sha256:" + "1" * 64, ROWS)
        dataset = {"name": "t-curated", "digest": "sha256:" + "1" * 64, "path": str(data)}
        teacher = {"pretrained_dir": "/zoo/teacher", "digests": {"unet.safetensors": "ff", "vae.safetensors": "ee"}}
        s1 = checkpoint(root / "s1", "t-lora", "sha256:" + "a" * 64, {"dataset": dataset, "teacher": teacher})
        s1b = checkpoint(root / "s1b", "t-lora", "sha256:" + "b" * 64, {"dataset": dataset, "teacher": teacher},
                         steps=600, loss=0.05)  # fmt: skip
        s2 = checkpoint(root / "s2", "t-video", "sha256:" + "c" * 64,
                        {"stage1": {"name": "t-lora", "digest": "sha256:" + "a" * 64, "path": str(s1)}})  # fmt: skip
        registry = Registry()
        registry.register(s2)
        registry.register(s1b)
        registry.attach_eval("t-lora@1", report(root / "eval", s1, {"fvd@4": 1.0, "clipsim@4": 50.0}, EVAL))
        assert promote(registry, "t-lora@1", [GateRule("fvd@4", "lower", 0.0)])["promoted"]
        yield {"root": root, "data": data}


def run_json(*args: str) -> dict:
    """``alcm ARGS --json``: exit 0, and the whole of stdout is one JSON document, ASCII, with no NaN."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.isascii() and "NaN" not in result.stdout and "Infinity" not in result.stdout
    return json.loads(result.stdout)


def text(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("args, schema", [
    (("registry", "list"), "alcm.registry.list/1"),
    (("registry", "show", "t-lora@1"), "alcm.registry.show/1"),
    (("registry", "diff", "t-lora@1", "t-lora@2"), "alcm.registry.diff/1"),
    (("lineage", "t-video@1"), "alcm.lineage/1"),
    (("audit", "dataset", "t-curated@1"), "alcm.audit.dataset/1"),
    (("audit", "consumers", "t-curated@1"), "alcm.audit.consumers/1"),
    (("audit", "sample", "a"), "alcm.audit.sample/1"),
])  # fmt: skip
def test_every_query_command_prints_one_document_that_names_its_schema_first(store, args, schema):
    doc = run_json(*args)
    assert next(iter(doc)) == "schema" and doc["schema"] == schema


def test_registry_list_json_has_every_version_with_its_kind_aliases_parents_and_headline(store):
    doc = run_json("registry", "list")
    entries = {e["ref"]: e for e in doc["entries"]}
    assert list(entries) == ["t-curated@1", "t-lora@1", "t-lora@2", "t-video@1"] and doc["kind"] is None
    assert [entries[r]["kind"] for r in entries] == ["dataset", "checkpoint", "checkpoint", "checkpoint"]
    assert entries["t-lora@1"]["aliases"] == ["production"] and entries["t-lora@2"]["aliases"] == []
    assert entries["t-video@1"]["parents"] == [{"role": "stage1", "ref": "t-lora@1"}]
    assert entries["t-curated@1"]["headline"] == {"input": 5.0, "kept": 2.0, "quarantined": 1.0, "rejected": 2.0}
    assert entries["t-curated@1"]["location"] == str(store["data"]) and entries["t-curated@1"]["stage"] is None
    assert (entries["t-lora@2"]["name"], entries["t-lora@2"]["version"]) == ("t-lora", 2)
    assert entries["t-lora@1"]["evaluated"] and not entries["t-lora@2"]["evaluated"]
    created = datetime.fromisoformat(entries["t-lora@1"]["created"])
    assert created.utcoffset().total_seconds() == 0 and created.year >= 2024
    checkpoints = run_json("registry", "list", "--kind", "checkpoint")
    assert checkpoints["kind"] == "checkpoint"
    assert [e["ref"] for e in checkpoints["entries"]] == ["t-lora@1", "t-lora@2", "t-video@1"]


def test_registry_show_json_has_the_digest_parents_gate_decision_and_eval_figures_with_nan_as_null(store):
    doc = run_json("registry", "show", "t-lora@production")
    e = doc["entry"]
    assert (e["ref"], e["digest"], e["stage"]) == ("t-lora@1", "sha256:" + "a" * 64, "image_consistency_distillation")
    assert e["parents"] == [{"role": "dataset", "ref": "t-curated@1"}]
    gate = doc["gate"]
    assert gate["promoted"] is True and gate["reason"] == "no production version yet"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", gate["time"]), gate["time"]
    ev = doc["eval"]
    assert ev["metrics"] == ["fvd", "kid", "clipsim", "latency_s"]  # the text's default tables, not peak_mem_mb
    assert ev["headline"] == {"fvd@4": 1.0, "clipsim@4": 50.0} and ev["setup"]["num_prompts"] == 2
    student = ev["results"]["animatelcm"]["4"]
    assert student == {"fvd": 1.0, "kid": 0.1, "clipsim": 50.0, "latency_s": 0.2,
                       "ci95": {"fvd": [0.9, None], "clipsim": [49.0, 51.0]}, "n": 8}  # fmt: skip
    assert "kid" not in ev["results"]["ddim"]["4"] and ev["floor"] is None
    one = run_json("registry", "show", "t-lora@1", "--metric", "clipsim")["eval"]
    assert one["metrics"] == ["clipsim"] and one["results"]["ddim"]["4"] == {"clipsim": 51.0, "ci95": {}, "n": 8}
    dataset = run_json("registry", "show", "t-curated@1")
    assert dataset["entry"]["parents"] == [] and dataset["gate"] is None and dataset["eval"] is None


def test_registry_diff_json_gives_both_sides_of_each_changed_key_only(store):
    doc = run_json("registry", "diff", "t-lora@1", "t-lora@2")
    assert (doc["a"], doc["b"]) == ("t-lora@1", "t-lora@2")
    assert doc["digest"] == {"a": "sha256:" + "a" * 64, "b": "sha256:" + "b" * 64}
    assert doc["code_version"] == {"a": "abc123", "b": "abc123"}
    assert doc["config"] == {"distill_image.steps": {"a": 300, "b": 600}}
    assert doc["inputs"] == {}  # same dataset, same teacher
    assert doc["metrics"] == {
        "train.loss": {"a": 0.1, "b": 0.05}, "train.step": {"a": 300, "b": 600},
        "eval/clipsim@4": {"a": 50.0, "b": None}, "eval/fvd@4": {"a": 1.0, "b": None},  # evaluated on one side only
    }  # fmt: skip


def test_lineage_json_is_the_parent_chain_down_to_the_raw_inputs(store):
    doc = run_json("lineage", "t-video@1")
    assert (doc["role"], doc["ref"], doc["digest"], doc["raw"]) == (None, "t-video@1", "sha256:" + "c" * 64, [])
    (stage1,) = doc["parents"]
    assert (stage1["role"], stage1["ref"], stage1["code_version"]) == ("stage1", "t-lora@1", "abc123")
    (dataset,) = stage1["parents"]
    assert (dataset["role"], dataset["ref"], dataset["kind"], dataset["parents"]) == ("dataset", "t-curated@1",
                                                                                      "dataset", [])  # fmt: skip
    assert dataset["raw"] == [{"role": "raw", "location": str(store["root"] / "raw" / "part-0.parquet"),
                               "digest": "sha256:raw0", "files": None}]  # fmt: skip
    assert stage1["raw"] == [{"role": "teacher", "location": "/zoo/teacher", "digest": None,
                              "files": {"unet.safetensors": "ff", "vae.safetensors": "ee"}}]  # fmt: skip
    assert doc["config"] is None and re.fullmatch(r"sha256:[0-9a-f]{16}", doc["config_digest"])
    assert f"config {dataset['config_digest']}" in text("lineage", "t-video@1")  # the text says the same
    with_config = run_json("lineage", "t-lora@1", "--config")
    assert with_config["config"] == {"distill_image.lr": 1e-4, "distill_image.steps": 300}
    assert with_config["parents"][0]["config"] == {"filters.min_clip": 20}


def test_audit_dataset_json_counts_per_decision_add_up_to_the_audited_rows(store):
    doc = run_json("audit", "dataset", "t-curated@1", "--reason", "watermark", "--show", "1")
    assert doc["ref"] == "t-curated@1" and doc["rows"] == len(ROWS) == sum(doc["by_decision"].values())
    assert doc["by_decision"] == {"kept": 2, "quarantined": 1, "rejected": 2}
    assert doc["manifest_by_decision"] == doc["by_decision"] and doc["consistent"] is True
    assert doc["by_reason"] == {"watermark": 2, "low_clip_score": 1, "undecodable": 1}
    assert (doc["reason"], doc["matching"], doc["thumbnails"], doc["sheet"]) == ("watermark", 2, None, None)
    assert doc["examples"] == [{"id": "part-0.parquet#00000001", "key": "b", "source": "part-0.parquet",
                                "caption": "caption of b", "decision": "rejected", "reasons": ["watermark"],
                                "clip_score": 1.0}]  # fmt: skip
    assert doc["input_root"] == str(store["root"] / "raw")


def test_audit_dataset_json_with_thumbnails_is_still_one_document(store, tmp_path):
    doc = run_json("audit", "dataset", "t-curated@1", "--reason", "kept", "--thumbnails", str(tmp_path / "thumbs"))
    assert [e["key"] for e in doc["examples"]] == ["a", "e"]
    assert doc["thumbnails"] == {k: f"input {store['root'] / 'raw'} no longer exists" for k in ("a", "e")}


def test_audit_consumers_json_resolves_an_alias_and_lists_the_checkpoints_trained_on_it(store):
    doc = run_json("audit", "consumers", "t-curated@1")
    assert doc["ref"] == "t-curated@1"
    assert [(c["ref"], c["kind"]) for c in doc["checkpoints"]] == [("t-lora@1", "checkpoint"),
                                                                  ("t-lora@2", "checkpoint"),
                                                                  ("t-video@1", "checkpoint")]  # fmt: skip
    via_alias = run_json("audit", "consumers", "t-lora@production")
    assert via_alias["ref"] == "t-lora@1" and [c["ref"] for c in via_alias["checkpoints"]] == ["t-video@1"]


def test_audit_sample_json_traces_a_key_to_its_rows_and_the_checkpoints_trained_on_it(store):
    doc = run_json("audit", "sample", "a")
    assert doc["key"] == "a" and doc["kept_in"] == ["t-curated@1"]
    assert doc["datasets"] == [{"dataset": "t-curated@1", "id": "part-0.parquet#00000000", "key": "a",
                                "decision": "kept", "reasons": []}]  # fmt: skip
    assert [c["ref"] for c in doc["checkpoints"]] == ["t-lora@1", "t-lora@2", "t-video@1"]
    rejected = run_json("audit", "sample", "c")
    assert rejected["datasets"][0]["reasons"] == ["low_clip_score", "watermark"] and rejected["checkpoints"] == []
    assert run_json("audit", "sample", "nowhere") == {"schema": "alcm.audit.sample/1", "key": "nowhere",
                                                      "datasets": [], "kept_in": [], "checkpoints": []}  # fmt: skip


@pytest.mark.parametrize("args, message", [
    (("registry", "show", "t-lora@9"), "no such version"),
    (("registry", "diff", "t-lora@1", "nope@1"), "no registered dataset or checkpoint named 'nope'"),
    (("lineage", "t-lora@"), "expected NAME@VERSION"),
    (("audit", "dataset", "t-curated@1", "--reason", "blurry"), "no row has reason 'blurry'"),
    (("audit", "dataset", "t-lora@1"), "audits are kept for datasets"),
    (("registry", "list", "--kind", "model"), "choose dataset or checkpoint"),
])  # fmt: skip
def test_with_json_an_error_exits_2_with_its_message_on_stderr_and_nothing_on_stdout(store, args, message):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert message in result.stderr


HOSTILE = "clip\x1b[2J\u202etxt\udcff"
"""An ESC sequence (clear screen), a right-to-left override and a lone surrogate (a name that was not UTF-8)."""


def test_a_document_is_ascii_json_that_carries_hostile_names_as_strings_and_nan_as_null():
    audit = {
        "ref": "d@1",
        "rows": 1,
        "by_decision": {"quarantined": 1},
        "by_reason": {"bad\x1b[0m": 1},
        "examples": [{"key": HOSTILE, "caption": "a\x1b]0;pwned\x07", "clip_score": NAN, "aesthetic": 5.5}],
    }
    out = dumps(document("audit.dataset", audit_view(audit)))
    assert out.isascii() and not re.search("[\x00-\x09\x0b-\x1f\x7f]", out)  # newlines of the indent only
    doc = json.loads(out)
    (example,) = doc["examples"]
    assert example["key"] == "clip\x1b[2J\u202etxt\\udcff"  # a JSON string again; the surrogate as its text
    assert example["caption"] == "a\x1b]0;pwned\x07" and doc["by_reason"] == {"bad\x1b[0m": 1}
    assert (example["clip_score"], example["aesthetic"]) == (None, 5.5)
    with pytest.raises(ValueError, match="choose one of"):
        document("registry.everything", {})
    with pytest.raises(TypeError, match="no plain JSON form"):
        document("audit.sample", {"key": b"raw"})
