"""Redaction: credentials in URIs, parameters and secret environment values become ``***``; nothing else changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from contracts.redact import (
    MASK,
    install_log_redaction,
    is_secret_env_name,
    redact,
    redact_record,
    redact_text,
    secret_env_values,
)

NO_SECRETS: list[str] = []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket/runs?access_key=AKIAEXAMPLE&secret_key=wJalrXUtn%2FK7MDENG",
         "s3://bucket/runs?access_key=***&secret_key=***"),
        ("s3://bucket/runs?region=eu-west-1&session_token=FwoGZXIvYXdzE&scheme=https",
         "s3://bucket/runs?region=eu-west-1&session_token=***&scheme=https"),
        ("https://blob.example/c/x.bin?sv=2022-11-02&se=2030-01-01&sig=abc%2Bdef%3D",
         "https://blob.example/c/x.bin?sv=2022-11-02&se=2030-01-01&sig=***"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F2024&X-Amz-Signature=f00d&X-Amz-Expires=60",
         "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
        ("https://api.example/v1?Token=t0k3n&page=2", "https://api.example/v1?Token=***&page=2"),
        ("http://h/x?password=hunter22&user=me", "http://h/x?password=***&user=me"),
        ("postgresql://alcm:hunter22@db.internal:5432/mlflow", "postgresql://alcm:***@db.internal:5432/mlflow"),
        ("https://user:p%40ss@mlflow.example", "https://user:***@mlflow.example"),
        ("s3://AKIAEXAMPLE:wJalr/K7MDENG@bucket/runs", "s3://***:***@bucket/runs"),
        ("gs://svc:k3y@bucket/data", "gs://***:***@bucket/data"),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Zm9vYmFy==;EndpointSuffix=core.windows.net",
         "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net"),
    ],
)  # fmt: skip
def test_credentials_in_uris_are_masked_and_the_rest_stays_readable(text, expected):
    assert redact_text(text, secrets=NO_SECRETS) == expected


def test_credentials_inside_a_sentence_or_an_override_are_masked_without_eating_the_text_around_them():
    line = ("stage 1: run toy under 's3://b/runs?access_key=AK1&secret_key=SK1' and "
            "postgresql://u:pw@db/x, 4 steps")  # fmt: skip
    assert redact_text(line, secrets=NO_SECRETS) == (
        "stage 1: run toy under 's3://b/runs?access_key=***&secret_key=***' and postgresql://u:***@db/x, 4 steps"
    )
    override = "distill_image.train.storage_path=s3://b/runs?secret_key=SK1"
    assert redact_text(override, secrets=NO_SECRETS) == "distill_image.train.storage_path=s3://b/runs?secret_key=***"


@pytest.mark.parametrize(
    "text",
    [
        "/work/data/runs/stage1",
        "data/runs",
        "relative/dir with spaces/file.parquet",
        "s3://bucket/runs/toy-lcm-lora",
        "s3://bucket/runs?region=eu-west-1&endpoint_override=localhost:9000&scheme=http",
        "https://mlflow.example:5000/#/models/toy-lcm-lora",
        "http://127.0.0.1:4200/api",
        "ssh://git@github.com/org/repo.git",
        "sqlite:////tmp/registry/mlflow.db",
        "file:///tmp/registry/artifacts",
        "toy-lcm-lora@3",
        "curation.filters.min_side=48",
        "sha256:5f0c7e1a9b",
        "token ids; max_new_tokens=20",
        "the key=value pairs of ?q=1",
        "",
    ],
)
def test_strings_without_credentials_are_unchanged(text):
    assert redact_text(text, secrets=NO_SECRETS) == text


def test_values_of_secret_environment_variables_are_masked_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENG")
    monkeypatch.setenv("ALCM_PREFECT_AUTH_STRING", "admin:correct-horse")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GOOGLE_KEY_FILE", "/etc/keys/svc.json")
    values = secret_env_values()
    assert {"wJalrXUtnFEMIK7MDENG", "admin:correct-horse", "correct-horse", "tok-1234567890"} <= set(values)
    assert "/etc/keys/svc.json" not in values and "1" not in values
    text = "key wJalrXUtnFEMIK7MDENG, auth admin:correct-horse, bare correct-horse, tok-1234567890, /etc/keys/svc.json"
    assert redact_text(text) == "key ***, auth ***, bare ***, ***, /etc/keys/svc.json"


@pytest.mark.parametrize(
    ("name", "secret"),
    [("AWS_ACCESS_KEY_ID", True), ("AWS_SESSION_TOKEN", True), ("MLFLOW_TRACKING_PASSWORD", True),
     ("PREFECT_API_KEY", True), ("PREFECT_API_AUTH_STRING", True), ("AZURE_STORAGE_CONNECTION_STRING", True),
     ("DB_PASSWD", True), ("CLIENT_SECRET", True), ("TOKENIZERS_PARALLELISM", False), ("HF_HUB_OFFLINE", False),
     ("SSH_AUTH_SOCK", False), ("PREFECT_API_URL", False), ("GOOGLE_APPLICATION_CREDENTIALS", False),
     ("SSL_KEY_FILE", False)],
)  # fmt: skip
def test_secret_environment_variables_are_recognised_by_name(name, secret):
    assert is_secret_env_name(name) is secret


def test_redact_walks_dicts_lists_and_tuples_and_masks_values_under_secret_keys():
    manifest = {
        "name": "curated-images",
        "digest": "sha256:abc",
        "counts": {"input": 3},
        "inputs": [{"path": "s3://AK:SK@bucket/raw/000.parquet", "digest": "sha256:def"}],
        "config": {
            "distill_image": {"train": {"storage_path": "s3://bucket/runs?access_key=AK&secret_key=SK", "steps": 4}},
            "storage": {"secret_key": "SK", "aws_session_token": "ST", "password": "", "max_new_tokens": 20},
            "pad_token": "<pad>",
            "shape": (1, "gs://u:p@b/x"),
        },
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "out": Path("/tmp/out"),
    }
    out = redact(manifest, secrets=NO_SECRETS)
    assert out["inputs"][0] == {"path": "s3://***:***@bucket/raw/000.parquet", "digest": "sha256:def"}
    assert out["config"]["distill_image"]["train"] == {"storage_path": "s3://bucket/runs?access_key=***&secret_key=***",
                                                       "steps": 4}  # fmt: skip
    assert out["config"]["storage"] == {"secret_key": MASK, "aws_session_token": MASK, "password": "",
                                        "max_new_tokens": 20}  # fmt: skip
    assert out["config"]["pad_token"] == MASK  # a key named *_token is masked: the safe side
    assert out["config"]["shape"] == (1, "gs://***:***@b/x")
    assert {k: out[k] for k in ("name", "digest", "counts", "ratio", "ok", "none", "out")} == {
        k: manifest[k] for k in ("name", "digest", "counts", "ratio", "ok", "none", "out")
    }
    assert manifest["config"]["storage"]["secret_key"] == "SK", "the input is not modified"


def test_every_shipped_profile_is_unchanged_by_redaction():
    from pipelines.config import load_config, to_dict

    for profile in ("toy", "sd15"):
        config = to_dict(load_config(profile))
        assert redact(config, secrets=NO_SECRETS) == config, profile


def test_write_manifest_writes_no_credential_and_keeps_the_digest(tmp_path, monkeypatch):
    from contracts.manifest import read_manifest, write_manifest

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-0123456789")
    manifest = {
        "name": "x",
        "digest": "sha256:0123456789abcdef",
        "kind": "image-text-dataset",
        "config": {"a": {"storage_path": "s3://b/r?access_key=AK9&secret_key=SK9"}, "b": "env-secret-0123456789"},
        "inputs": [{"path": "https://u:pw9@host/raw.tar", "digest": "sha256:1"}],
    }
    path = write_manifest(tmp_path, manifest)
    text = path.read_text()
    for secret in ("AK9", "SK9", "pw9", "env-secret-0123456789"):
        assert secret not in text
    written = read_manifest(tmp_path)
    assert written["digest"] == manifest["digest"]
    assert written["config"]["a"]["storage_path"] == "s3://b/r?access_key=***&secret_key=***"
    assert manifest["config"]["a"]["storage_path"].endswith("SK9"), "the caller's manifest is not modified"
    assert json.loads(text) == written


def test_a_log_record_is_redacted_in_its_message_and_its_traceback(monkeypatch):
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_0123456789abcdef")
    record = logging.LogRecord("pipelines.x", logging.INFO, __file__, 1, "run under %s with %s",
                               ("s3://b/r?secret_key=SK7", "pnu_0123456789abcdef"), None)  # fmt: skip
    redact_record(record)
    assert record.getMessage() == "run under s3://b/r?secret_key=*** with ***"
    try:
        raise ValueError("storage s3://u:PW7@b/r unusable")
    except ValueError:
        import sys

        record = logging.LogRecord("pipelines.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    redact_record(record)
    text = logging.Formatter().format(record)
    assert "PW7" not in text and "s3://***:***@b/r" in text and "Traceback" in text


def test_a_record_whose_message_cannot_be_formatted_is_left_for_its_handler():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert redact_record(record) is record and record.args == ("many",)


def test_installed_log_redaction_masks_every_logger_and_is_idempotent(caplog):
    install_log_redaction()
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("connecting to %s", "postgresql://u:PW8@db/x")
    assert "PW8" not in caplog.text and "postgresql://u:***@db/x" in caplog.text


def test_a_job_entry_point_that_fails_on_a_credential_bearing_override_does_not_print_it(tmp_path):
    import subprocess
    import sys

    secret = "pw-" + "7f3a9c1e5b2d"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.curate_images", "--input", str(tmp_path), "--output", str(tmp_path / "out"),
         "--set", f"distill_image.train.steps=s3://alcm:{secret}@bucket/runs"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert proc.returncode == 1
    assert "distill_image.train.steps" in proc.stderr and "***" in proc.stderr, proc.stderr[-2000:]
    assert secret not in proc.stdout + proc.stderr
