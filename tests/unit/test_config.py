import json

import pytest

from pipelines.config import (
    PROJECT_ROOT,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    shipped_profiles,
    to_dict,
)


@pytest.mark.parametrize("profile", shipped_profiles())
def test_every_shipped_profile_builds_and_round_trips(profile):
    cfg = load_config(profile)
    assert isinstance(cfg, Config)
    assert cfg.profile == profile
    again = config_from_dict(to_dict(cfg))
    assert again == cfg
    json.dumps(to_dict(cfg))


def test_both_profiles_are_shipped():
    assert {"toy", "sd15"} <= set(shipped_profiles())


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config("toy", ["curate_images.filters.min_side=32", "curate_images.dedup.near=false", "ray.num_cpus=1"])
    assert cfg.curate_images.filters.min_side == 32
    assert cfg.curate_images.dedup.near is False
    assert cfg.ray.num_cpus == 1


def test_config_is_frozen():
    cfg = load_config("toy")
    with pytest.raises(AttributeError):
        cfg.curate_images.batch_size = 3  # type: ignore[misc]


def test_unknown_key_names_the_key_and_the_valid_keys():
    with pytest.raises(ConfigError, match=r"curate_images\.filters\.min_sid'.*min_side"):
        load_config("toy", ["curate_images.filters.min_sid=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"curate_images\.batch_size='many': expected an integer"):
        load_config("toy", ["curate_images.batch_size=many"])


def test_component_validation_is_prefixed_with_the_dotted_key():
    with pytest.raises(ConfigError, match=r"curate_images\.filters\.watermark_max=1\.5: must be a probability"):
        load_config("toy", ["curate_images.filters.watermark_max=1.5"])


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped profiles: .*toy"):
        load_config("nope")


def test_bad_override_syntax_is_explained():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("toy", ["curate_images.batch_size"])


def test_relative_weight_paths_resolve_against_the_project_root():
    cfg = load_config("toy")
    assert cfg.scorers.clip.weights == str(PROJECT_ROOT / "toyworld/zoo/scorers/clip.safetensors")


def test_apply_overrides_does_not_mutate_its_input():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.b=2", "a.c.d=[1, 2]"])
    assert data == {"a": {"b": 1}}
    assert out == {"a": {"b": 2, "c": {"d": [1, 2]}}}


def test_missing_required_key_is_named(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("profile: x\n")
    with pytest.raises(ConfigError, match="missing key 'data_dir'"):
        load_config(str(p))


def test_an_old_section_name_in_an_override_still_loads_and_warns_with_the_new_key(caplog):
    cfg = load_config("toy", ["curation.filters.min_side=32", "curation.decode.max_bytes=1000",
                              "video_curation.batch_size=3", "recaption.control.source=none"])  # fmt: skip
    assert cfg.curate_images.filters.min_side == 32 and cfg.decode.max_bytes == 1000
    assert cfg.curate_videos.batch_size == 3 and cfg.pose.source == "none"
    assert "curation.filters.min_side was renamed curate_images.filters.min_side" in caplog.text
    assert "recaption.control.source was renamed pose.source" in caplog.text


def test_a_profile_written_with_the_old_section_names_loads_as_the_new_one(tmp_path):
    import yaml

    from pipelines.config import PROJECT_ROOT

    data = yaml.safe_load((PROJECT_ROOT / "configs" / "toy.yaml").read_text())
    data["curation"] = data.pop("curate_images")
    data["curation"]["decode"] = data.pop("decode")
    data["video_curation"] = data.pop("curate_videos")
    data["recaption"]["control"] = data.pop("pose")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(data))
    assert load_config(str(old)) == load_config("toy")
    data["decode"] = data["curation"]["decode"]
    old.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="both curation.decode and its new name decode are set"):
        load_config(str(old))
