"""Tests for neverstop/envs/collect.py: seeds, ids, config checks and the Beam collector.

Beam runs are costly (about 3 s of start-up in multi-processing mode), so
only the tests about worker counts and killed runs use real worker
processes; the rest run the same pipeline in memory.
"""

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from neverstop import rawlog
from neverstop import schema
from neverstop.envs import collect
from neverstop.envs import policies

NEVERSTOP = os.path.join(os.path.dirname(sys.executable), "neverstop")


def _config(out, **overrides) -> collect.CollectConfig:
    values = dict(task="base", policy="scripted", episodes=3, seed=0, out=str(out), workers=1)
    values.update(overrides)
    return collect.CollectConfig(**values)


def _in_memory(config, **kwargs) -> collect.CollectSummary:
    return collect.collect(config, running_mode="in_memory", **kwargs)


def _names(directory) -> list:
    return sorted(os.listdir(directory))


def _temporaries(directory) -> list:
    return [n for n in os.listdir(directory) if n.startswith(rawlog.TEMP_PREFIX)]


# --- Seeds and ids ---------------------------------------------------------------


def test_episode_seed_is_a_deterministic_uint32_per_index():
    seeds = [collect.episode_seed(0, index) for index in range(200)]
    assert seeds == [collect.episode_seed(0, index) for index in range(200)]
    assert len(set(seeds)) == 200
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    assert collect.episode_seed(1, 0) != collect.episode_seed(0, 0)
    assert collect.episode_seed(0, 1) != collect.episode_seed(1, 0)
    # The documented derivation: the first 32 bits of SeedSequence([S, i]).
    expected = np.random.SeedSequence([7, 3]).generate_state(1, np.uint32)[0]
    assert collect.episode_seed(7, 3) == int(expected)


def test_episode_id_format():
    assert collect.episode_id("base", "scripted", 7, 3) == "sim-base-scripted-s7-000003"
    assert collect.episode_id("checkerboard", "random", 0, 123456) == (
        "sim-checkerboard-random-s0-123456"
    )


@pytest.mark.parametrize(
    "policy_name, expected",
    [
        ("scripted@eps=0.2", "sim-base-scripted-eps=0.2-s0-000001"),
        ("qtopt:ckpt-7@eps=0.2", "sim-base-qtopt-ckpt-7-eps=0.2-s0-000001"),
        ("a/b c", "sim-base-a-b-c-s0-000001"),
    ],
)
def test_episode_id_makes_policy_names_file_name_safe(policy_name, expected):
    eid = collect.episode_id("base", policy_name, 0, 1)
    assert eid == expected
    assert rawlog.filename(eid) == expected + rawlog.EXTENSION


def test_output_name_carries_the_epsilon_and_the_format(tmp_path):
    assert collect.output_name(_config(tmp_path), 4) == "sim-base-scripted-s0-000004.nsep"
    assert collect.output_name(_config(tmp_path, epsilon=0.2), 4) == (
        "sim-base-scripted-eps=0.2-s0-000004.nsep"
    )
    assert collect.output_name(_config(tmp_path, epsilon=0.2, explore="moves"), 4) == (
        "sim-base-scripted-eps=0.2+moves-s0-000004.nsep"
    )
    assert collect.output_name(_config(tmp_path, format="rosbag"), 4) == (
        "sim-base-scripted-s0-000004.bag"
    )


def test_shards_cover_every_index_once():
    assert collect.shards(list(range(12)), 5) == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11)]
    assert collect.shards([], 5) == []


# --- Config checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"policy": "nope"}, "unknown policy 'nope'; expected one of random, scripted"),
        ({"episodes": 0}, "--episodes must be a positive integer, got 0"),
        ({"episodes": -3}, "--episodes must be a positive integer, got -3"),
        ({"episodes": 2.5}, "--episodes must be a positive integer, got 2.5"),
        ({"task": "nope"}, "unknown task 'nope'; expected one of base, checkerboard"),
        ({"epsilon": 1.5}, r"--epsilon must be in \[0, 1\], got 1.5"),
        ({"epsilon": -0.1}, r"--epsilon must be in \[0, 1\], got -0.1"),
        ({"explore": "noise"}, "unknown --explore 'noise'; expected one of random, moves"),
        ({"workers": 0}, "--workers must be >= 1, got 0"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"format": "hdf5"}, "unknown format 'hdf5'"),
        ({"image_encoding": "gif"}, "unknown image_encoding 'gif'"),
    ],
)
def test_validate_config_names_the_problem_before_touching_the_disk(tmp_path, overrides, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        collect.validate_config(_config(out, **overrides))
    assert not out.exists()


def test_validate_config_refuses_an_unwritable_output_directory(tmp_path):
    (tmp_path / "afile").write_text("a file, not a directory")
    out = tmp_path / "afile" / "sub"
    with pytest.raises(ValueError) as error:
        collect.validate_config(_config(out))
    assert str(error.value) == f"output directory {str(out)!r} is not writable: Not a directory"


def test_validate_config_names_a_file_given_as_the_output_directory(tmp_path):
    out = tmp_path / "afile"
    out.write_text("a file, not a directory")
    with pytest.raises(ValueError) as error:
        collect.validate_config(_config(out))
    assert str(error.value) == f"--out {out}: is a file; give a directory for the episodes"
    assert out.read_text() == "a file, not a directory"


def test_validate_config_creates_the_output_directory_and_leaves_no_probe(tmp_path):
    out = tmp_path / "a" / "b"
    config = _config(out)
    assert collect.validate_config(config) is config
    assert out.is_dir() and os.listdir(out) == []


# --- Determinism across worker counts -----------------------------------------------


def test_same_seed_writes_byte_identical_files_whatever_the_worker_count(tmp_path):
    dirs = {workers: tmp_path / f"workers{workers}" for workers in (1, 2)}
    for workers, out in dirs.items():
        summary = collect.collect(_config(out, episodes=12, seed=5, workers=workers))
        assert (summary.written, summary.already_present, summary.failed) == (12, 0, [])
    expected = [collect.output_name(_config(dirs[1], seed=5), i) for i in range(12)]
    assert _names(dirs[1]) == _names(dirs[2]) == sorted(expected)
    match, mismatch, errors = filecmp.cmpfiles(dirs[1], dirs[2], expected, shallow=False)
    assert (len(match), mismatch, errors) == (12, [], [])
    seeds = [rawlog.read_header(str(dirs[2] / name))["metadata"][schema.SEED] for name in expected]
    assert seeds == [collect.episode_seed(5, i) for i in range(12)]


# --- Resume ------------------------------------------------------------------------


def test_rerun_collects_only_the_missing_indices(tmp_path):
    first = _in_memory(_config(tmp_path, episodes=6, seed=2))
    assert (first.requested, first.written, first.already_present) == (6, 6, 0)
    config = _config(tmp_path, episodes=8, seed=2)
    deleted = [collect.output_name(config, i) for i in (1, 4)]
    before = {n: (tmp_path / n).read_bytes() for n in _names(tmp_path) if n not in deleted}
    for name in deleted:
        os.unlink(tmp_path / name)
    (tmp_path / ".tmp-xyz.nsep").write_bytes(b"junk left by a killed writer")

    summary = _in_memory(config)
    assert summary.already_present == 4
    assert summary.written == 4
    assert summary.failed == []
    assert _temporaries(tmp_path) == []
    expected = sorted(collect.output_name(config, i) for i in range(8))
    assert _names(tmp_path) == expected
    for name in expected:
        episode = rawlog.read_episode(str(tmp_path / name))
        assert episode.metadata[schema.EPISODE_ID] + rawlog.EXTENSION == name
    # The kept files were not rewritten.
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data

    again = _in_memory(config)
    assert (again.written, again.already_present) == (0, 8)


def test_killed_collect_resumes_to_the_same_files(tmp_path):
    out, fresh = tmp_path / "killed", tmp_path / "fresh"
    episodes = 40
    command = [NEVERSTOP, "collect", "--task", "base", "--policy", "scripted"]
    command += ["--episodes", str(episodes), "--seed", "3", "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Beam's workers join this group, so one kill ends all
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            done = len(rawlog.list_episode_files(str(out)))
            if done >= 5 or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "collect ended before it could be killed"
    at_kill = rawlog.list_episode_files(str(out))
    assert 5 <= len(at_kill) < episodes
    for path in at_kill:  # atomic writes: whatever is there is whole
        rawlog.read_episode(path)

    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    written, present = map(
        int, re.search(r"(\d+) episodes written, (\d+) already there", completed.stdout).groups()
    )
    assert written + present == episodes
    assert present >= len(at_kill)

    config = _config(out, episodes=episodes, seed=3, workers=2)
    expected = [collect.output_name(config, i) for i in range(episodes)]
    # No temporaries, no _failures; the CLI keeps its worker log beside the episodes.
    assert _names(out) == ["_logs"] + sorted(expected)
    assert (out / "_logs" / "collect.log").stat().st_size > 0
    for name in expected:
        episode = rawlog.read_episode(str(out / name))
        assert episode.metadata[schema.SEED] == collect.episode_seed(3, expected.index(name))

    summary = _in_memory(_config(fresh, episodes=10, seed=3))
    assert summary.written == 10
    match, mismatch, errors = filecmp.cmpfiles(out, fresh, expected[:10], shallow=False)
    assert (len(match), mismatch, errors) == (10, [], [])


def test_rerun_recollects_a_file_corrupted_after_its_header(tmp_path):
    config = _config(tmp_path, episodes=3, seed=0)
    assert _in_memory(config).written == 3
    path = tmp_path / collect.output_name(config, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])  # cut inside the images
    with pytest.raises(rawlog.RawLogError):
        rawlog.read_episode(str(path))

    summary = _in_memory(config)
    assert (summary.written, summary.already_present) == (1, 2)
    rawlog.read_episode(str(path))
    # The damaged file is kept for inspection, not silently deleted.
    kept = tmp_path / collect.CORRUPT_DIR / path.name
    assert kept.read_bytes() == data[: len(data) - 500]


# --- Failures ----------------------------------------------------------------------


class _FailOnSeed:
    """The scripted grasper, except that one seed raises at reset."""

    def __init__(self, env, bad_seed: int):
        self.env = env
        self.bad_seed = bad_seed
        self.inner = policies.ScriptedGrasper(env)
        self.name = self.inner.name

    def reset(self, rng):
        if self.env._seed == self.bad_seed:
            raise RuntimeError("boom")
        self.inner.reset(rng)

    def __call__(self, observation, rng):
        return self.inner(observation, rng)


def _flaky(env, config):
    return _FailOnSeed(env, collect.episode_seed(config.seed, 2))


def test_a_failing_seed_is_reported_and_the_rest_are_written(tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    config = _config(out, episodes=5, seed=4)
    summary = _in_memory(config, policy_factory=_flaky)

    assert summary.written == 4
    [failure] = summary.failed
    assert failure["index"] == 2
    assert failure["seed"] == collect.episode_seed(4, 2)
    assert failure["error"] == "RuntimeError: boom"
    assert "RuntimeError: boom" in failure["traceback"]
    expected = [collect.output_name(config, i) for i in range(5)]
    assert _names(out) == sorted([n for i, n in enumerate(expected) if i != 2] + ["_failures"])
    with open(out / collect.FAILURES_DIR / "000002.json") as f:
        assert json.load(f) == failure

    # Re-running retries just the failed seed and clears the failure record.
    retry = _in_memory(config)
    assert (retry.written, retry.already_present, retry.failed) == (1, 4, [])
    assert _names(out) == sorted(expected)

    # The failure did not disturb the episodes after it.
    assert _in_memory(_config(fresh, episodes=5, seed=4)).written == 5
    match, mismatch, errors = filecmp.cmpfiles(out, fresh, expected, shallow=False)
    assert (len(match), mismatch, errors) == (5, [], [])


def test_a_custom_policy_factory_is_counted_and_resumed(tmp_path):
    def scorer(env, config):
        return policies.ScorerPolicy(lambda obs, actions: -actions[:, 2], 8, name="scorer")

    config = _config(tmp_path, policy="scorer", episodes=2)
    first = _in_memory(config, policy_factory=scorer)
    assert len(rawlog.list_episode_files(str(tmp_path))) == 2
    assert first.written == 2
    again = _in_memory(config, policy_factory=scorer)
    assert (again.written, again.already_present) == (0, 2)


# --- Progress, epsilon, size, formats ------------------------------------------------


def test_progress_ticks_once_per_new_episode(tmp_path):
    assert _in_memory(_config(tmp_path, episodes=2, seed=1)).written == 2
    ticks = []
    summary = _in_memory(
        _config(tmp_path, episodes=5, seed=1), progress=lambda n, ok: ticks.append((n, ok))
    )
    assert summary.written == 3
    assert sum(n for n, _ in ticks) == 3
    assert sum(int(ok) for _, ok in ticks) == summary.successes


def test_epsilon_greedy_collection_records_the_policy_label(tmp_path):
    config = _config(tmp_path, episodes=2, epsilon=0.2)
    summary = _in_memory(config)
    assert summary.written == 2
    for index in range(2):
        path = tmp_path / collect.output_name(config, index)
        assert path.name == f"sim-base-scripted-eps=0.2-s0-00000{index}.nsep"
        episode = rawlog.read_episode(str(path))
        assert episode.metadata[schema.POLICY] == "scripted@eps=0.2"
        assert episode.provenance["index"] == index


def test_episode_files_hold_under_1_5_kb_per_step(tmp_path):
    summary = _in_memory(_config(tmp_path, episodes=30, seed=0))
    assert summary.written == 30
    files = rawlog.list_episode_files(str(tmp_path))
    total_bytes = sum(os.path.getsize(p) for p in files)
    total_steps = sum(rawlog.read_header(p)["num_steps"] for p in files)
    per_step = total_bytes / total_steps
    print(f"\n.nsep size: {total_bytes} bytes / {total_steps} steps = {per_step:.0f} bytes/step")
    assert total_steps >= 30 * 2
    assert per_step < 1500


@pytest.fixture(scope="module")
def rosbag_and_nsep(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    runs = {}
    for fmt in collect.FORMATS:
        config = _config(root / fmt, episodes=3, seed=3, format=fmt)
        runs[fmt] = (config, _in_memory(config))
    return runs


def test_rosbag_format_writes_one_bag_directory_per_episode(rosbag_and_nsep):
    config, summary = rosbag_and_nsep["rosbag"]
    assert summary.written == 3
    expected = [collect.output_name(config, i) for i in range(3)]
    assert _names(config.out) == sorted(expected)
    for name in expected:
        assert name.endswith(".bag")
        assert os.path.isfile(os.path.join(config.out, name, "metadata.yaml"))
    again = _in_memory(config)
    assert (again.written, again.already_present) == (0, 3)


def test_rosbag_summary_counts_successes_like_nsep(rosbag_and_nsep):
    nsep_successes = rosbag_and_nsep["nsep"][1].successes
    assert nsep_successes >= 1  # seed 3: two of the three episodes succeed
    assert rosbag_and_nsep["rosbag"][1].successes == nsep_successes


def test_rosbag_rerun_removes_a_killed_writers_scratch_directory(tmp_path):
    scratch = tmp_path / ".tmp-k1ll3d" / "bag"
    scratch.mkdir(parents=True)
    (scratch / "metadata.yaml").write_text("half a bag")
    summary = _in_memory(_config(tmp_path, episodes=1, format="rosbag"))
    assert summary.written == 1
    assert _temporaries(tmp_path) == []


def test_a_policy_whose_name_differs_from_the_label_is_refused(tmp_path):
    def scorer(env, config):
        return policies.ScorerPolicy(lambda obs, actions: -actions[:, 2], 8, name="scorer")

    config = _config(tmp_path, policy="random", episodes=1)
    with pytest.raises(Exception, match="labelled 'random'"):
        _in_memory(config, policy_factory=scorer)
    assert rawlog.list_episode_files(str(tmp_path)) == []
