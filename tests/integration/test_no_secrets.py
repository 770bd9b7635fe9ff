"""No storage credential reaches a flow's outputs, the registry, the Prefect artifacts or any log.

Fake secrets (random, so a hit cannot be a coincidence) are set in the credential environment variables and written
into URI-valued config overrides of sections the job does not use (so no network is needed); a real flow then runs
through the Prefect test harness, and every place the platform writes is searched for every secret: the output
directory's files (``manifest.json``, Parquet bytes), the registry directory (SQLite bytes, artifacts), the flow
run's artifacts and run logs (read back through the Prefect API), the flow's return value, and everything logged or
printed in this process. The flow run's *parameters* keep the overrides as typed (see ``contracts.redact``); the test
checks they are there, which also proves the secrets went in. A second run fails on a bad override that holds
credentials: the error reaches the caller as typed, and the run logs and console show it redacted.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from pathlib import Path

SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "ALCM_PREFECT_AUTH_STRING",
)


def _prefect_console_to_this_stderr() -> None:
    """Point Prefect's console handlers at the stderr ``capfd`` captures now: a handler made during an earlier test
    still holds that test's capture stream, closed since, so this run's console lines would be lost (and logging's
    report of the closed file prints the exception being logged, as it is, to the real stderr)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for handler in {h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers}:
        if isinstance(handler, PrefectConsoleHandler):
            handler.stream = sys.stderr  # not setStream: it flushes the closed stream first
            handler.console.file = sys.stderr


def _fake(label: str) -> str:
    return f"{label}{secrets.token_hex(8)}"


def _files_holding(root: Path, needles: dict[str, str]) -> dict[str, list[str]]:
    """``file → [secret names]`` for every file under ``root`` whose bytes contain a secret."""
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        data = path.read_bytes()
        found = [name for name, value in needles.items() if value.encode() in data]
        if found:
            hits[str(path)] = found
    return hits


def _run_logs(flow_run_id) -> list:
    """The flow run's logs in the Prefect API, after sending what is still queued."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def _texts_holding(texts: dict[str, str], needles: dict[str, str]) -> dict[str, list[str]]:
    """``where → [secret name: the text around its first occurrence]`` for every text that contains a secret."""
    found = {
        where: [f"{name}: ...{text[max(0, text.index(value) - 300) : text.index(value) + 60]}..."
                for name, value in needles.items() if value in text]
        for where, text in texts.items()
    }  # fmt: skip
    return {where: names for where, names in found.items() if names}


def test_no_credential_appears_in_outputs_registry_artifacts_or_logs(
    prefect_harness, ray_local, toy_images, tmp_path, monkeypatch, caplog, capfd
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.curate import CurateImagesParams, curate_images_flow
    from pipelines.stages import stage

    env = {name: _fake(name.lower().replace("_", "-") + "-") for name in SECRET_ENV}
    env["PREFECT_API_AUTH_STRING"] = env["ALCM_PREFECT_AUTH_STRING"] = "platform:" + _fake("auth-")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    names = ("access_key", "secret_key", "session_token", "store_key", "store_secret", "password", "token")
    uri = {name: _fake(name + "-") for name in names}
    overrides = [
        "distill_image.train.storage_path=s3://alcm-bucket/runs?region=eu-west-1&access_key="
        f"{uri['access_key']}&secret_key={uri['secret_key']}&session_token={uri['session_token']}",
        f"distill_video.train.storage_path=s3://{uri['store_key']}:{uri['store_secret']}@alcm-bucket/runs",
        f"adapt.train.storage_path=https://alcm:{uri['password']}@storage.example/runs",
        f"evaluate.i3d_path=https://models.example/i3d.pt?token={uri['token']}",
    ]
    needles = {**{f"env {k}": v for k, v in env.items()}, **{f"uri {k}": v for k, v in uri.items()}}

    src, labels = toy_images
    out = tmp_path / "flow-out"
    caplog.set_level(logging.DEBUG)
    _prefect_console_to_this_stderr()
    state = curate_images_flow(
        CurateImagesParams(input_dir=str(src / "parquet"), output_dir=str(out), overrides=overrides), return_state=True
    )
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    captured = capfd.readouterr()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["input"] == len(labels)
    # The job records the settings it received: the training stages' storage (and its credentials) is not among them;
    # how a manifest masks a credential in a setting it does record is tests/unit/test_redact.py's.
    assert set(manifest["config"]) == set(stage("curate_images").sections)

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    run_logs = _run_logs(flow_run_id)
    assert {a.key for a in artifacts} >= {"curate-images-reasons", "curate-images-summary"}
    assert run_logs, "the flow run has no logs in the Prefect API"
    assert all(v in json.dumps(flow_run.parameters) for v in uri.values()), "the parameters are stored as typed"
    assert "kept" in captured.err, "the console shows the run's log (so its check means something)"

    registry_dir = Path(os.environ["ALCM_REGISTRY_DIR"])
    assert list(registry_dir.rglob("manifest.json")), "the output was not recorded in the registry"
    texts = {
        "flow return value": json.dumps(result, default=str),
        "caplog": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
        "prefect run logs": "\n".join(log.message for log in run_logs),
        **{f"artifact {a.key}": json.dumps([a.data, a.description, a.metadata_], default=str) for a in artifacts},
    }
    leaks = {**_files_holding(out, needles), **_files_holding(registry_dir, needles), **_texts_holding(texts, needles)}
    assert not leaks, f"secrets found: {json.dumps(leaks, indent=1)}"


def test_a_flow_that_fails_on_a_bad_value_holding_credentials_logs_none_of_them(
    prefect_harness, monkeypatch, caplog, capfd, tmp_path
):
    """The config error names the bad override, credentials and all; what the run logs and prints is redacted."""
    from flows.curate import CurateImagesParams, curate_images_flow
    from pipelines.config import ConfigError

    env_secret = _fake("aws-secret-")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env_secret)
    needles = {"secret_key": _fake("secret_key-"), "password": _fake("password-"), "env": env_secret}
    bad = (f"distill_image.train.steps=s3://{needles['env']}:{needles['password']}@alcm-bucket/runs"
           f"?secret_key={needles['secret_key']}")  # fmt: skip
    caplog.set_level(logging.DEBUG)
    _prefect_console_to_this_stderr()
    state = curate_images_flow(
        CurateImagesParams(input_dir=str(tmp_path), output_dir=str(tmp_path / "never"), overrides=[bad]),
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigError) and needles["secret_key"] in str(error), "the caller gets its own input"
    captured = capfd.readouterr()
    run_text = "\n".join(log.message for log in _run_logs(state.state_details.flow_run_id))
    assert "distill_image.train.steps" in run_text, f"the run logs do not name the bad key: {run_text!r}"
    assert "s3://***:***@alcm-bucket/runs?secret_key=***" in run_text, "the bad value is shown, redacted"
    assert "distill_image.train.steps" in captured.err, "the console shows the error (so its check means something)"
    texts = {
        "caplog": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "stdout": captured.out,
        "stderr": captured.err,
        "prefect run logs": run_text,
    }
    leaks = _texts_holding(texts, needles)
    assert not leaks, f"secrets found: {json.dumps(leaks, indent=1)}"
