"""Tests for neverstop/schema.py: names, validators and the RLDS features."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neverstop import schema


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _example_episode(num_steps: int = 3, seed: int = 0, first_image=None) -> dict:
    """A tiny episode in the form a TFDS builder yields it."""
    rng = np.random.default_rng(seed)
    steps = []
    for index in range(num_steps):
        last = index == num_steps - 1
        steps.append(
            {
                schema.OBSERVATION: {
                    schema.IMAGE: rng.integers(0, 256, schema.IMAGE_SHAPE, dtype=np.uint8),
                    schema.GRIPPER_CLOSED: np.float32(last),
                    schema.HEIGHT_TO_BOTTOM: np.float32(0.3 - 0.05 * index),
                },
                schema.ACTION: rng.uniform(-1, 1, schema.ACTION_DIM).astype(np.float32),
                schema.REWARD: np.float32(last),
                schema.DISCOUNT: np.float32(1.0),
                schema.IS_FIRST: index == 0,
                schema.IS_LAST: last,
                schema.IS_TERMINAL: last,
            }
        )
    if first_image is not None:
        steps[0][schema.OBSERVATION][schema.IMAGE] = first_image
    metadata = {
        schema.EPISODE_ID: f"sim/base/{seed}",
        schema.TASK: "base",
        schema.SOURCE: "sim",
        schema.ROBOT: schema.robot_id("base"),
        schema.POLICY: "scripted",
        schema.SUCCESS: True,
        schema.SEED: seed,
        schema.FILE_PATH: f"raw/base/{seed:06d}.episode",
    }
    return {schema.STEPS: steps, schema.EPISODE_METADATA: metadata}


# --- Names -----------------------------------------------------------------


def test_tasks_are_the_six_worlds():
    assert schema.TASKS == (
        "base",
        "checkerboard",
        "harsh_lighting",
        "extended_gripper",
        "offset_gripper",
        "transparent_bottles",
    )
    assert schema.CHALLENGE_TASKS == schema.TASKS[1:]
    # Every challenge task is either visual or morphological, never both.
    assert sorted(schema.VISUAL_TASKS + schema.MORPHOLOGY_TASKS) == sorted(schema.CHALLENGE_TASKS)


def test_field_names_match_the_design():
    assert schema.OBSERVATION_KEYS == ("image", "gripper_closed", "height_to_bottom")
    assert schema.STEP_KEYS == (
        "observation",
        "action",
        "reward",
        "discount",
        "is_first",
        "is_last",
        "is_terminal",
    )
    assert schema.METADATA_KEYS == (
        "episode_id",
        "task",
        "source",
        "robot",
        "policy",
        "success",
        "seed",
        "file_path",
    )
    assert (schema.STEPS, schema.EPISODE_METADATA) == ("steps", "episode_metadata")
    assert schema.ACTION_NAMES == ("dx", "dy", "dz", "dyaw", "close")
    assert schema.ACTION_SPEC.shape == (schema.ACTION_DIM,) == (5,)
    assert schema.OBSERVATION_SPEC.image.shape == schema.IMAGE_SHAPE == (64, 64, 3)


@pytest.mark.parametrize(
    "task, expected",
    [
        ("base", "kuka_iiwa/standard"),
        ("checkerboard", "kuka_iiwa/standard"),
        ("harsh_lighting", "kuka_iiwa/standard"),
        ("transparent_bottles", "kuka_iiwa/standard"),
        ("extended_gripper", "kuka_iiwa/extended_fingers"),
        ("offset_gripper", "kuka_iiwa/offset_10cm"),
    ],
)
def test_robot_id(task, expected):
    assert schema.robot_id(task) == expected


def test_import_does_not_load_tensorflow():
    # Floor 1: the simulator and the raw-log writer import the schema and
    # must not pay for TensorFlow.
    code = (
        "import sys, neverstop.schema; "
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --- Validators -------------------------------------------------------------


def test_validate_task_accepts_every_task():
    for task in schema.TASKS:
        assert schema.validate_task(task) == task


def test_unknown_task_lists_the_tasks_and_suggests():
    with pytest.raises(ValueError) as error:
        schema.validate_task("chekerboard")
    message = str(error.value)
    assert message.startswith("unknown task 'chekerboard'; expected one of base, checkerboard,")
    for task in schema.TASKS:
        assert task in message
    assert "did you mean 'checkerboard'?" in message


def test_unknown_task_without_close_match_has_no_hint():
    with pytest.raises(ValueError, match="unknown task 'foo'") as error:
        schema.validate_task("foo")
    assert "did you mean" not in str(error.value)


def test_robot_id_rejects_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'kitchen'"):
        schema.robot_id("kitchen")


def test_validate_action_returns_float32_and_clips():
    action = schema.validate_action([0.5, -2.0, 3.0, 0.0, 1e300])
    assert action.dtype == np.float32
    np.testing.assert_array_equal(action, np.array([0.5, -1.0, 1.0, 0.0, 1.0], np.float32))


def test_validate_action_names_the_shape():
    with pytest.raises(ValueError) as error:
        schema.validate_action(np.zeros(4))
    assert str(error.value) == "action has shape (4,), expected (5,) [dx, dy, dz, dyaw, close]"


@pytest.mark.parametrize("bad, shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_validate_action_names_the_non_finite_component(bad, shown):
    action = [0.0, 0.0, bad, 0.0, 0.0]
    with pytest.raises(ValueError) as error:
        schema.validate_action(action, where="step 3 of episode 12 of logs/a.bag")
    assert str(error.value) == (
        f"step 3 of episode 12 of logs/a.bag: action contains {shown} at index 2 (dz); "
        "expected finite values in [-1, 1]"
    )


def test_validate_action_rejects_non_numbers():
    with pytest.raises(ValueError, match=r"not numeric.*expected float32 \(5,\)"):
        schema.validate_action(["a", "b", "c", "d", "e"])


def _observation(**overrides):
    observation = {
        schema.IMAGE: np.zeros(schema.IMAGE_SHAPE, np.uint8),
        schema.GRIPPER_CLOSED: 1,
        schema.HEIGHT_TO_BOTTOM: 0.25,
    }
    observation.update(overrides)
    return observation


def test_validate_observation_casts_scalars_to_float32():
    observation = schema.validate_observation(_observation())
    assert observation[schema.GRIPPER_CLOSED] == np.float32(1.0)
    assert observation[schema.GRIPPER_CLOSED].dtype == np.float32
    assert observation[schema.HEIGHT_TO_BOTTOM] == np.float32(0.25)
    assert observation[schema.HEIGHT_TO_BOTTOM].dtype == np.float32
    assert observation[schema.IMAGE].dtype == np.uint8


def test_validate_observation_names_missing_and_unexpected_keys():
    observation = _observation(depth=np.zeros(3))
    del observation[schema.IMAGE]
    with pytest.raises(ValueError) as error:
        schema.validate_observation(observation)
    assert str(error.value) == (
        "observation has missing image; unexpected depth; "
        "expected keys image, gripper_closed, height_to_bottom"
    )


def test_validate_observation_rejects_float_image():
    image = np.zeros(schema.IMAGE_SHAPE, np.float32)
    with pytest.raises(ValueError) as error:
        schema.validate_observation(_observation(image=image), where="episode 4")
    assert str(error.value) == (
        "episode 4: observation image has shape (64, 64, 3) and dtype float32, "
        "expected (64, 64, 3) uint8"
    )


def test_validate_observation_rejects_non_finite_scalar():
    with pytest.raises(ValueError, match="observation height_to_bottom is nan; expected a finite"):
        schema.validate_observation(_observation(height_to_bottom=float("nan")))


# --- TFDS features -------------------------------------------------------------


def test_every_feature_is_documented():
    features = schema.episode_features()
    documented = {doc.name: doc.description for doc in features.catalog_documentation() if doc.name}
    assert "steps/observation/image" in documented
    assert "episode_metadata/seed" in documented
    assert all(documented.values()), [name for name, desc in documented.items() if not desc]


def test_unknown_image_encoding_is_rejected():
    with pytest.raises(ValueError) as error:
        schema.episode_features("jpg")
    assert str(error.value) == (
        "unknown image_encoding 'jpg'; expected one of png, jpeg (did you mean 'jpeg'?)"
    )


def test_png_episode_round_trips_exactly():
    import tensorflow_datasets as tfds

    features = schema.episode_features("png")
    episode = _example_episode(num_steps=3, seed=1)
    decoded = features.deserialize_example(features.serialize_example(episode))
    steps = list(tfds.as_numpy(decoded[schema.STEPS]))
    metadata = tfds.as_numpy(decoded[schema.EPISODE_METADATA])

    assert len(steps) == 3
    for written, read in zip(episode[schema.STEPS], steps):
        np.testing.assert_array_equal(read[schema.ACTION], written[schema.ACTION])
        assert read[schema.ACTION].dtype == np.float32
        np.testing.assert_array_equal(
            read[schema.OBSERVATION][schema.IMAGE], written[schema.OBSERVATION][schema.IMAGE]
        )
        for key in (schema.GRIPPER_CLOSED, schema.HEIGHT_TO_BOTTOM):
            assert read[schema.OBSERVATION][key] == written[schema.OBSERVATION][key]
        for key in (
            schema.REWARD,
            schema.DISCOUNT,
            schema.IS_FIRST,
            schema.IS_LAST,
            schema.IS_TERMINAL,
        ):
            assert read[key] == written[key], key
    assert [step[schema.IS_FIRST] for step in steps] == [True, False, False]
    assert [step[schema.IS_LAST] for step in steps] == [False, False, True]

    written_metadata = episode[schema.EPISODE_METADATA]
    for key in (
        schema.EPISODE_ID,
        schema.TASK,
        schema.SOURCE,
        schema.ROBOT,
        schema.POLICY,
        schema.FILE_PATH,
    ):
        assert metadata[key].decode() == written_metadata[key], key
    assert metadata[schema.SUCCESS] == np.True_
    assert metadata[schema.SEED] == 1 and metadata[schema.SEED].dtype == np.int64


def test_encoded_image_bytes_pass_through_unchanged():
    # Raw logs store images already encoded; ingestion must not re-encode them.
    import tensorflow_datasets as tfds

    image = np.random.default_rng(2).integers(0, 256, schema.IMAGE_SHAPE, dtype=np.uint8)
    png = _png_bytes(image)
    features = schema.episode_features("png")
    serialized = features.serialize_example(_example_episode(first_image=png))

    skip = {schema.STEPS: {schema.OBSERVATION: {schema.IMAGE: tfds.decode.SkipDecoding()}}}
    raw = features.deserialize_example_np(serialized, decoders=skip)
    assert raw[schema.STEPS][0][schema.OBSERVATION][schema.IMAGE] == png

    decoded = features.deserialize_example_np(serialized)
    first_step = decoded[schema.STEPS][0]
    np.testing.assert_array_equal(first_step[schema.OBSERVATION][schema.IMAGE], image)


def test_jpeg_episode_round_trips_within_compression_error():
    import tensorflow_datasets as tfds

    # A smooth gradient: JPEG's error on it is small, unlike on noise.
    ramp = np.linspace(0, 255, schema.IMAGE_SIZE, dtype=np.float32)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0), axis=-1)
    image = image.astype(np.uint8)
    features = schema.episode_features("jpeg")
    episode = _example_episode(num_steps=1, first_image=image)
    decoded = features.deserialize_example(features.serialize_example(episode))
    (step,) = tfds.as_numpy(decoded[schema.STEPS])

    read = step[schema.OBSERVATION][schema.IMAGE]
    assert read.shape == schema.IMAGE_SHAPE and read.dtype == np.uint8
    assert np.abs(read.astype(int) - image.astype(int)).mean() < 3.0
    np.testing.assert_array_equal(step[schema.ACTION], episode[schema.STEPS][0][schema.ACTION])


def test_features_survive_json_round_trip():
    # Datasets store their features as JSON; a reader rebuilds them from it.
    import tensorflow_datasets as tfds

    features = schema.episode_features("jpeg")
    restored = tfds.features.FeatureConnector.from_json(features.to_json())
    assert restored.get_tensor_info() == features.get_tensor_info()
    image = restored[schema.STEPS][schema.OBSERVATION][schema.IMAGE]
    assert image.encoding_format == "jpeg"
    assert restored[schema.STEPS][schema.ACTION].doc.desc == schema.ACTION_SPEC.doc
