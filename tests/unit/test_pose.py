import json

import numpy as np
import pytest

from models.pose import (
    JOINT_COLOURS,
    JOINTS,
    LIMB_COLOURS,
    LIMBS,
    PoseAnnotator,
    PoseConfig,
    build_pose_annotator,
    default_limb_width,
    parse_pose_json,
    render_pose,
)
from toyworld import dancers

SIZE = 64


@pytest.fixture(scope="module")
def dancer() -> dict:
    (seq,) = dancers.generate_dancer_sequences(0, 1, frames=2, size=SIZE)
    return seq


def toy_json(keypoints: np.ndarray, joints=dancers.JOINTS) -> str:
    """The pose JSON that toyworld.dancers.write_dancers writes for one frame."""
    doc = {
        "joints": list(joints),
        "keypoints": [[round(float(x), 2), round(float(y), 2), int(v)] for x, y, v in keypoints],
        "width": SIZE,
        "height": SIZE,
    }
    return json.dumps(doc)


def segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` (N, 2) to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def test_generated_dancers_carry_the_keys_the_pose_tests_use(dancer):
    assert {"seq", "pattern", "frames", "keypoints", "joints"} <= set(dancer)
    assert dancer["keypoints"].shape == (2, len(JOINTS), 3)
    assert dancer["frames"].shape == (2, SIZE, SIZE, 3)


def test_joints_and_bones_are_the_dancers_openpose_skeleton():
    assert JOINTS == dancers.JOINTS
    index = {name: i for i, name in enumerate(dancers.JOINTS)}
    toy_bones = {frozenset((index[a], index[b])) for a, b in dancers.LIMBS}
    assert len(LIMBS) == 17
    assert {frozenset(bone) for bone in LIMBS} == toy_bones
    assert len(LIMB_COLOURS) == len(LIMBS) and len(JOINT_COLOURS) == len(JOINTS)
    assert len(set(JOINT_COLOURS)) == len(JOINT_COLOURS) and len(set(LIMB_COLOURS)) == len(LIMB_COLOURS)


def test_the_toy_format_parses_to_one_person_and_hidden_joints_stay_present(dancer):
    keypoints = dancer["keypoints"][0].copy()
    keypoints[0, 2] = 1  # nose labelled but hidden
    keypoints[17, 2] = 0  # left ear outside the frame
    (person,) = parse_pose_json(toy_json(keypoints))
    assert person.shape == (18, 3) and person.dtype == np.float32
    np.testing.assert_allclose(person[:, :2], keypoints[:, :2], atol=0.01)
    assert person[0, 2] == 1.0 and person[17, 2] == 0.0 and person[1, 2] == 1.0


def test_the_toy_format_is_reordered_by_joint_name(dancer):
    keypoints = dancer["keypoints"][0]
    order = list(range(len(JOINTS)))[::-1]
    (person,) = parse_pose_json(toy_json(keypoints[order], [dancers.JOINTS[i] for i in order]))
    np.testing.assert_allclose(person[:, :2], keypoints[:, :2], atol=0.01)


def test_openpose_output_parses_to_one_array_per_person():
    flat = [v for j in range(18) for v in (10.0 + j, 20.0 + j, 0.9)]
    flat[-1] = 0.0  # left ear not detected
    text = json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": flat}, {"pose_keypoints_2d": flat}]})
    people = parse_pose_json(text)
    assert len(people) == 2
    assert people[0][3].tolist() == pytest.approx([13.0, 23.0, 0.9])
    assert people[0][17, 2] == 0.0
    assert parse_pose_json(json.dumps({"people": []})) == []


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json {", "not valid JSON"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0, 0.9] * 25}]}), "25 joints"),
        (json.dumps({"people": [{"pose_keypoints_2d": [1.0, 2.0] * 17 + [1.0]}]}), "multiple of 3"),
        (json.dumps({"people": [{"face_keypoints_2d": []}]}), "pose_keypoints_2d"),
        (json.dumps({"keypoints": [[1, 2, 2]] * 17, "joints": list(JOINTS[:17])}), "18 BODY-18 joints"),
        (json.dumps({"bodies": []}), "unrecognised pose JSON"),
        (json.dumps([1, 2, 3]), "unrecognised pose JSON"),
        # hostile: nesting deeper than Python's stack, joint names of mixed types, numbers past float range
        ("[" * 100_000 + "]" * 100_000, "not valid JSON: RecursionError"),
        ('{"keypoints": ' + "[" * 50_000 + "]" * 50_000 + "}", "not valid JSON: RecursionError"),
        (json.dumps({"keypoints": [[1, 2, 2]] * 18, "joints": [1, *JOINTS[1:]]}), "must be a string, found int"),
        (json.dumps({"keypoints": [[1, 2, 2]] * 18, "joints": [{"a": 1}] * 18}), "must be a string, found dict"),
        ('{"people": [{"pose_keypoints_2d": [' + ", ".join(["1e999"] * 54) + "]}]}", "NaN or infinite"),
    ],
)
def test_anything_else_is_refused_with_a_clear_message(text, match):
    with pytest.raises(ValueError, match=match):
        parse_pose_json(text)


def test_bones_are_drawn_in_their_colours_and_the_background_stays_black(dancer):
    keypoints = dancer["keypoints"][0]
    (person,) = parse_pose_json(toy_json(keypoints))
    pose_map = render_pose([person], SIZE, SIZE)
    assert pose_map.shape == (SIZE, SIZE, 3) and pose_map.dtype == np.uint8
    width = default_limb_width(SIZE, SIZE)
    xy = person[:, :2].astype(np.float64)
    checked = 0
    for k, (a, b) in enumerate(LIMBS):
        mid = (xy[a] + xy[b]) / 2
        # only a midpoint clear of every other bone and joint (their half width plus a pixel's half diagonal) is
        # guaranteed to show the bone's own colour
        clear = width / 2 + 1.5
        others = [segment_distance(mid[None], xy[c], xy[d])[0] for m, (c, d) in enumerate(LIMBS) if m != k]
        if min(others) <= clear or np.linalg.norm(xy - mid, axis=1).min() <= clear:
            continue
        x, y = np.rint(mid).astype(int)
        assert tuple(pose_map[y, x]) == LIMB_COLOURS[k], (JOINTS[a], JOINTS[b])
        checked += 1
    assert checked >= 6
    grid = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), axis=-1).reshape(-1, 2).astype(np.float64)
    near = np.min([segment_distance(grid, xy[a], xy[b]) for a, b in LIMBS], axis=0) <= width + 1
    far = pose_map.reshape(-1, 3)[~near]
    assert near.mean() < 0.5 and (far == 0).all()


def test_low_confidence_joints_and_their_bones_are_skipped(dancer):
    (person,) = parse_pose_json(toy_json(dancer["keypoints"][0]))
    person[:, 2] = 0.01
    assert not render_pose([person], SIZE, SIZE).any()
    assert render_pose([person], SIZE, SIZE, min_confidence=0.0).any()


def test_a_transform_that_halves_the_size_moves_the_neck_to_the_halved_position(dancer):
    class Half:
        def apply(self, xy: np.ndarray) -> np.ndarray:
            return xy * 0.5

    (person,) = parse_pose_json(toy_json(dancer["keypoints"][1]))
    half = render_pose([person], SIZE // 2, SIZE // 2, transform=Half())
    x, y = np.rint(person[1, :2] * 0.5).astype(int)
    palette = np.array([*JOINT_COLOURS, *LIMB_COLOURS, (0, 0, 0)], dtype=np.float64)
    nearest = np.argmin(np.linalg.norm(palette - half[y, x].astype(np.float64), axis=1))
    assert nearest == JOINTS.index("neck")
    moved = person.copy()
    moved[:, :2] *= 0.5
    np.testing.assert_array_equal(half, render_pose([moved], SIZE // 2, SIZE // 2))


def test_a_person_array_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"people\[0\]"):
        render_pose([np.zeros((17, 3))], SIZE, SIZE)


@pytest.mark.parametrize("source", ["keypoints", "none"])
def test_dataset_keypoints_or_no_control_build_no_annotator(source):
    assert build_pose_annotator(PoseConfig(source=source)) is None


def test_an_annotator_source_without_a_class_explains_that_none_ships():
    with pytest.raises(ValueError, match=r"video\.control\.annotator.*no pose model ships.*PoseAnnotator"):
        build_pose_annotator(PoseConfig(source="annotator"), key="video.control")


def test_missing_weights_are_reported_with_the_key_and_the_path(tmp_path):
    cfg = PoseConfig(source="annotator", annotator="json:JSONDecoder")
    with pytest.raises(FileNotFoundError, match=r"pose\.weights is not set"):
        build_pose_annotator(cfg)
    missing = tmp_path / "pose.safetensors"
    cfg = PoseConfig(source="annotator", annotator="json:JSONDecoder", weights=str(missing))
    with pytest.raises(FileNotFoundError, match=rf"pose\.weights=.*{missing.name}"):
        build_pose_annotator(cfg)


def test_an_unimportable_annotator_is_reported_with_the_key(tmp_path):
    cfg = PoseConfig(source="annotator", annotator="no_such_pkg.pose:Model", weights=str(tmp_path))
    with pytest.raises(ImportError, match=r"pose\.annotator='no_such_pkg\.pose:Model'"):
        build_pose_annotator(cfg)


class FakeAnnotator:
    """A stand-in pose model for the build test: every frame has one person with every joint at the origin."""

    def __init__(self, weights: str):
        self.weights = weights

    def __call__(self, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[np.zeros((18, 3), dtype=np.float32)] for _ in frames]


def test_a_configured_annotator_is_imported_and_built_with_its_weights(tmp_path):
    weights = tmp_path / "pose.pt"
    weights.write_bytes(b"w")
    cfg = PoseConfig(source="annotator", annotator=f"{__name__}:FakeAnnotator", weights=str(weights))
    annotator = build_pose_annotator(cfg)
    assert isinstance(annotator, PoseAnnotator) and annotator.weights == str(weights)
    (people,) = annotator([np.zeros((8, 8, 3), dtype=np.uint8)])
    assert people[0].shape == (18, 3)


@pytest.mark.parametrize(
    "field, value",
    [("source", "openpose"), ("annotator", "pkg.module.Class"), ("weights", "")],
)
def test_an_invalid_pose_config_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        PoseConfig(**{field: value})
