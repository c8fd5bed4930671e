"""Tests for neverstop/trainers: CEM, the Bellman target, runs, resume, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from neverstop import schema
from neverstop.datasets import mixture as mixture_lib
from neverstop.datasets import transitions as tr
from neverstop.trainers import cem, checkpoints, qtopt, run
from neverstop.trainers.config import CEMConfig, ConfigError, TrainConfig, check_compatible
from neverstop.trainers.networks import QNetwork
from tests.trainers.helpers import BASE, make_data_dir, tiny_config

REPO_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("trainer"), tasks=("base", "checkerboard"))


@pytest.fixture(scope="module")
def base_run(data_dir, tmp_path_factory):
    """A finished 20-step pretrain run of the tiny network."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "base")
    summary = run.train(tiny_config(), BASE, data_dir, run_dir, progress=False)
    return run_dir, summary


# --- CEM and the target ------------------------------------------------------------------


def test_cem_finds_the_maximiser_of_a_concave_function():
    optimum = tf.constant(
        [[0.3, -0.5, 0.8, 0.0, -0.2], [-0.9, 0.9, -0.1, 0.45, 0.6], [0.0, 0.0, 0.0, 0.0, 0.95]]
    )

    def score(actions):  # [B, N, 5] -> [B, N], maximal (0) exactly at `optimum`
        return -tf.reduce_sum(tf.square(actions - optimum[:, None, :]) * [1, 2, 3, 1, 0.5], -1)

    config = CEMConfig(samples=64, elites=6, iterations=8)
    best, value = cem.maximize(score, 3, tf.constant([4, 2]), config)
    assert np.abs(best.numpy() - optimum.numpy()).max() < 0.05
    np.testing.assert_allclose(value.numpy(), score(best[:, None, :]).numpy()[:, 0], rtol=1e-5)
    # With QT-Opt's defaults (2 iterations) it still improves on the centre.
    best2, value2 = cem.maximize(score, 3, tf.constant([4, 2]), CEMConfig())
    assert np.all(value2.numpy() > score(tf.zeros([3, 1, 5])).numpy()[:, 0])
    # Same seed, same answer; actions stay in [-1, 1].
    again, _ = cem.maximize(score, 3, tf.constant([4, 2]), CEMConfig())
    np.testing.assert_array_equal(best2.numpy(), again.numpy())
    assert np.all(np.abs(best2.numpy()) <= 1.0)
    # select="mean" returns the final elites' mean, also near the maximiser, with its score.
    mean, mean_value = cem.maximize(
        score, 3, tf.constant([4, 2]), CEMConfig(iterations=8, select="mean")
    )
    assert np.abs(mean.numpy() - optimum.numpy()).max() < 0.05
    assert not np.array_equal(mean.numpy(), best.numpy())
    np.testing.assert_allclose(mean_value.numpy(), score(mean[:, None, :]).numpy()[:, 0], rtol=1e-5)
    with pytest.raises(ConfigError, match="select must be one of best, mean"):
        CEMConfig(select="median")


class _ConstantQ:
    """A stand-in target network: Q(s', a) = q[i] for state i, whatever a."""

    def __init__(self, q):
        self.q = tf.constant(q, tf.float32)

    def features(self, image):
        return tf.zeros([tf.shape(image)[0], 1]) + self.q[:, None]

    def logits(self, features, state, action):
        p = tf.clip_by_value(features[:, 0], 1e-6, 1 - 1e-6)
        return tf.math.log(p) - tf.math.log(1 - p)


def test_bellman_target_matches_a_hand_computed_batch():
    b = 4
    image = tf.zeros([b, 64, 64, 3], tf.uint8)
    observation = {
        schema.IMAGE: image,
        schema.GRIPPER_CLOSED: tf.zeros([b]),
        schema.HEIGHT_TO_BOTTOM: tf.zeros([b]),
    }
    batch = {
        tr.NEXT_OBSERVATION: observation,
        schema.REWARD: tf.constant([0.0, 1.0, 0.0, 0.0]),
        tr.TERMINAL: tf.constant([False, True, False, True]),
    }
    target1 = _ConstantQ([0.6, 0.9, 0.3, 0.8])
    target2 = _ConstantQ([0.5, 0.2, 0.7, 0.9])
    out = qtopt.clipped_double_q_target(
        batch, target1, target2, TrainConfig(gamma=0.9), tf.constant([1, 2])
    )
    # y = r + 0.9 * (1 - terminal) * min(q1, q2):
    #   0 + 0.9 * min(.6, .5) = .45;  terminal success: 1;  0 + 0.9 * min(.3, .7) = .27;
    #   terminal failure: 0 (the bootstrap .8/.9 must not leak in).
    np.testing.assert_allclose(out["target"].numpy(), [0.45, 1.0, 0.27, 0.0], atol=1e-5)
    np.testing.assert_allclose(out["q1_next"].numpy(), [0.6, 0.9, 0.3, 0.8], atol=1e-5)
    np.testing.assert_allclose(out["q2_next"].numpy(), [0.5, 0.2, 0.7, 0.9], atol=1e-5)
    # A per-step penalty cannot push the label below 0.
    y = qtopt.bellman_target([-0.5], [True], [0.5], [0.5], 0.9)
    assert float(y[0]) == 0.0


def test_terminal_transitions_weigh_terminal_weight_times_in_the_loss():
    y = tf.constant([1.0, 0.0, 0.45, 0.2])
    logits = tf.constant([0.5, -1.0, 0.0, 2.0])
    terminal = tf.constant([True, True, False, False])
    p = 1 / (1 + np.exp(-logits.numpy()))
    ce = -(y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))
    for w in (1.0, 4.0):
        expected = (w * ce[0] + w * ce[1] + ce[2] + ce[3]) / 4
        got = float(qtopt.weighted_cross_entropy(y, logits, terminal, w))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(qtopt.weighted_cross_entropy(y, logits, terminal, 4.0)) > float(
        qtopt.weighted_cross_entropy(y, logits, terminal, 1.0)
    )
    with pytest.raises(ConfigError, match="terminal_weight must be > 0, got 0"):
        TrainConfig(terminal_weight=0)


def test_the_train_step_moves_q_towards_the_targets_and_the_targets_lag():
    config = tiny_config(lag_steps=3, polyak=0.5, learning_rate=1e-2)
    learner = qtopt.QTOpt(config)
    from neverstop.benchmarks.train_bench import synthetic_batch

    batch = synthetic_batch(config)
    before = learner.online.get_numpy()
    t2_before = learner.target2.get_numpy()
    for _ in range(3):
        learner.train_step(batch)
    # Q'1 follows the online net (Polyak), Q'2 is copied from Q'1 at step 3 only.
    online, t1, t2 = (n.get_numpy() for n in (learner.online, learner.target1, learner.target2))
    assert any(not np.array_equal(a, b) for a, b in zip(before, online))
    assert all(np.array_equal(a, b) for a, b in zip(t1, t2))
    assert any(not np.array_equal(a, b) for a, b in zip(t1, t2_before))
    learner.train_step(batch)
    t1, t2 = learner.target1.get_numpy(), learner.target2.get_numpy()
    assert any(not np.array_equal(a, b) for a, b in zip(t1, t2))
    assert int(learner.step) == 4


def test_training_fits_the_bellman_targets_of_a_batch():
    from neverstop.benchmarks.train_bench import synthetic_batch

    config = tiny_config(learning_rate=3e-3)
    learner = qtopt.QTOpt(config)
    batch = synthetic_batch(config)
    y = qtopt.clipped_double_q_target(
        batch, learner.target1, learner.target2, config, tf.constant([0, 0])
    )["target"]

    def cross_entropy():
        logits = learner.online(batch[tr.OBSERVATION], batch[schema.ACTION])
        return float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, logits)))

    before = cross_entropy()
    for _ in range(30):
        learner.train_step(batch)
    assert cross_entropy() < before - 0.01


@pytest.mark.parametrize("merge", ["late", "qtopt"])
def test_both_merge_points_build_and_score_actions(merge):
    config = tiny_config(merge=merge)
    network = QNetwork(config)
    image = tf.zeros([2, 64, 64, 3], tf.uint8)
    features = network.features(image)
    expected_rank = 2 if merge == "late" else 4
    assert len(features.shape) == expected_rank
    scores = cem.network_score_fn(network, features, tf.zeros([2, 2]))(tf.zeros([2, 5, 5]))
    assert scores.shape == (2, 5)
    assert np.all((scores.numpy() > 0) & (scores.numpy() < 1))


def test_keypoints_are_where_each_channel_fires():
    from neverstop.trainers.networks import SpatialSoftArgmax

    fmap = np.zeros([1, 8, 8, 2], np.float32)
    fmap[0, 2, 5, 0] = 50.0  # channel 0 fires at row 2, column 5
    fmap[0, 7, 0, 1] = 50.0  # channel 1 at the bottom-left corner
    points = SpatialSoftArgmax()(tf.constant(fmap)).numpy().reshape(2, 2)
    grid = np.linspace(-1.0, 1.0, 8)
    np.testing.assert_allclose(points[0], [grid[5], grid[2]], atol=1e-3)  # (x, y)
    np.testing.assert_allclose(points[1], [-1.0, 1.0], atol=1e-3)
    network = QNetwork(tiny_config(keypoints=True))
    assert network.feature_shape[-1] == tiny_config().head_units[0] + 2 * 16  # 16 channels
    with pytest.raises(ConfigError, match="keypoints"):
        tiny_config(merge="qtopt", keypoints=True)
    # A config written before the option existed meant a network without keypoints.
    saved = tiny_config().as_dict()
    del saved["keypoints"]
    assert TrainConfig().keypoints and not TrainConfig.from_dict(saved).keypoints
    # A partial config (a user's overrides in --config) means today's defaults.
    assert TrainConfig.from_dict({"steps": 10}).keypoints
    assert not TrainConfig.from_dict({"steps": 10, "keypoints": False}).keypoints
    check_compatible(saved, tiny_config(keypoints=False), "old")
    with pytest.raises(ConfigError, match="keypoints"):
        check_compatible(saved, tiny_config(keypoints=True), "old")


# --- runs ----------------------------------------------------------------------------------


def test_a_run_writes_config_lineage_metrics_and_checkpoints(base_run, data_dir):
    run_dir, summary = base_run
    assert summary.final_step == 20
    assert sorted(f for f in os.listdir(run_dir) if f.endswith(".index")) == [
        "ckpt-10.index",
        "ckpt-20.index",
    ]
    assert checkpoints.read_config(run_dir) == tiny_config()
    lineage = checkpoints.read_json(os.path.join(run_dir, "lineage.json"))
    assert lineage["mode"] == "pretrain"
    assert lineage["mixture"] == BASE.as_dict()
    assert lineage["datasets"][0]["dataset"] == "grasps/base:1.0.0"
    assert lineage["datasets"][0]["episodes"] == 25
    assert lineage["parent_checkpoint"] is None
    metrics = run.read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]
    for m in metrics:
        keys = {"loss", "cross_entropy", "mean_q", "target_q", "td_error", "steps_per_s"}
        assert set(m) == keys | {"step", "time"} and m["steps_per_s"] > 0
        assert np.isfinite(m["loss"]) and 0 < m["mean_q"] < 1 and 0 <= m["target_q"] <= 1
    events = os.listdir(os.path.join(run_dir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_rerunning_a_finished_run_changes_nothing_and_more_steps_extend_it(
    base_run, data_dir, tmp_path
):
    run_dir, _ = base_run
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy)
    digest = run.checkpoint_digest(os.path.join(copy, "ckpt-20"))
    summary = run.train(tiny_config(), BASE, data_dir, copy, progress=False)
    assert (summary.start_step, summary.final_step) == (20, 20)
    assert run.checkpoint_digest(os.path.join(copy, "ckpt-20")) == digest
    summary = run.train(tiny_config(steps=25), BASE, data_dir, copy, progress=False)
    assert (summary.start_step, summary.final_step) == (20, 25)
    assert checkpoints.locate(copy).step == 25


def test_finetune_starts_from_the_parent_at_a_quarter_of_the_learning_rate(
    base_run, data_dir, tmp_path
):
    parent_dir, _ = base_run
    mixture = mixture_lib.Mixture.parse("base:train:0.5,checkerboard:train[:10]:0.5")
    config = tiny_config(mode="finetune", steps=1)
    learner = qtopt.QTOpt(config)
    parent, _ = run.initialise(learner, config, parent_dir, None)
    parent_net, _, _ = checkpoints.load_network(parent_dir)
    for mine, theirs in zip(learner.target2.get_numpy(), parent_net.get_numpy()):
        np.testing.assert_array_equal(mine, theirs)
    assert float(learner.optimizer.learning_rate) == pytest.approx(0.25 * config.learning_rate)
    run_dir = str(tmp_path / "ft")
    run.train(config, mixture, data_dir, run_dir, init=parent_dir, progress=False)
    lineage = checkpoints.read_json(os.path.join(run_dir, "lineage.json"))
    assert lineage["parent_checkpoint"]["id"] == f"{os.path.basename(parent_dir)}.ckpt-20"
    assert [d["dataset"] for d in lineage["datasets"]] == [
        "grasps/base:1.0.0",
        "grasps/checkerboard:1.0.0",
    ]


@pytest.mark.parametrize("actor", [False, True], ids=["q", "q+actor"])
def test_resume_after_sigkill_is_exact(data_dir, tmp_path, actor):
    """200 steps in one go == 100 steps, SIGKILL, resume to 200 (all variables,
    the actor's and its optimizer's too when there is one)."""
    env = dict(os.environ, PYTHONPATH=REPO_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = [sys.executable, "-m", "tests.trainers._train_child", data_dir]
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

    def finish(run_dir):
        out = subprocess.run(
            child + [run_dir, "200", str(int(actor))],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]

    straight = finish(str(tmp_path / "straight"))
    killed_dir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        child + [killed_dir, "200", str(int(actor)), "100"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(killed_dir, "hanging")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the child never reached step 100"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoints.locate(killed_dir).step == 100
    resumed = finish(killed_dir)
    assert resumed == straight
    metrics = run.read_metrics(killed_dir)
    assert [m["step"] for m in metrics] == [25, 50, 75, 100, 125, 150, 175, 200]


# --- bad input -----------------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    run_dir = str(tmp_path / "nan")
    calls = []

    def poison(batch):
        calls.append(1)
        if len(calls) == 13:
            batch = dict(batch, **{schema.REWARD: batch[schema.REWARD] * np.nan})
        return batch

    with pytest.raises(run.TrainingDivergedError) as e:
        run.train(tiny_config(), BASE, data_dir, run_dir, progress=False, batch_hook=poison)
    message = str(e.value)
    assert "non-finite at step 13" in message
    assert "last good checkpoint is step 10" in message
    assert checkpoints.locate(run_dir).step == 10
    assert [m["step"] for m in run.read_metrics(run_dir)] == [5, 10]


def test_an_incompatible_checkpoint_is_refused_before_anything_is_written(
    base_run, data_dir, tmp_path
):
    parent_dir, _ = base_run
    other = tiny_config(mode="finetune", tower_filters=((8, 8, 4), (32, 4, 2)))
    run_dir = str(tmp_path / "ft")
    with pytest.raises(ConfigError) as e:
        run.train(other, BASE, data_dir, run_dir, init=parent_dir, progress=False)
    assert "tower_filters" in str(e.value) and "ckpt-20" in str(e.value)
    assert not os.path.exists(os.path.join(run_dir, "config.json"))
    assert (
        not any(f.endswith(".index") for f in os.listdir(run_dir))
        if os.path.exists(run_dir)
        else True
    )
    # Resuming a run dir with a different config is refused too, and changes nothing.
    before = sorted(os.listdir(parent_dir))
    with pytest.raises(ConfigError, match="different config.*gamma"):
        run.train(tiny_config(gamma=0.8), BASE, data_dir, parent_dir, progress=False)
    assert sorted(os.listdir(parent_dir)) == before


def test_a_mixture_the_network_cannot_eat_is_refused(data_dir, tmp_path):
    run_dir = str(tmp_path / "r")
    with pytest.raises(ConfigError, match="expects 32x32x3 images.*64x64x3"):
        run.train(tiny_config(image_size=32), BASE, data_dir, run_dir, progress=False)
    with pytest.raises(mixture_lib.MixtureError, match="grasps/harsh_lighting"):
        run.train(
            tiny_config(),
            mixture_lib.Mixture.parse("harsh_lighting:train:1"),
            data_dir,
            run_dir,
            progress=False,
        )
    assert not os.path.exists(run_dir)


def test_mode_flags_are_checked(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs --init"):
        run.train(tiny_config(mode="finetune"), BASE, data_dir, str(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="needs --vision-weights"):
        run.train(tiny_config(mode="imagenet"), BASE, data_dir, str(tmp_path / "b"), progress=False)
    with pytest.raises(ConfigError, match="unknown mode"):
        tiny_config(mode="imagenette")
    with pytest.raises(ConfigError, match="unknown config keys \\['gama'\\]"):
        TrainConfig.from_dict({"gama": 0.9})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"augment": "no"}, "augment must be true or false, got 'no'"),
        ({"batch_size": "big"}, "batch_size must be an integer, got 'big'"),
        ({"batch_size": None}, "batch_size must be an integer, got None"),
        ({"batch_size": 8.5}, "batch_size must be an integer, got 8.5"),
        ({"steps": "3"}, "steps must be an integer, got '3'"),
        ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
        ({"tower_filters": 5}, "tower_filters must be a non-empty list of .* got 5"),
        ({"head_units": [256, "x"]}, "head_units must be a list of integers"),
        ({"cem": {"bogus": 1}}, "unknown cem keys \\['bogus'\\]"),
        ({"cem": {"samples": "64"}}, "cem.samples must be an integer, got '64'"),
        ({"cem": 3}, "cem must be a mapping of CEM settings, got 3"),
    ],
)
def test_a_config_file_with_a_value_of_the_wrong_type_is_refused_naming_file_and_field(
    tmp_path, fields, message
):
    path = tmp_path / "override.json"
    path.write_text(json.dumps(fields))
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        TrainConfig.load(str(path))


def test_a_config_file_that_is_not_a_json_object_is_refused_naming_it(tmp_path):
    for text, message in (("[1, 2]", "a config is a JSON object of fields, got a list"),
                          ("{steps: 3}", "not a JSON config")):
        path = tmp_path / "c.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"^{path}: {message}"):
            TrainConfig.load(str(path))
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the config"):
        TrainConfig.load(str(tmp_path))
    # Learning rates written as integers are numbers too.
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1


def test_another_merge_takes_its_own_keypoints_default():
    assert TrainConfig().keypoints
    qtopt_config = TrainConfig().with_merge("qtopt")
    assert (qtopt_config.merge, qtopt_config.keypoints) == ("qtopt", False)
    assert qtopt_config.with_merge("late").keypoints
    # A config that set keypoints for its own merge keeps it when the merge stays.
    assert not TrainConfig(keypoints=False).with_merge("late").keypoints


def test_a_truncated_checkpoint_is_an_error_naming_it(base_run, tmp_path):
    parent_dir, _ = base_run
    copy = tmp_path / "cut"
    shutil.copytree(parent_dir, copy)
    data = [f for f in os.listdir(copy) if f.startswith("ckpt-20.data")]
    assert data
    with open(copy / data[0], "r+b") as f:
        f.truncate(100)
    with pytest.raises(ConfigError, match=f"{copy}/ckpt-20: cannot read this checkpoint's files"):
        checkpoints.load_network(str(copy))


def test_a_run_dir_without_its_checkpoint_state_file_names_a_prefix_to_use(base_run, tmp_path):
    parent_dir, _ = base_run
    copy = tmp_path / "copy"
    shutil.copytree(parent_dir, copy)
    os.remove(copy / "checkpoint")
    with pytest.raises(ConfigError, match=f"no `checkpoint` file .* e.g. {copy}/ckpt-20$"):
        checkpoints.locate(str(copy))
    assert checkpoints.locate(str(copy / "ckpt-20")).step == 20
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint in this run directory"):
        checkpoints.locate(str(tmp_path / "empty"))


def test_bench_train_counts_flops_from_the_layers():
    from neverstop.benchmarks import train_bench

    config = tiny_config(batch_size=4)
    flops = train_bench.step_flops(config)
    # conv0: 16x16 out, 8x8x3 kernel, 8 filters; conv1: 8x8 out, 4x4x8, 16 filters;
    # embed: 1024 -> 32. Head: (32 + 2 x 16 keypoints + 2 + 5) -> 16 -> 1.
    conv0 = 2 * 16 * 16 * 8 * 8 * 3 * 8
    tower = conv0 + 2 * 8 * 8 * 4 * 4 * 8 * 16 + 2 * 1024 * 32
    head = 2 * 71 * 16 + 2 * 16
    assert (flops["tower"], flops["head"]) == (tower, head)
    per_example = 3 * (tower + head) - conv0 + 2 * tower + 2 * 8 * head + head
    assert flops["per_example"] == per_example
    assert flops["per_step"] == 4 * per_example


def test_the_bench_compiles_the_same_step_with_xla():
    """`neverstop bench train`'s XLA line times the trainer's own update.
    From the same weights and RNG state both give the same values where no
    random draw enters (Q of the batch, the actor's loss); CEM's draws come
    from XLA's own RNG algorithm, so the targets differ by their sampling."""
    from neverstop.benchmarks import train_bench

    config = tiny_config(actor=True, acting="actor_cem", conservative_weight=0.3)
    batch = train_bench.synthetic_batch(config)
    results = []
    for jit_compile in (False, True):
        tf.keras.utils.set_random_seed(3)
        learner = qtopt.QTOpt(config)
        out = train_bench.compiled_step(learner, jit_compile)(batch)
        results.append(({k: float(v) for k, v in out.items()}, int(learner.step)))
    (plain, plain_step), (xla, xla_step) = results
    assert plain_step == xla_step == 1
    assert sorted(plain) == sorted(xla) == sorted(learner.metric_keys + ("finite",))
    for key in ("mean_q", "actor_loss"):
        np.testing.assert_allclose(xla[key], plain[key], rtol=1e-4)
    assert abs(xla["target_q"] - plain["target_q"]) < 0.05
    assert xla["finite"] == plain["finite"] == 1.0


def test_a_finetune_killed_before_its_first_checkpoint_restarts_from_its_parent(
    base_run, data_dir, tmp_path
):
    parent_dir, _ = base_run
    config = tiny_config(mode="finetune", steps=3)

    def fail_first(batch):
        raise KeyboardInterrupt  # killed before anything was saved

    crashed = str(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        run.train(
            config, BASE, data_dir, crashed, init=parent_dir, progress=False, batch_hook=fail_first
        )
    assert os.path.exists(os.path.join(crashed, "config.json"))
    assert not any(f.endswith(".index") for f in os.listdir(crashed))
    run.train(config, BASE, data_dir, crashed, init=parent_dir, progress=False, deterministic=True)
    fresh = str(tmp_path / "fresh")
    run.train(config, BASE, data_dir, fresh, init=parent_dir, progress=False, deterministic=True)
    assert run.checkpoint_digest(os.path.join(crashed, "ckpt-3")) == run.checkpoint_digest(
        os.path.join(fresh, "ckpt-3")
    )
