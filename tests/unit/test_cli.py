import json

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_config_show_prints_the_resolved_profile_with_overrides():
    result = runner.invoke(app, ["config", "show", "--profile", "toy", "--set", "curate_images.batch_size=7"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["curate_images"]["batch_size"] == 7


def test_bad_config_key_exits_2_naming_the_key():
    result = runner.invoke(app, ["config", "show", "--set", "curate_images.filterz.min_side=3"])
    assert result.exit_code == 2
    assert "curate_images.filterz" in result.output


def test_curate_refuses_a_missing_input_before_any_flow_runs(tmp_path):
    result = runner.invoke(
        app, ["curate", "images", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_profiles_are_listed():
    result = runner.invoke(app, ["config", "profiles"])
    assert result.exit_code == 0 and {"toy", "sd15"} <= set(result.output.split())


def test_unknown_zoo_part_is_refused():
    result = runner.invoke(app, ["toy", "train-zoo", "--only", "teacherz"])
    assert result.exit_code == 2 and "teacherz" in result.output


def test_zoo_settings_are_checked_against_each_parts_training_config_before_anything_trains():
    result = runner.invoke(app, ["toy", "train-zoo", "--only", "motion-teacher", "--set", "stepz=3"])
    assert result.exit_code == 2 and "--set stepz" in result.output and "steps" in result.output
    result = runner.invoke(app, ["toy", "train-zoo", "--only", "scorers", "--set", "steps=3"])
    assert result.exit_code == 2 and "the scorers part takes no settings" in result.output
    result = runner.invoke(app, ["toy", "train-zoo", "--only", "image-teacher", "--set", "unet_steps"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
    from pipelines.toy_world import zoo_settings

    assert zoo_settings(["image-teacher"], ["unet_steps=1500", "init_from=toyworld/zoo/image_teacher"]) == {
        "unet_steps": 1500, "init_from": "toyworld/zoo/image_teacher"}  # fmt: skip


def test_recaption_refuses_an_unknown_backend_before_any_flow_runs(tmp_path):
    result = runner.invoke(
        app, ["recaption", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--backend", "x"]
    )
    assert result.exit_code == 2 and "transformers or lavis" in result.output


def test_curate_videos_refuses_a_non_empty_output_without_overwrite(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f").write_text("x")
    result = runner.invoke(app, ["curate", "videos", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not empty" in result.output


def test_recaption_bad_generation_setting_names_the_key(tmp_path):
    args = ["recaption", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--set", "captioner.generation.num_beams=0"])
    assert result.exit_code == 2 and "captioner.generation" in result.output and "num_beams" in result.output
