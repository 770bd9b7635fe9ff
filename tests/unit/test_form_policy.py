"""What a deployment run (UI form, schedule, event) may ask for (flows/form_policy.py); the operator's CLI runs are
not restricted. The served end to end: tests/integration/test_serve_ui.py."""

from __future__ import annotations

import pytest

import flows.form_policy as fp
from flows.curate import CurateImagesParams
from flows.distill import AdaptParams
from flows.evaluate import PromoteParams
from flows.retrain import RetrainParams


@pytest.fixture
def deployment_run(tmp_path, monkeypatch):
    data, work = tmp_path / "raw", tmp_path / "work"
    (data / "images").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setattr(fp, "from_deployment", lambda: True)
    monkeypatch.setenv(fp.ENV, fp.served_roots(str(data), str(work))[fp.ENV])
    return data, work


def curate(data, work, **kw):
    return CurateImagesParams(**{"input_dir": str(data / "images"), "output_dir": str(work / "ui" / "x"), **kw})


def test_a_form_inside_the_served_roots_with_ordinary_overrides_passes(deployment_run):
    data, work = deployment_run
    p = curate(data, work, overrides=["curate_images.filters.min_side=48", "curate_images.batch_size=64",
                                      f"distill_image.cache_dir={work / 'cache'}"], overwrite=True)  # fmt: skip
    assert p.output_dir.endswith("/ui/x")
    curate(data, work, input_dir=str(work / "curated-images"))  # an earlier output as input


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"output_dir": "/etc/alcm-out"}, "output_dir='/etc/alcm-out' is outside the served work directory"),
        ({"input_dir": "/etc"}, "input_dir='/etc' is outside the served data root"),
        ({"output_dir": "{work}/../../escape"}, "is outside the served work directory"),
        ({"output_dir": "{data}/images/out"}, "outside the served work directory"),  # inputs' root is read-only
        ({"profile": "/tmp/evil.yaml"}, "may name a shipped profile"),
        ({"overrides": ["ray.address=ray://attacker:10001"]}, "ray.address (ray.*) can only be set in the operator"),
        ({"overrides": ["captioner.lavis.python_path=/tmp/x"]}, "captioner.lavis.python_path"),
        ({"overrides": ["recaption.control.annotator=pkg.mod:fn"]}, "recaption.control.annotator"),
        ({"overrides": ["evaluate.i3d_path=/tmp/i3d.pt"]}, "evaluate.i3d_path"),
        ({"overrides": ["promotion.min_fvd_gain=-1"]}, "promotion.min_fvd_gain (promotion.*)"),
        ({"overrides": ["teacher.pretrained_dir=/tmp/t"]}, "teacher.pretrained_dir"),
        ({"overrides": ["distill_image.train.storage_path=/tmp/r"]}, "storage_path=/tmp/r is outside the served work"),
        ({"overrides": ["distill_video.motion_adapter_dir=/tmp/m"]}, "motion_adapter_dir (*_dir)"),
        ({"overrides": ["scorers.clip.weights=/tmp/c"]}, "scorers.clip.weights (*weights)"),
        ({"overrides": ["pose.annotator=pkg:fn"]}, "pose.annotator (*annotator*)"),
        ({"overrides": [" captioner.weights = /tmp/w"]}, "captioner.weights"),
    ],
)
def test_a_form_reaching_outside_the_platform_is_refused_naming_the_parameter(deployment_run, change, words):
    data, work = deployment_run
    change = {k: v.format(work=work, data=data) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises(fp.FormRefused, match=words.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        curate(data, work, **change)


def test_a_symlink_inside_the_work_directory_that_points_outside_is_outside(deployment_run, tmp_path):
    data, work = deployment_run
    (tmp_path / "elsewhere").mkdir()
    (work / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(fp.FormRefused, match="outside the served work directory"):
        curate(data, work, output_dir=str(work / "link" / "out"))


def test_every_path_parameter_of_the_other_flows_is_checked(deployment_run):
    data, work = deployment_run
    with pytest.raises(fp.FormRefused, match="control_data='/srv/other'"):
        AdaptParams(input_dir=str(work / "distilled-video"), control_data="/srv/other", output_dir=str(work / "o"))
    with pytest.raises(fp.FormRefused, match="work_dir='/tmp' is outside"):
        RetrainParams(images=str(data / "images"), videos=str(data), dancers=str(data), work_dir="/tmp")
    with pytest.raises(fp.FormRefused, match="promotion"):
        PromoteParams(checkpoint="toy@candidate", overrides=["promotion.metric=clipsim"])


def test_a_deployment_run_without_the_served_roots_is_refused(deployment_run, monkeypatch):
    data, work = deployment_run
    monkeypatch.delenv(fp.ENV)
    with pytest.raises(fp.FormRefused, match="no ALCM_FORM_ROOTS"):
        curate(data, work)


def test_the_operators_own_runs_are_not_restricted(tmp_path, monkeypatch):
    monkeypatch.delenv(fp.ENV, raising=False)
    p = CurateImagesParams(input_dir="/anywhere", output_dir="/else", profile=str(tmp_path / "mine.yaml"),
                           overrides=["ray.address=auto"])  # fmt: skip
    assert p.output_dir == "/else"


def test_object_store_roots_confine_by_prefix(monkeypatch):
    monkeypatch.setattr(fp, "from_deployment", lambda: True)
    monkeypatch.setenv(fp.ENV, fp.served_roots("s3://alcm-data/raw", "s3://alcm-data")[fp.ENV])
    ok = CurateImagesParams(input_dir="s3://alcm-data/raw/images", output_dir="s3://alcm-data/curated/v1",
                            overrides=["distill_image.cache_dir=s3://alcm-data/cache"])  # fmt: skip
    assert ok.output_dir == "s3://alcm-data/curated/v1"
    for bad in ("s3://alcm-data-evil/x", "s3://other/x", "s3://alcm-data/../other/x", "/local/out"):
        with pytest.raises(fp.FormRefused, match="outside the served work directory"):
            CurateImagesParams(input_dir="s3://alcm-data/raw/images", output_dir=bad)
