"""Tests for neverstop/pipelines/bag_reader.py and ingesting robot bags."""

import os
import shutil

import numpy as np
import pytest

from neverstop import schema
from neverstop.envs import rosbag_export
from neverstop.pipelines import bag_reader
from neverstop.pipelines import ingest
from tests.pipelines.test_ingest import _episode


@pytest.fixture(scope="module")
def topic_map():
    return bag_reader.TopicMap.load()


def _assert_same(back, original):
    for key in original.steps:
        np.testing.assert_array_equal(back.steps[key], original.steps[key], err_msg=key)
    assert back.images == original.images
    for key in schema.METADATA_KEYS:
        if key != schema.FILE_PATH:
            assert back.metadata[key] == original.metadata[key], key


@pytest.mark.parametrize("storage", rosbag_export.STORAGES)
def test_exported_bags_read_back_exactly(tmp_path, topic_map, storage):
    for index in (0, 1):  # a success and a failure
        original = _episode(index, steps=5)
        path = rosbag_export.write_bag(str(tmp_path / f"{index}.bag"), original, storage)
        [(position, back)] = list(bag_reader.read_episodes(path, topic_map))
        assert position == 0
        _assert_same(back, original)
        assert back.metadata[schema.FILE_PATH] == path


def _bag_with_camera_gap(path, episode, before_tick=2, seconds=0.4):
    """Drops the camera frames in the `seconds` before one tick."""
    real = rosbag_export.timeline

    def gappy(ep):
        times = real(ep)
        tick = times["ticks"][before_tick]
        keep = [i for i, f in enumerate(times["frames"]) if not tick - seconds * 1e9 < f <= tick]
        times["frames"] = [times["frames"][i] for i in keep]
        times["shown"] = [times["shown"][i] for i in keep]
        return times

    rosbag_export.timeline = gappy
    try:
        return rosbag_export.write_bag(path, episode)
    finally:
        rosbag_export.timeline = real


def test_a_camera_gap_longer_than_the_tolerance_fails_that_episode(tmp_path, topic_map):
    path = _bag_with_camera_gap(str(tmp_path / "gap.bag"), _episode(3, steps=5))
    [(position, error)] = list(bag_reader.read_episodes(path, topic_map))
    assert isinstance(error, bag_reader.rawlog.RawLogError)
    assert f"episode 0 of {path}: step 2: no camera frame within 0.15 s" in str(error)


def test_a_topic_map_missing_an_entry_is_refused(tmp_path):
    bad = tmp_path / "map.yaml"
    text = open(bag_reader.DEFAULT_TOPIC_MAP).read().replace("camera:", "kamera:", 1)
    bad.write_text(text)
    with pytest.raises(
        ValueError, match=r"topic map .*map.yaml: missing or malformed entry 'camera'"
    ):
        bag_reader.TopicMap.load(str(bad))
    bad.write_text("camera: [unclosed\n")
    with pytest.raises(ValueError, match=r"topic map .*map.yaml: not valid YAML"):
        bag_reader.TopicMap.load(str(bad))


def test_a_bad_topic_map_stops_ingest_before_any_worker_or_staging(tmp_path):
    from neverstop.pipelines import ingest

    raw = tmp_path / "bags" / "x.bag"
    raw.mkdir(parents=True)
    config = ingest.IngestConfig(
        input=str(tmp_path / "bags" / "*.bag"),
        dataset="grasps",
        config="base",
        data_dir=str(tmp_path / "data"),
        source="rosbag",
        topic_map=str(tmp_path / "missing.yaml"),
    )
    with pytest.raises(ValueError, match=r"topic map .*missing.yaml: cannot read"):
        ingest.ingest(config, running_mode="in_memory")
    assert not (tmp_path / "data").exists()


def test_bag_not_a_directory_is_refused(tmp_path, topic_map):
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(bag_reader.rawlog.RawLogError, match="not a ROS 2 bag directory"):
        list(bag_reader.read_episodes(str(ros1), topic_map))


def test_ingesting_bags_lands_the_good_episodes_and_dead_letters_the_rest(tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    for index in range(4):
        episode = _episode(index, steps=4)
        rosbag_export.write_bag(str(bags / f"{episode.episode_id}.bag"), episode)
    _bag_with_camera_gap(str(bags / "gap.bag"), _episode(10, steps=5))
    (bags / "not-a-bag.bag").mkdir()  # a directory with no metadata.yaml
    shutil.copytree(bags / f"{_episode(1).episode_id}.bag", bags / "zz-copy.bag")
    config = ingest.IngestConfig(
        input=str(bags / "*.bag"),
        dataset="robot",
        config="base",
        data_dir=str(tmp_path / "data"),
        source="rosbag",
        workers=1,
    )
    summary = ingest.ingest(config, running_mode="in_memory")
    assert summary.statistics.episodes == 4
    assert summary.statistics.steps == 16
    by_file = {os.path.basename(r["file"]): r for r in summary.dead_letters}
    assert sorted(by_file) == ["gap.bag", "not-a-bag.bag", "zz-copy.bag"]
    assert by_file["gap.bag"]["reason_kind"] == "invalid"
    assert "no camera frame within 0.15 s" in by_file["gap.bag"]["reason"]
    assert by_file["not-a-bag.bag"]["reason_kind"] == "unreadable"
    assert by_file["zz-copy.bag"]["reason_kind"] == "duplicate"
