"""Tests for neverstop/pipelines/ingest.py: raw episode files -> published RLDS dataset."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from neverstop import rawlog
from neverstop import schema
from neverstop.datasets import rlds_grasp
from neverstop.pipelines import ingest


def _episode(index: int, task: str = "base", steps: int = 4) -> rawlog.Episode:
    rng = np.random.default_rng(index)
    observations = [
        {
            schema.IMAGE: rng.integers(0, 256, schema.IMAGE_SHAPE, dtype=np.uint8),
            schema.GRIPPER_CLOSED: np.float32(t == steps - 1),
            schema.HEIGHT_TO_BOTTOM: np.float32(0.25 - 0.05 * t),
        }
        for t in range(steps)
    ]
    actions = [rng.uniform(-1, 1, schema.ACTION_DIM).astype(np.float32) for _ in range(steps - 1)]
    success = index % 3 == 0
    rewards = [0.0] * (steps - 2) + [float(success)]
    metadata = {
        schema.EPISODE_ID: f"sim-{task}-scripted-s0-{index:06d}",
        schema.TASK: task,
        schema.SOURCE: schema.SOURCE_SIM,
        schema.ROBOT: schema.robot_id(task),
        schema.POLICY: "scripted" if index % 2 else "random",
        schema.SUCCESS: success,
        schema.SEED: index,
    }
    return rawlog.from_rollout(observations, actions, rewards, metadata)


def _write_raw(directory, episode, name=None) -> str:
    """Writes bytes without validation, so tests can plant broken episodes."""
    path = os.path.join(directory, name or rawlog.filename(episode.episode_id))
    with open(path, "wb") as f:
        f.write(rawlog.to_bytes(episode))
    return path


def _raw_dir(directory, count: int):
    """`directory`, made, holding the raw files of episodes 0..count-1."""
    directory.mkdir()
    for i in range(count):
        _write_raw(directory, _episode(i))
    return directory


def _with_header(episode, header: bytes) -> bytes:
    """The episode's file with its JSON header replaced by `header`, framed
    and checksummed as a real file is, so only the header is wrong."""
    data = rawlog.to_bytes(episode)
    _, _, length = struct.unpack("<4sHI", data[:10])
    body = data[:4] + struct.pack("<HI", struct.unpack("<H", data[4:6])[0], len(header))
    body += header + data[10 + length : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def _config(raw, data, **overrides) -> ingest.IngestConfig:
    values = dict(
        input=os.path.join(str(raw), "*.nsep"),
        dataset="grasps",
        config="base",
        data_dir=str(data),
        workers=1,
        episodes_per_shard=5,
    )
    values.update(overrides)
    return ingest.IngestConfig(**values)


def _run(config) -> ingest.IngestSummary:
    return ingest.ingest(config, running_mode="in_memory")


def _digests(directory) -> dict:
    return {
        name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(directory))
    }


@pytest.fixture
def raw(tmp_path):
    return _raw_dir(tmp_path / "raw", 12)


_LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow_datasets as tfds
    from neverstop import rawlog, schema
    data_dir, version_dir = sys.argv[1], sys.argv[2]
    skip = {schema.STEPS: {schema.OBSERVATION: {schema.IMAGE: tfds.decode.SkipDecoding()}}}
    builder = tfds.builder_from_directory(version_dir)
    loaded = tfds.load("grasps/base:1.0.0", data_dir=data_dir, split="train", decoders=skip)
    exact, steps = 0, 0
    for example in tfds.as_numpy(loaded):
        path = example[schema.EPISODE_METADATA][schema.FILE_PATH].decode()
        episode = rawlog.read_episode(path)
        images = [s[schema.OBSERVATION][schema.IMAGE] for s in example[schema.STEPS]]
        actions = np.stack([s[schema.ACTION] for s in example[schema.STEPS]])
        steps += len(images)
        exact += int(images == episode.images and np.array_equal(actions, episode.steps[schema.ACTION]))
    print("RESULT", json.dumps({"episodes": builder.info.splits["train"].num_examples,
                                "exact": exact, "steps": steps,
                                "shards": builder.info.splits["train"].num_shards}))
    """)


def test_dataset_loads_in_a_fresh_process_and_round_trips_exactly(raw, tmp_path):
    summary = _run(_config(raw, tmp_path / "data"))
    assert summary.statistics.episodes == 12
    assert summary.statistics.steps == 12 * 4
    assert summary.num_shards == 3
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path / "data"), summary.path],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [l for l in completed.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result == {"episodes": 12, "exact": 12, "steps": 48, "shards": 3}


def test_converting_a_shard_never_imports_tensorflow(raw, tmp_path):
    """The workers' fixed cost: TensorFlow's import is ~2.8 s a process."""
    script = textwrap.dedent("""
        import sys
        from neverstop.pipelines import ingest
        config = ingest.IngestConfig(input=sys.argv[1], dataset="grasps", config="base",
                                     data_dir=sys.argv[2])
        (chunk,) = ingest.plan(config)
        report = ingest.convert_shard(0, chunk, 1, config, sys.argv[2])
        print(len(report["episodes"]), len(report["dead_letters"]), "tensorflow" in sys.modules)
        """)
    out = subprocess.run(
        [sys.executable, "-c", script, os.path.join(str(raw), "*.nsep"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["12", "0", "False"]


def test_card_has_statistics_and_release_notes(raw, tmp_path):
    summary = _run(_config(raw, tmp_path / "data"))
    with open(os.path.join(summary.path, "metadata.json")) as f:
        metadata = json.load(f)
    stats = metadata["statistics"]
    assert stats["episodes"] == 12
    assert stats["successes"] == 4  # indices 0, 3, 6, 9
    assert stats["policies"] == {"random": 6, "scripted": 6}
    with open(os.path.join(summary.path, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["releaseNotes"] == rlds_grasp.DEFAULT_RELEASE_NOTES
    assert "Never Stop Learning" in info["citation"]
    assert info["configName"] == "base"
    # Another version's card speaks of that version.
    later = _run(_config(raw, tmp_path / "data", version="1.2.0"))
    with open(os.path.join(later.path, "dataset_info.json")) as f:
        assert json.load(f)["releaseNotes"] == {"1.2.0": "Initial ingestion."}


def test_planted_faults_land_in_the_dead_letter_and_good_episodes_land(raw, tmp_path):
    broken = tmp_path / "raw"
    truncated = _write_raw(broken, _episode(100))
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) - 200])
    nan = _episode(101)
    nan.steps[schema.ACTION][1, 2] = np.nan
    _write_raw(broken, nan)
    small = _episode(102)
    small.images[2] = rawlog.encode_png(np.zeros((32, 32, 3), np.uint8))
    _write_raw(broken, small)
    no_last = _episode(103)
    no_last.steps[schema.IS_LAST][-1] = False
    _write_raw(broken, no_last)
    shutil.copy(
        os.path.join(broken, rawlog.filename(_episode(5).episode_id)),
        os.path.join(broken, "zz-copy-of-5.nsep"),
    )
    _write_raw(broken, _episode(104, task="checkerboard"))
    (broken / "junk.nsep").write_bytes(b"not an episode at all")
    # Well-framed files (checksums valid) whose header says the wrong things.
    no_seed = _episode(105)
    no_seed.metadata[schema.SEED] = None
    _write_raw(broken, no_seed)
    no_success = _episode(106)
    no_success.metadata[schema.SUCCESS] = None
    _write_raw(broken, no_success)
    (broken / "list-header.nsep").write_bytes(_with_header(_episode(107), b"[]"))

    summary = _run(_config(broken, tmp_path / "data"))
    assert summary.statistics.episodes == 12  # exactly the good ones
    by_file = {os.path.basename(r["file"]): r for r in summary.dead_letters}
    assert len(summary.dead_letters) == 10
    expected = {
        rawlog.filename(_episode(100).episode_id): ("invalid", "checksum mismatch"),
        rawlog.filename(_episode(101).episode_id): ("invalid", "step 1: action is not finite"),
        rawlog.filename(_episode(102).episode_id): ("invalid", "image is 32x32, expected 64x64"),
        rawlog.filename(_episode(103).episode_id): ("invalid", "is_last"),
        "zz-copy-of-5.nsep": ("duplicate", "already read from"),
        rawlog.filename(_episode(104, "checkerboard").episode_id): (
            "invalid",
            "task 'checkerboard'",
        ),
        "junk.nsep": ("unreadable", "not a neverstop episode file"),
        rawlog.filename(_episode(105).episode_id): (
            "invalid",
            "episode metadata seed is None, expected an integer",
        ),
        rawlog.filename(_episode(106).episode_id): (
            "invalid",
            "episode metadata success is None, expected true or false",
        ),
        "list-header.nsep": ("unreadable", "header is a JSON list, expected an object"),
    }
    for name, (kind, reason) in expected.items():
        assert by_file[name]["reason_kind"] == kind, name
        assert reason in by_file[name]["reason"], (name, by_file[name]["reason"])
    with open(os.path.join(summary.path, rlds_grasp.DEAD_LETTER_FILE)) as f:
        lines = [json.loads(line) for line in f]
    assert sorted(os.path.basename(r["file"]) for r in lines) == sorted(expected)
    assert summary.reasons == {"invalid": 7, "duplicate": 1, "unreadable": 2}


def test_duplicates_within_and_across_shards_keep_the_first_valid_episode(tmp_path):
    import tensorflow_datasets as tfds

    raw = _raw_dir(tmp_path / "raw", 8)
    # Names sort after the original's: "...000001b" lands in shard 0 with
    # it (within a shard), "zz-" in the last shard (across shards).
    original = os.path.join(raw, rawlog.filename(_episode(1).episode_id))
    shutil.copy(original, raw / "sim-base-scripted-s0-000001b-copy.nsep")
    shutil.copy(original, raw / "zz-copy.nsep")
    # An invalid episode does not claim its id: the later valid copy lands.
    broken = _episode(20)
    broken.steps[schema.REWARD][0] = np.nan
    _write_raw(raw, broken, "aa-broken.nsep")
    _write_raw(raw, _episode(20), "zz-valid-20.nsep")

    summary = _run(_config(raw, tmp_path / "data", episodes_per_shard=4))
    assert summary.num_shards == 3
    assert summary.statistics.episodes == 9
    assert summary.reasons == {"duplicate": 2, "invalid": 1}
    duplicates = sorted(
        os.path.basename(r["file"]) for r in summary.dead_letters if r["reason_kind"] == "duplicate"
    )
    assert duplicates == ["sim-base-scripted-s0-000001b-copy.nsep", "zz-copy.nsep"]
    for record in summary.dead_letters:
        if record["reason_kind"] == "duplicate":
            assert record["episode_id"] == _episode(1).episode_id
            assert record["reason"].endswith(f"already read from {original}")
    builder = tfds.builder_from_directory(summary.path)
    assert builder.info.splits["train"].shard_lengths == [2, 4, 3]
    loaded = [
        (
            e[schema.EPISODE_METADATA][schema.EPISODE_ID].decode(),
            e[schema.EPISODE_METADATA][schema.FILE_PATH].decode(),
        )
        for e in tfds.as_numpy(builder.as_dataset(split="train"))
    ]
    ids = [episode_id for episode_id, _ in loaded]
    assert sorted(ids) == sorted(_episode(i).episode_id for i in (*range(8), 20))
    assert dict(loaded)[_episode(1).episode_id] == original
    assert dict(loaded)[_episode(20).episode_id].endswith("zz-valid-20.nsep")


def test_same_inputs_give_the_same_bytes(raw, tmp_path):
    first = _digests(_run(_config(raw, tmp_path / "a")).path)
    second = _digests(_run(_config(raw, tmp_path / "b")).path)
    shards = [name for name in first if ".tfrecord-" in name]
    assert len(shards) == 3
    assert {n: first[n] for n in shards} == {n: second[n] for n in shards}
    assert first[rlds_grasp.DEAD_LETTER_FILE] == second[rlds_grasp.DEAD_LETTER_FILE]


def test_publishing_a_version_again_replaces_it_and_says_so(raw, tmp_path):
    data = tmp_path / "data"
    first = _run(_config(raw, data))
    assert (first.replaced, first.statistics.episodes) == (False, 12)
    second = _run(_config(_raw_dir(tmp_path / "fewer", 3), data))
    assert second.path == first.path
    assert (second.replaced, second.statistics.episodes) == (True, 3)
    assert sorted(n for n in os.listdir(os.path.dirname(first.path))) == ["1.0.0"]


def test_a_failed_run_leaves_the_published_version_untouched(raw, tmp_path, monkeypatch):
    config = _config(raw, tmp_path / "data")
    published = _run(config).path
    before = _digests(published)

    def boom(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(ingest, "convert_shard", boom)
    with pytest.raises(Exception, match="worker died"):
        _run(config)
    assert _digests(published) == before
    leftovers = [n for n in os.listdir(os.path.dirname(published)) if n != "1.0.0"]
    assert leftovers == []


def test_no_valid_episode_is_an_error_and_publishes_nothing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "junk.nsep").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no valid episodes"):
        _run(_config(raw, tmp_path / "data"))
    assert not os.path.exists(tmp_path / "data" / "grasps" / "base" / "1.0.0")


def test_no_matching_input_names_the_glob(tmp_path):
    with pytest.raises(ValueError, match=r"no input files match .*nothing-here"):
        _run(_config(tmp_path / "nothing-here", tmp_path / "data"))


def test_bad_dataset_names_are_refused(raw, tmp_path):
    with pytest.raises(ValueError, match="dataset name 'Bad-Name'"):
        _run(_config(raw, tmp_path / "data", dataset="Bad-Name"))
    with pytest.raises(ValueError, match="dataset version '1.0'"):
        _run(_config(raw, tmp_path / "data", version="1.0"))


NEVERSTOP = os.path.join(os.path.dirname(sys.executable), "neverstop")


def test_sigkill_midway_leaves_the_published_version_loadable_and_untouched(tmp_path):
    import signal
    import time

    raw = _raw_dir(tmp_path / "raw", 6)
    data = tmp_path / "data"
    published = _run(_config(raw, data)).path
    before = _digests(published)
    for i in range(6, 400):  # a bigger second run, so it can be caught midway
        _write_raw(raw, _episode(i))
    command = [
        NEVERSTOP,
        "ingest",
        "--input",
        str(raw / "*.nsep"),
        "--dataset",
        "grasps",
        "--config",
        "base",
        "--data-dir",
        str(data),
        "--workers",
        "2",
        "--episodes-per-shard",
        "20",
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parent = os.path.dirname(published)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            staging = [n for n in os.listdir(parent) if n.startswith(".incomplete-")]
            shards = staging and [
                n for n in os.listdir(os.path.join(parent, staging[0])) if ".tfrecord-" in n
            ]
            if shards:  # workers are writing
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "ingest ended before it could be killed"
    assert _digests(published) == before  # the published version did not move
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(data), published],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert '"episodes": 6' in completed.stdout
    # The next run cleans up after the killed one and publishes all 400.
    summary = _run(_config(raw, data))
    assert summary.statistics.episodes == 400
    assert sorted(os.listdir(parent)) == ["1.0.0"]


def test_recover_restores_a_version_caught_between_publish_renames(tmp_path):
    parent = tmp_path / "grasps" / "base"
    (parent / ".old-1.0.0-abc").mkdir(parents=True)
    (parent / ".old-1.0.0-abc" / "dataset_info.json").write_text("{}")
    (parent / ".incomplete-1.0.0-xyz").mkdir()
    ingest.recover(str(parent / "1.0.0"))
    assert sorted(os.listdir(parent)) == ["1.0.0"]
    assert (parent / "1.0.0" / "dataset_info.json").read_text() == "{}"


@pytest.mark.parametrize("size", [0, -5])
def test_a_shard_size_below_one_is_refused(raw, tmp_path, size):
    with pytest.raises(ValueError, match=f"episodes per shard must be >= 1, got {size}"):
        ingest.plan(_config(raw, tmp_path / "data", episodes_per_shard=size))
