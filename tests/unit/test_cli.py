import json

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_config_show_prints_the_resolved_profile_with_overrides():
    result = runner.invoke(app, ["config", "show", "--profile", "toy", "--set", "curation.batch_size=7"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["curation"]["batch_size"] == 7


def test_bad_config_key_exits_2_naming_the_key():
    result = runner.invoke(app, ["config", "show", "--set", "curation.filterz.min_side=3"])
    assert result.exit_code == 2
    assert "curation.filterz" in result.output


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
