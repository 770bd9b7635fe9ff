"""Shared test set-up: offline environment, one local Ray and one Prefect harness per session, a small toy world."""

from __future__ import annotations

import os
import shutil
import tempfile

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_key, _value)
os.environ.pop("RAY_ADDRESS", None)
# Flows record their outputs in the registry: the test session gets its own embedded store, never the project's.
os.environ.pop("MLFLOW_TRACKING_URI", None)
_REGISTRY_DIR = os.environ["ALCM_REGISTRY_DIR"] = tempfile.mkdtemp(prefix="alcm-test-registry-")


def pytest_unconfigure(config) -> None:
    """The session's registry goes with the session."""
    shutil.rmtree(_REGISTRY_DIR, ignore_errors=True)
