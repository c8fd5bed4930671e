"""Tests for neverstop/rawlog.py: the .nsep episode file, its reader, writer and checks."""

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from neverstop import rawlog
from neverstop import schema

NUM_ACTIONS = 4
EPISODE_ID = "sim-base-scripted-s7-000003"


def _observations(seed: int, count: int, size: int = schema.IMAGE_SIZE):
    rng = np.random.default_rng(seed)
    return [
        {
            schema.IMAGE: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            schema.GRIPPER_CLOSED: np.float32(t == count - 1),
            schema.HEIGHT_TO_BOTTOM: np.float32(rng.uniform(0.0, 0.3)),
        }
        for t in range(count)
    ]


def _actions(seed: int, count: int):
    rng = np.random.default_rng([seed, 1])
    return [rng.uniform(-1.0, 1.0, schema.ACTION_DIM).astype(np.float32) for _ in range(count)]


def _metadata(episode_id: str = EPISODE_ID) -> dict:
    return {
        schema.EPISODE_ID: episode_id,
        schema.TASK: "base",
        schema.SOURCE: schema.SOURCE_SIM,
        schema.ROBOT: schema.ROBOT_STANDARD,
        schema.POLICY: "scripted",
        schema.SUCCESS: True,
        schema.SEED: 123456789,
    }


def _episode(seed: int = 0, image_encoding: str = "png", episode_id: str = EPISODE_ID):
    observations = _observations(seed, NUM_ACTIONS + 1)
    rewards = [0.0] * (NUM_ACTIONS - 1) + [1.0]
    provenance = {"collection_seed": 7, "index": 3}
    episode = rawlog.from_rollout(
        observations,
        _actions(seed, NUM_ACTIONS),
        rewards,
        _metadata(episode_id),
        image_encoding,
        provenance,
    )
    return episode, observations


def _decode(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


def _write_unchecked(path, episode) -> str:
    """Writes the bytes of an episode without validating it (as a buggy writer would)."""
    path.write_bytes(rawlog.to_bytes(episode))
    return str(path)


def _header_end(data: bytes) -> int:
    _, _, length = struct.unpack("<4sHI", data[:10])
    return 10 + length


# --- Round trip ----------------------------------------------------------------


def test_write_then_read_returns_the_same_episode(tmp_path):
    episode, observations = _episode()
    path = rawlog.write_episode(str(tmp_path), episode)
    assert path == str(tmp_path / (EPISODE_ID + rawlog.EXTENSION))

    read = rawlog.read_episode(path)
    assert set(read.steps) == set(episode.steps)
    for name, array in episode.steps.items():
        assert read.steps[name].dtype == array.dtype, name
        np.testing.assert_array_equal(read.steps[name], array, err_msg=name)
    assert read.images == episode.images
    for image, observation in zip(read.images, observations):
        np.testing.assert_array_equal(_decode(image), observation[schema.IMAGE])
    np.testing.assert_array_equal(
        read.steps[schema.HEIGHT_TO_BOTTOM],
        [o[schema.HEIGHT_TO_BOTTOM] for o in observations],
    )
    assert read.metadata == dict(_metadata(), **{schema.FILE_PATH: path})
    assert read.provenance == {"collection_seed": 7, "index": 3}
    assert read.image_encoding == "png"
    assert read.num_steps == NUM_ACTIONS + 1
    assert read.episode_id == EPISODE_ID


def test_jpeg_episode_round_trips(tmp_path):
    episode, _ = _episode(image_encoding="jpeg")
    read = rawlog.read_episode(rawlog.write_episode(str(tmp_path), episode))
    assert read.image_encoding == "jpeg"
    assert read.images == episode.images
    assert all(image[:2] == b"\xff\xd8" for image in read.images)


def test_to_bytes_is_a_pure_function_of_the_episode(tmp_path):
    episode, _ = _episode(seed=5)
    first = rawlog.to_bytes(episode)
    assert rawlog.to_bytes(episode) == first
    # An equal episode built separately, and one read back from disk (which
    # carries file_path), serialise to the same bytes.
    assert rawlog.to_bytes(_episode(seed=5)[0]) == first
    path = rawlog.write_episode(str(tmp_path), episode)
    assert (tmp_path / os.path.basename(path)).read_bytes() == first
    assert rawlog.to_bytes(rawlog.read_episode(path)) == first
    assert rawlog.to_bytes(_episode(seed=6)[0]) != first


def test_from_rollout_follows_the_rlds_step_convention():
    episode, _ = _episode()
    steps = episode.steps
    n = NUM_ACTIONS + 1
    assert episode.num_steps == n
    assert len(episode.images) == n
    assert steps[schema.ACTION].shape == (n, schema.ACTION_DIM)
    np.testing.assert_array_equal(steps[schema.ACTION][:-1], np.stack(_actions(0, NUM_ACTIONS)))
    np.testing.assert_array_equal(steps[schema.ACTION][-1], np.zeros(schema.ACTION_DIM))
    np.testing.assert_array_equal(steps[schema.REWARD], [0.0, 0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(steps[schema.DISCOUNT], [1.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(steps[schema.IS_FIRST], [True, False, False, False, False])
    np.testing.assert_array_equal(steps[schema.IS_LAST], [False, False, False, False, True])
    np.testing.assert_array_equal(steps[schema.IS_TERMINAL], [False, False, False, False, True])
    for name in (schema.GRIPPER_CLOSED, schema.HEIGHT_TO_BOTTOM, schema.REWARD, schema.DISCOUNT):
        assert steps[name].dtype == np.float32, name


def test_from_rollout_without_a_terminal_leaves_is_terminal_unset():
    observations = _observations(0, 3)
    episode = rawlog.from_rollout(
        observations, _actions(0, 2), [0.0, 0.0], _metadata(), terminal=False
    )
    np.testing.assert_array_equal(episode.steps[schema.IS_LAST], [False, False, True])
    assert not episode.steps[schema.IS_TERMINAL].any()


def test_from_rollout_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"T \+ 1 observations and T rewards for T = 4 actions"):
        rawlog.from_rollout(_observations(0, 4), _actions(0, 4), [0.0] * 4, _metadata())


def test_read_header_returns_metadata_without_reading_the_payload(tmp_path):
    episode, _ = _episode()
    path = rawlog.write_episode(str(tmp_path), episode)
    data = bytearray(open(path, "rb").read())
    data[-20] ^= 0xFF  # corrupt the payload: the full reader must refuse it
    with open(path, "wb") as f:
        f.write(data)

    header = rawlog.read_header(path)
    assert header["metadata"] == _metadata()
    assert schema.FILE_PATH not in header["metadata"]
    assert header["num_steps"] == NUM_ACTIONS + 1
    assert header["schema_version"] == schema.SCHEMA_VERSION
    assert header["image_encoding"] == "png"
    assert [a["name"] for a in header["arrays"]][:3] == [
        schema.GRIPPER_CLOSED,
        schema.HEIGHT_TO_BOTTOM,
        schema.ACTION,
    ]
    with pytest.raises(rawlog.RawLogError, match="checksum"):
        rawlog.read_episode(path)


# --- Errors name the file ------------------------------------------------------


@pytest.fixture
def written(tmp_path):
    episode, _ = _episode()
    path = rawlog.write_episode(str(tmp_path), episode)
    with open(path, "rb") as f:
        return path, f.read()


@pytest.mark.parametrize("where", ["empty", "magic", "preamble", "header", "payload", "crc"])
def test_truncated_file_is_an_error_naming_the_file(written, where):
    path, data = written
    cut = {
        "empty": 0,
        "magic": 3,
        "preamble": 10,
        "header": _header_end(data) - 5,
        "payload": _header_end(data) + 17,
        "crc": len(data) - 1,
    }[where]
    with open(path, "wb") as f:
        f.write(data[:cut])
    with pytest.raises(rawlog.RawLogError, match="truncated|checksum") as error:
        rawlog.read_episode(path)
    assert str(error.value).startswith(path + ": ")


@pytest.mark.parametrize("cut", [0, 7, 30])
def test_read_header_of_a_truncated_file_is_an_error_naming_the_file(written, cut):
    path, data = written
    with open(path, "wb") as f:
        f.write(data[:cut])
    with pytest.raises(rawlog.RawLogError, match="truncated") as error:
        rawlog.read_header(path)
    assert path in str(error.value)


@pytest.mark.parametrize("offset", [0, 100, -5])
def test_flipped_payload_byte_fails_the_checksum(written, offset):
    path, data = written
    data = bytearray(data)
    position = _header_end(bytes(data)) + offset if offset >= 0 else len(data) + offset
    data[position] ^= 0x01
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(rawlog.RawLogError, match="checksum mismatch") as error:
        rawlog.read_episode(path)
    assert str(error.value).startswith(path + ": ")


def test_wrong_magic_is_not_an_episode_file(written):
    path, data = written
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04" + data[4:])
    with pytest.raises(rawlog.RawLogError, match="not a neverstop episode file") as error:
        rawlog.read_episode(path)
    assert path in str(error.value)
    with pytest.raises(rawlog.RawLogError, match="not a neverstop episode file"):
        rawlog.read_header(path)


def test_missing_file_is_an_error_naming_the_file(tmp_path):
    path = str(tmp_path / "nope.nsep")
    with pytest.raises(rawlog.RawLogError, match="cannot read") as error:
        rawlog.read_episode(path)
    assert path in str(error.value)


def test_non_finite_action_names_the_step(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.ACTION][2, 3] = np.nan
    path = _write_unchecked(tmp_path / "nan.nsep", episode)
    with pytest.raises(rawlog.RawLogError) as error:
        rawlog.read_episode(path)
    assert str(error.value) == f"{path}: step 2: {schema.ACTION} is not finite"


def test_non_finite_height_names_the_step(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.HEIGHT_TO_BOTTOM][4] = np.inf
    path = _write_unchecked(tmp_path / "inf.nsep", episode)
    with pytest.raises(rawlog.RawLogError, match=f"step 4: {schema.HEIGHT_TO_BOTTOM} is not"):
        rawlog.read_episode(path)


def test_action_outside_the_box_is_an_error(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.ACTION][1, 0] = 1.5
    path = _write_unchecked(tmp_path / "big.nsep", episode)
    with pytest.raises(rawlog.RawLogError) as error:
        rawlog.read_episode(path)
    message = str(error.value)
    assert message.startswith(f"{path}: step 1: action [1.5, ")
    assert message.endswith("outside [-1, 1]")


def test_image_of_the_wrong_size_is_an_error(tmp_path):
    episode, _ = _episode()
    small = _observations(1, 1, size=32)[0][schema.IMAGE]
    episode.images[3] = rawlog.encode_png(small)
    path = _write_unchecked(tmp_path / "small.nsep", episode)
    with pytest.raises(rawlog.RawLogError) as error:
        rawlog.read_episode(path)
    assert str(error.value) == f"{path}: step 3: image is 32x32, expected 64x64"


def test_image_that_is_not_a_png_is_an_error(tmp_path):
    episode, _ = _episode()
    episode.images[0] = b"GIF89a" + bytes(40)
    path = _write_unchecked(tmp_path / "gif.nsep", episode)
    with pytest.raises(rawlog.RawLogError, match=r"step 0: image is not a valid png"):
        rawlog.read_episode(path)


def test_is_last_unset_on_the_final_step_is_an_error(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.IS_LAST][-1] = False
    path = _write_unchecked(tmp_path / "nolast.nsep", episode)
    with pytest.raises(rawlog.RawLogError) as error:
        rawlog.read_episode(path)
    assert str(error.value) == f"{path}: is_last must be set on the final step only (step 4)"


def test_is_first_set_twice_is_an_error(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.IS_FIRST][2] = True
    path = _write_unchecked(tmp_path / "first.nsep", episode)
    with pytest.raises(rawlog.RawLogError, match="is_first must be set on step 0 only"):
        rawlog.read_episode(path)


def test_validate_names_a_missing_field_and_missing_metadata():
    episode, _ = _episode()
    del episode.steps[schema.IS_LAST]
    with pytest.raises(
        rawlog.RawLogError, match=f"where: missing per-step field '{schema.IS_LAST}'"
    ):
        rawlog.validate(episode, where="where")
    episode, _ = _episode()
    del episode.metadata[schema.SEED]
    with pytest.raises(rawlog.RawLogError, match=f"episode metadata lacks {schema.SEED}$"):
        rawlog.validate(episode)


def test_validate_rejects_a_wrong_dtype():
    episode, _ = _episode()
    episode.steps[schema.REWARD] = episode.steps[schema.REWARD].astype(np.float64)
    with pytest.raises(rawlog.RawLogError, match="reward has dtype float64, expected float32"):
        rawlog.validate(episode)


# --- Atomic writes and temporaries -------------------------------------------------


def test_write_episode_refuses_an_invalid_episode_and_leaves_nothing(tmp_path):
    episode, _ = _episode()
    episode.steps[schema.ACTION][0, 0] = -2.0
    with pytest.raises(rawlog.RawLogError, match=f"^episode {EPISODE_ID}: step 0: action"):
        rawlog.write_episode(str(tmp_path), episode)
    assert os.listdir(tmp_path) == []


def test_write_episode_leaves_no_temporary_and_renames_a_complete_file(tmp_path, monkeypatch):
    episode, _ = _episode()
    expected = rawlog.to_bytes(episode)
    final = str(tmp_path / (EPISODE_ID + rawlog.EXTENSION))
    seen = []
    real_replace = os.replace

    def checking_replace(src, dst):
        # At the moment of the rename the final name is absent and the
        # temporary already holds every byte.
        seen.append((os.path.basename(src), os.path.exists(dst), open(src, "rb").read()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", checking_replace)
    path = rawlog.write_episode(str(tmp_path), episode)
    assert path == final
    [(temporary, final_existed, content)] = seen
    assert temporary.startswith(rawlog.TEMP_PREFIX) and temporary.endswith(rawlog.EXTENSION)
    assert not final_existed
    assert content == expected
    assert os.listdir(tmp_path) == [os.path.basename(final)]


def test_write_episode_that_fails_to_rename_leaves_no_file(tmp_path, monkeypatch):
    episode, _ = _episode()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        rawlog.write_episode(str(tmp_path), episode)
    assert os.listdir(tmp_path) == []


def test_remove_stale_temporaries_deletes_only_temporaries(tmp_path):
    episode, _ = _episode()
    kept = os.path.basename(rawlog.write_episode(str(tmp_path), episode))
    (tmp_path / ".tmp-abc123.nsep").write_bytes(b"half an episode")
    (tmp_path / ".tmp-def456.nsep").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("keep me")
    assert rawlog.remove_stale_temporaries(str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([kept, "notes.txt"])
    assert rawlog.remove_stale_temporaries(str(tmp_path)) == 0
    assert rawlog.remove_stale_temporaries(str(tmp_path / "absent")) == 0


def test_list_episode_files_skips_temporaries_and_other_files(tmp_path):
    for index in (2, 0, 1):
        rawlog.write_episode(str(tmp_path), _episode(episode_id=f"ep-{index}")[0])
    (tmp_path / ".tmp-xyz.nsep").write_bytes(b"junk")
    (tmp_path / "ep-9.nsep.bak").write_bytes(b"junk")
    (tmp_path / "readme.md").write_text("x")
    assert rawlog.list_episode_files(str(tmp_path)) == [
        str(tmp_path / f"ep-{index}.nsep") for index in (0, 1, 2)
    ]
    assert [e.episode_id for e in rawlog.iter_episodes(str(tmp_path))] == ["ep-0", "ep-1", "ep-2"]
    assert rawlog.list_episode_files(str(tmp_path / "absent")) == []


# --- Images and names -------------------------------------------------------------


@pytest.mark.parametrize("encoding", schema.IMAGE_ENCODINGS)
def test_image_size_reads_height_and_width_from_the_header(encoding):
    image = np.zeros((32, 48, 3), np.uint8)
    assert rawlog.image_size(rawlog.encode_image(image, encoding), encoding) == (32, 48)
    square = _observations(0, 1)[0][schema.IMAGE]
    assert rawlog.image_size(rawlog.encode_image(square, encoding), encoding) == (64, 64)


def test_image_size_rejects_other_formats():
    with pytest.raises(ValueError, match="not a PNG image"):
        rawlog.image_size(b"\xff\xd8\xff\xe0" + bytes(30), "png")
    with pytest.raises(ValueError, match="not a JPEG image"):
        rawlog.image_size(rawlog.encode_png(np.zeros((8, 8, 3), np.uint8)), "jpeg")


def test_png_encoding_is_lossless():
    image = _observations(3, 1)[0][schema.IMAGE]
    np.testing.assert_array_equal(_decode(rawlog.encode_image(image, "png")), image)
    with pytest.raises(ValueError, match=r"expected an HxWx3 uint8 image, got shape \(64, 64\)"):
        rawlog.encode_png(image[..., 0])


def test_jpeg_encoding_round_trips_within_tolerance():
    y, x = np.mgrid[0 : schema.IMAGE_SIZE, 0 : schema.IMAGE_SIZE]
    image = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    decoded = _decode(rawlog.encode_image(image, "jpeg"))
    assert decoded.shape == image.shape
    difference = np.abs(decoded.astype(np.int16) - image.astype(np.int16))
    # Measured at quality 95: mean 0.6, max 5 levels.
    assert difference.mean() < 2.0
    assert difference.max() <= 16


def test_unknown_image_encoding_is_refused():
    with pytest.raises(ValueError, match="unknown image_encoding 'gif'"):
        rawlog.encode_image(np.zeros(schema.IMAGE_SHAPE, np.uint8), "gif")


@pytest.mark.parametrize("unsafe", ["a/b", "../x", "", "a b", "a\\b", "id:1"])
def test_filename_rejects_unsafe_ids(unsafe):
    with pytest.raises(ValueError, match="is not file-name safe"):
        rawlog.filename(unsafe)


def test_filename_appends_the_extension():
    assert rawlog.filename("sim-base-scripted-s7-000003") == "sim-base-scripted-s7-000003.nsep"
    assert rawlog.filename("a.b_c=d+e-f") == "a.b_c=d+e-f.nsep"
