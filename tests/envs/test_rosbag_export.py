"""Tests for neverstop/envs/rosbag_export.py: sim episodes as ROS 2 bags (docs/raw-logs.md)."""

import bisect
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from neverstop import rawlog
from neverstop import schema
from neverstop.envs import collect
from neverstop.envs import grasp_env
from neverstop.envs import policies
from neverstop.envs import rosbag_export as rb

# The table in docs/raw-logs.md, spelled out rather than read from the module.
DOCUMENTED_TOPICS = {
    "/camera/color/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "/gripper/joint_states": "sensor_msgs/msg/JointState",
    "/tool/pose": "geometry_msgs/msg/PoseStamped",
    "/policy/action": "std_msgs/msg/Float32MultiArray",
    "/episode/start": "std_msgs/msg/String",
    "/episode/end": "std_msgs/msg/String",
    "/grasp/outcome": "std_msgs/msg/Bool",
}

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)


@pytest.fixture(scope="module")
def episodes():
    """Two real scripted episodes of a collection run (seed 0, indices 0 and 1)."""
    config = collect.CollectConfig(task="base", policy="scripted", seed=0)
    with grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="train")) as env:
        policy = policies.make_policy("scripted", env)
        return [collect.collect_episode(env, policy, config, index) for index in (0, 1)]


@pytest.fixture(scope="module")
def bags(episodes, tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    written = {}
    for storage in rb.STORAGES:
        path = str(root / storage / (episodes[0].episode_id + ".bag"))
        assert rb.write_bag(path, episodes[0], storage) == path
        written[storage] = path
    return written


def _read(path):
    """{topic: [(bag stamp ns, message), ...]} and {topic: msgtype}."""
    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        messages = {topic: [] for topic in types}
        for connection, stamp, raw in reader.messages():
            message = TYPESTORE.deserialize_cdr(raw, connection.msgtype)
            messages[connection.topic].append((stamp, message))
    return messages, types


def _pixels(encoded) -> np.ndarray:
    with Image.open(io.BytesIO(bytes(encoded))) as image:
        return np.asarray(image.convert("RGB"))


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.mark.parametrize("storage", rb.STORAGES)
def test_bag_has_the_documented_topics_and_types(bags, storage):
    _, types = _read(bags[storage])
    assert types == DOCUMENTED_TOPICS
    assert rb.TOPIC_TYPES == DOCUMENTED_TOPICS
    assert os.path.isfile(os.path.join(bags[storage], "metadata.yaml"))
    assert [n for n in os.listdir(os.path.dirname(bags[storage])) if n.startswith(".tmp-")] == []


@pytest.mark.parametrize("storage", rb.STORAGES)
def test_bag_message_counts(episodes, bags, storage):
    episode = episodes[0]
    num_actions = episode.num_steps - 1
    messages, _ = _read(bags[storage])
    counts = {topic: len(items) for topic, items in messages.items()}
    assert counts == {
        rb.CAMERA_TOPIC: len(rb.timeline(episode)["frames"]),
        rb.GRIPPER_TOPIC: num_actions + 1,
        rb.TOOL_POSE_TOPIC: num_actions + 1,
        rb.ACTION_TOPIC: num_actions,
        rb.EPISODE_START_TOPIC: 1,
        rb.OUTCOME_TOPIC: 1,
        rb.EPISODE_END_TOPIC: 1,
    }
    # 10 Hz camera from the start until 0.4 s after the last of T + 1 ticks at 2 Hz.
    assert counts[rb.CAMERA_TOPIC] == pytest.approx((0.9 + 0.5 * num_actions) / 0.1, abs=1)


@pytest.mark.parametrize("storage", rb.STORAGES)
def test_camera_frame_at_or_before_each_tick_shows_that_steps_observation(episodes, bags, storage):
    episode = episodes[0]
    messages, _ = _read(bags[storage])
    frames = messages[rb.CAMERA_TOPIC]
    frame_stamps = [stamp for stamp, _ in frames]
    assert frame_stamps == sorted(frame_stamps)
    ticks = [stamp for stamp, _ in messages[rb.ACTION_TOPIC]]
    # The final observation has no action; its tick is 20 ms after its state.
    ticks.append(messages[rb.GRIPPER_TOPIC][-1][0] + 20_000_000)
    assert len(ticks) == episode.num_steps
    for t, tick in enumerate(ticks):
        at_or_before = bisect.bisect_right(frame_stamps, tick) - 1
        assert at_or_before >= 0
        stamp, frame = frames[at_or_before]
        assert _ns(frame.header.stamp) == stamp
        assert frame.header.frame_id == rb.CAMERA_FRAME
        assert frame.format == "png"
        assert bytes(frame.data) == episode.images[t], f"tick {t}"
        np.testing.assert_array_equal(_pixels(frame.data), _pixels(episode.images[t]))


@pytest.mark.parametrize("storage", rb.STORAGES)
def test_actions_states_and_outcome_carry_the_episode(episodes, bags, storage):
    episode = episodes[0]
    steps = episode.steps
    messages, _ = _read(bags[storage])

    actions = np.stack([m.data for _, m in messages[rb.ACTION_TOPIC]])
    np.testing.assert_array_equal(actions, steps[schema.ACTION][:-1])
    layout = messages[rb.ACTION_TOPIC][0][1].layout
    assert layout.dim[0].label == "dx,dy,dz,dyaw,close"
    assert layout.dim[0].size == schema.ACTION_DIM

    gripper = messages[rb.GRIPPER_TOPIC]
    assert all(list(m.name) == [rb.GRIPPER_JOINT] for _, m in gripper)
    np.testing.assert_allclose(
        [m.position[0] for _, m in gripper], steps[schema.GRIPPER_CLOSED], rtol=0, atol=0
    )
    poses = messages[rb.TOOL_POSE_TOPIC]
    assert all(m.header.frame_id == rb.TRAY_FRAME for _, m in poses)
    np.testing.assert_allclose(
        [m.pose.position.z for _, m in poses], steps[schema.HEIGHT_TO_BOTTOM], rtol=0, atol=0
    )
    # Each state is logged 20 ms before the tick it belongs to.
    action_stamps = [stamp for stamp, _ in messages[rb.ACTION_TOPIC]]
    state_stamps = [stamp for stamp, _ in gripper][:-1]
    assert [a - s for a, s in zip(action_stamps, state_stamps)] == [20_000_000] * len(state_stamps)

    [(_, outcome)] = messages[rb.OUTCOME_TOPIC]
    assert outcome.data is bool(episode.metadata[schema.SUCCESS])
    [(start_stamp, start)] = messages[rb.EPISODE_START_TOPIC]
    info = json.loads(start.data)
    assert info == {
        schema.EPISODE_ID: episode.episode_id,
        schema.TASK: "base",
        schema.ROBOT: schema.ROBOT_STANDARD,
        schema.POLICY: "scripted",
        schema.SEED: collect.episode_seed(0, 0),
    }
    [(end_stamp, end)] = messages[rb.EPISODE_END_TOPIC]
    assert json.loads(end.data) == {schema.EPISODE_ID: episode.episode_id}
    # The camera runs on its own clock (+-5 ms), everything else between the markers.
    logged = [s for topic, items in messages.items() if topic != rb.CAMERA_TOPIC for s, _ in items]
    assert start_stamp == min(logged) and end_stamp == max(logged)
    frame_stamps = [stamp for stamp, _ in messages[rb.CAMERA_TOPIC]]
    assert abs(frame_stamps[0] - start_stamp) <= 5_000_000
    assert frame_stamps[-1] < end_stamp + 5_000_000


def test_timeline_is_a_pure_function_of_the_episode(episodes):
    first, second = episodes
    assert rb.timeline(first) == rb.timeline(first)
    assert rb.timeline(first)["ticks"] != rb.timeline(second)["ticks"]
    times = rb.timeline(first)
    assert len(times["ticks"]) == first.num_steps
    assert times["start"] < times["ticks"][0] < times["outcome"] < times["end"]


def test_writing_over_an_existing_bag_raises(bags, episodes):
    with pytest.raises(FileExistsError, match="bags are never overwritten"):
        rb.write_bag(bags["mcap"], episodes[0], "mcap")


def test_unknown_storage_raises(tmp_path, episodes):
    with pytest.raises(ValueError, match="unknown bag storage 'rosbag1'"):
        rb.write_bag(str(tmp_path / "x.bag"), episodes[0], "rosbag1")
    assert os.listdir(tmp_path) == []


def test_export_directory_converts_every_episode_and_keeps_existing_bags(
    tmp_path, episodes, monkeypatch
):
    raw, out = tmp_path / "raw", tmp_path / "bags"
    raw.mkdir()
    for episode in episodes:
        rawlog.write_episode(str(raw), episode)
    ticks = []
    written = rb.export_directory(str(raw), str(out), "sqlite3", progress=lambda: ticks.append(1))
    expected = [str(out / (e.episode_id + ".bag")) for e in episodes]
    assert written == expected
    assert len(ticks) == 2
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in expected)
    for path in expected:
        messages, _ = _read(path)
        assert len(messages[rb.OUTCOME_TOPIC]) == 1

    def no_rewrite(*args, **kwargs):
        raise AssertionError("an existing bag was written again")

    monkeypatch.setattr(rb, "write_bag", no_rewrite)
    assert rb.export_directory(str(raw), str(out), "sqlite3") == expected


def test_export_directory_leaves_out_bad_files_and_exports_the_rest(tmp_path, episodes):
    raw, out = tmp_path / "raw", tmp_path / "bags"
    raw.mkdir()
    (raw / "aaa-junk.nsep").write_bytes(b"not an episode")
    for episode in episodes:
        rawlog.write_episode(str(raw), episode)
    skipped = []
    written = rb.export_directory(str(raw), str(out), "sqlite3", skipped=skipped)
    assert written == [str(out / (e.episode_id + ".bag")) for e in episodes]
    assert [(os.path.basename(p), r.split(": ", 1)[0]) for p, r in skipped] == [
        ("aaa-junk.nsep", str(raw / "aaa-junk.nsep"))
    ]
    assert "not a neverstop episode file" in skipped[0][1]
