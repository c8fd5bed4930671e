"""Tests for acting with a trained Q-network: eval, export, the vision stand-in."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from neverstop import cli, rawlog, schema
from neverstop.envs import collect, grasp_env, policies
from neverstop.trainers import checkpoints, evaluate, export, qtopt, run, vision
from neverstop.trainers import policy as policy_lib
from neverstop.trainers.config import ConfigError
from tests.trainers.helpers import BASE, make_data_dir, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    data_dir = make_data_dir(root)
    run_dir = str(root / "run")
    run.train(tiny_config(), BASE, data_dir, run_dir, progress=False)
    return data_dir, run_dir


def test_eval_in_parallel_processes_matches_acting_in_this_one(trained, tmp_path):
    _, run_dir = trained
    result = evaluate.evaluate(run_dir, "base", episodes=4, workers=2, seed=7)
    out = str(tmp_path / "eval" / "base.json")
    evaluate.write_result(result, out)
    saved = json.load(open(out))
    assert saved["episodes"] == 4 and saved["task"] == "base"
    assert saved["object_split"] == "eval"
    assert saved["checkpoint"] == "run.ckpt-20"
    low, high = saved["interval_95"]
    assert 0 <= low <= saved["success_rate"] <= high <= 1
    # The same seeds acted here, in one process, give the same outcomes.
    policy = policy_lib.from_checkpoint(run_dir)
    outcomes, steps = "", 0
    with grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="eval")) as env:
        for i in range(4):
            _, actions, _, info = policies.run_episode(env, policy, collect.episode_seed(7, i))
            outcomes += "1" if info["success"] else "0"
            steps += len(actions)
    # Episode by episode, in seed order, whichever worker ran which.
    assert saved["outcomes"] == outcomes
    assert (saved["successes"], saved["steps"]) == (outcomes.count("1"), steps)


def test_the_policy_is_named_after_its_checkpoint_and_wraps_in_epsilon_greedy(trained, tmp_path):
    _, run_dir = trained
    policy = policy_lib.from_checkpoint(run_dir, epsilon=0.2)
    assert policy.name == "qtopt:run.ckpt-20@eps=0.2"
    # The name is a valid collection label, so the collector can record it.
    label = collect.validate_config(
        collect.CollectConfig(policy=policy.name, out=str(tmp_path)), named_policy=False
    )
    assert label.policy == policy.name
    action = policy(
        {
            schema.IMAGE: np.zeros(schema.IMAGE_SHAPE, np.uint8),
            schema.GRIPPER_CLOSED: 0.0,
            schema.HEIGHT_TO_BOTTOM: 0.2,
        },
        np.random.default_rng(0),
    )
    assert action.shape == (5,) and action.dtype == np.float32
    assert np.all(np.abs(action) <= 1)


def _collect_cli(run_dir: str, out, workers: int, *extra: str) -> int:
    return cli.main(
        ["collect", "--task", "base", "--checkpoint", run_dir, "--epsilon", "0.2"]
        + ["--explore", "moves", "--episodes", "4", "--seed", "5", "--out", str(out)]
        + ["--workers", str(workers), *extra]
    )


def test_collect_with_a_checkpoint_writes_the_same_files_whatever_the_workers(
    trained, tmp_path, capsys
):
    _, run_dir = trained
    dirs = {workers: tmp_path / f"workers{workers}" for workers in (0, 1, 2)}
    for workers, out in dirs.items():
        assert _collect_cli(run_dir, out, workers) == 0
        assert "4 episodes written" in capsys.readouterr().out
    label = "qtopt:run.ckpt-20@eps=0.2+moves"
    config = collect.CollectConfig(policy="qtopt:run.ckpt-20", seed=5, epsilon=0.2, explore="moves")
    names = [collect.output_name(config, i) for i in range(4)]
    for out in dirs.values():
        assert sorted(n for n in os.listdir(out) if n.endswith(".nsep")) == sorted(names)
    match, mismatch, errors = filecmp.cmpfiles(dirs[1], dirs[2], names, shallow=False)
    assert (len(match), mismatch, errors) == (4, [], [])
    # Each file is what the checkpoint's policy does on that seed in this
    # process, and records the policy by its checkpoint and exploration:
    # exactly with --workers 0 (this process's threads), and to the last bits
    # in one-thread workers.
    policy = policy_lib.from_checkpoint(run_dir, epsilon=0.2, explore="moves")
    with grasp_env.GraspEnv("base") as env:
        for i in range(4):
            _, actions, _, info = policies.run_episode(env, policy, collect.episode_seed(5, i))
            for workers, tolerance in ((0, 0.0), (2, 1e-6)):
                episode = rawlog.read_episode(str(dirs[workers] / names[i]))
                assert episode.metadata[schema.POLICY] == label
                assert episode.metadata[schema.SUCCESS] == info["success"]
                logged = episode.steps[schema.ACTION][: len(actions)]
                np.testing.assert_allclose(logged, np.array(actions), rtol=0, atol=tolerance)


def test_collect_refuses_a_missing_checkpoint_or_two_policies_and_writes_nothing(
    trained, tmp_path, capsys
):
    _, run_dir = trained
    out = tmp_path / "out"
    missing = str(tmp_path / "nothing" / "ckpt-5")
    assert _collect_cli(missing, out, 1) == 2
    assert missing in capsys.readouterr().err
    assert _collect_cli(run_dir, out, 1, "--policy", "scripted") == 2
    assert "give --policy or --checkpoint, not both" in capsys.readouterr().err
    assert not out.exists() or not [n for n in os.listdir(out) if n.endswith(".nsep")]


_FRESH = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
act = model.signatures["serving_default"]
from neverstop.envs import grasp_env
actions = []
with grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="eval")) as env:
    obs = env.reset(3)
    done = False
    while not done:
        out = act(
            image=tf.constant(obs["image"][None]),
            gripper_closed=tf.constant([obs["gripper_closed"]], tf.float32),
            height_to_bottom=tf.constant([obs["height_to_bottom"]], tf.float32),
        )["action"].numpy()
        actions.append(out[0].tolist())
        obs, reward, done, info = env.step(out[0])
print(json.dumps({
    "actions": actions,
    "trainer_imported": any(m.startswith("neverstop.trainers") for m in sys.modules),
}))
"""


def act_in_fresh_process(out: str) -> dict:
    """Runs the SavedModel at `out` for one episode (seed 3) in a fresh
    Python that never imports the trainer; its {"actions", "trainer_imported"}."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, out], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["trainer_imported"] is False
    return result


def fresh_first_observation() -> dict:
    """The first observation of the episode act_in_fresh_process runs."""
    with grasp_env.GraspEnv("base", grasp_env.EnvConfig(object_split="eval")) as env:
        return env.reset(3)


def test_the_exported_savedmodel_acts_in_a_fresh_process(trained, tmp_path):
    _, run_dir = trained
    out = str(tmp_path / "exported")
    info = export.export(run_dir, out)
    assert info["checkpoint"] == "run.ckpt-20"
    assert json.load(open(os.path.join(out, "policy.json")))["merge"] == "late"
    result = act_in_fresh_process(out)
    actions = np.array(result["actions"])
    assert 1 <= len(actions) <= schema.MAX_EPISODE_STEPS
    assert actions.shape[1] == 5 and np.all(np.abs(actions) <= 1)
    # Its first action is the greedy CEM action of the checkpoint with the
    # model's first generator seed.
    network, config, _ = checkpoints.load_network(run_dir)
    obs = fresh_first_observation()
    seed = tf.random.Generator.from_seed(0).make_seeds(1)[:, 0]
    expected = policy_lib.greedy_actions(
        network,
        config.cem,
        {
            schema.IMAGE: obs[schema.IMAGE][None],
            schema.GRIPPER_CLOSED: tf.constant([obs[schema.GRIPPER_CLOSED]], tf.float32),
            schema.HEIGHT_TO_BOTTOM: tf.constant([obs[schema.HEIGHT_TO_BOTTOM]], tf.float32),
        },
        seed,
    )
    np.testing.assert_allclose(actions[0], expected.numpy()[0], atol=1e-5)
    with pytest.raises(FileExistsError, match="not empty"):
        export.export(run_dir, out)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match=f"--out {afile}: is a file"):
        export.export(run_dir, str(afile))
    assert afile.read_text() == "x"


def test_export_of_a_checkpoint_that_cannot_be_loaded_leaves_no_out_dir(tmp_path):
    missing = str(tmp_path / "no-such-run")
    out = tmp_path / "exported"
    with pytest.raises(Exception, match="no-such-run") as error:
        export.export(missing, str(out))
    assert not isinstance(error.value, FileExistsError)
    assert not out.exists()
    # An empty directory the user made beforehand is theirs: it stays.
    out.mkdir()
    with pytest.raises(Exception, match="no-such-run"):
        export.export(missing, str(out))
    assert out.is_dir() and list(out.iterdir()) == []


def test_vision_stand_in_initialises_the_tower_and_is_recorded(trained, tmp_path):
    data_dir, _ = trained
    path = str(tmp_path / "tower.npz")
    meta = vision.pretrain(tiny_config(), path, images=16, epochs=1, progress=False)
    assert meta["kind"] == "supervised-sim-stand-in" and meta["images"] == 16
    assert np.isfinite(meta["validation_loss"]) and np.isfinite(meta["baseline_loss"])
    labels = vision.occupancy([np.array([0.6, 0.0, 0.02]), np.array([0.49, -0.11, 0.02])])
    assert labels.sum() == 2 and labels[4 * 8 + 4] == 1 and labels[0] == 1
    config = tiny_config(mode="imagenet", steps=2)
    learner = qtopt.QTOpt(config)
    run.initialise(learner, config, None, path)
    with np.load(path) as data:
        for i, w in enumerate(learner.target1.tower.weights):
            np.testing.assert_array_equal(w.numpy(), data[f"w{i:03d}"])
    run_dir = str(tmp_path / "imagenet")
    run.train(config, BASE, data_dir, run_dir, vision_weights=path, progress=False)
    lineage = checkpoints.read_json(os.path.join(run_dir, "lineage.json"))
    assert lineage["vision_weights"]["kind"] == "supervised-sim-stand-in"
    # A tower file of another architecture is refused, naming the field.
    with pytest.raises(ConfigError, match="tower_filters"):
        vision.load_tower(
            path,
            qtopt.QTOpt(tiny_config(tower_filters=((4, 8, 4),))).online.tower,
            tiny_config(tower_filters=((4, 8, 4),)),
        )
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a neverstop vision weights file"):
        vision.load_tower(str(bad), learner.online.tower, config)
    bad.write_bytes(b"")  # numpy says EOFError
    with pytest.raises(ConfigError, match="not a neverstop vision weights file"):
        vision.load_tower(str(bad), learner.online.tower, config)
