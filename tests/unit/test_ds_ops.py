"""DeepSpeed's ops come from the environment's prebuilt folder (``make install``), unless the operator chose one."""

from __future__ import annotations

import os
import sys

from pipelines import ds_ops


def test_training_processes_use_the_environments_prebuilt_ops_unless_a_folder_is_chosen(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv(ds_ops.ENV_KEY, raising=False)
    assert ds_ops.use_prebuilt() is None  # nothing prebuilt: DeepSpeed's default
    assert ds_ops.ENV_KEY not in os.environ

    (tmp_path / "torch_extensions").mkdir()
    assert ds_ops.use_prebuilt() == str(tmp_path / "torch_extensions")

    monkeypatch.setenv(ds_ops.ENV_KEY, "/opt/chosen")
    assert ds_ops.use_prebuilt() == "/opt/chosen"
