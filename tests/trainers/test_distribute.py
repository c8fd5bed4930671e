"""Tests for training across devices (trainers/distribute.py): a mirrored step
is one device's step of the whole batch, resumes exactly, and writes the
checkpoints a one-device run writes; two workers of a cluster train the
same weights as two devices of one machine. The CPU is split into two logical
devices, which TensorFlow allows only before it first touches a device, so
those tests run in fresh processes."""

import glob
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from neverstop.trainers import checkpoints, distribute, run
from neverstop.trainers.config import ConfigError
from neverstop.trainers.networks import QNetwork
from tests.trainers.helpers import make_data_dir, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("distribute"))


def _run(args):
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_mirrored_gradients_are_one_devices_and_the_replicas_stay_in_sync(data_dir, tmp_path):
    run_dir = str(tmp_path / "odd")
    out = _run([sys.executable, "-m", "tests.trainers._distribute_child", data_dir, run_dir])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replicas"] == 2
    # The halves' gradients, averaged, are the whole batch's ...
    assert result["grad_error"] < 1e-5
    # ... which they would not be if each half normalised its own
    # behaviour cloning by its own successes (6 and 1 of 4 here).
    assert result["naive_bc_error"] > 0.01
    assert result["replicas_in_sync"] is True
    assert result["step"] == 3 and result["finite"] is True
    assert "already initialised its devices" in result["late_split_error"]
    assert "batch_size 7 does not split evenly over 2 replicas" in result["odd_batch_error"]
    assert result["odd_batch_wrote"] is False


def _train_args(data_dir, run_dir, config, steps, *extra):
    return (
        [sys.executable, "-m", "neverstop.cli", "train", "--config", config]
        + ["--mixture", "base:train:1", "--data-dir", data_dir, "--run-dir", run_dir]
        + ["--steps", str(steps), "--deterministic", *extra]
    )


def _cli_train(data_dir, run_dir, config, steps, *extra):
    return _run(_train_args(data_dir, run_dir, config, steps, *extra))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster_train(data_dir, run_dir, config, steps):
    """Two workers on this machine, one process each, the same command."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    args = _train_args(data_dir, run_dir, config, steps, "--strategy", "multiworker")
    processes = []
    for index in range(2):
        spec = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(spec))
        processes.append(
            subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    for p in processes:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outputs.append(out)
    return outputs


def test_a_mirrored_run_resumes_exactly_and_its_checkpoint_loads_on_one_device(data_dir, tmp_path):
    config = tiny_config(actor=True, acting="actor_cem", conservative_weight=0.3)
    config_path = str(tmp_path / "tiny.json")
    with open(config_path, "w") as f:
        json.dump(config.as_dict(), f)
    mirrored = ("--strategy", "mirrored", "--cpu-devices", "2")
    resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
    _cli_train(data_dir, resumed, config_path, 20, *mirrored)
    _cli_train(data_dir, resumed, config_path, 30, *mirrored)
    out = _cli_train(data_dir, straight, config_path, 30, *mirrored)
    assert f"{straight}: steps 0 -> 30" in out
    # Two workers of a cluster, one device each, stopped at 20 and resumed:
    # the same weights again, and only the chief wrote the run dir.
    cluster = str(tmp_path / "cluster")
    scratch = set(glob.glob(os.path.join(tempfile.gettempdir(), "neverstop-worker-*")))
    _cluster_train(data_dir, cluster, config_path, 20)
    outputs = _cluster_train(data_dir, cluster, config_path, 30)
    assert all(f"{cluster}: steps 20 -> 30" in out for out in outputs)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "neverstop-worker-*"))) == scratch
    with open(os.path.join(cluster, checkpoints.METRICS_FILE)) as f:
        assert [json.loads(line)["step"] for line in f] == [5, 10, 15, 20, 25, 30]
    digests = {
        run.checkpoint_digest(os.path.join(d, "ckpt-30")) for d in (resumed, straight, cluster)
    }
    assert len(digests) == 1

    with open(os.path.join(straight, checkpoints.LINEAGE_FILE)) as f:
        strategy = json.load(f)["strategy"]
    assert strategy["name"] == "mirrored" and strategy["replicas"] == 2
    assert len(strategy["devices"]) == 2

    # The checkpoint is a one-device checkpoint: it restores into a plain
    # network, every weight the value saved.
    ref = checkpoints.locate(straight)
    network = QNetwork(config, "online")
    checkpoints.restore_online(ref, network, config)
    reader = tf.train.load_checkpoint(ref.prefix)
    saved = reader.get_tensor("online_tower/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    restored = network.tower.get_layer("conv0").kernel.numpy()
    np.testing.assert_array_equal(restored, saved)
    assert not np.array_equal(restored, QNetwork(config, "fresh").tower.get_layer("conv0").kernel)

    # And a one-device run takes it up where the mirrored one stopped.
    out = _cli_train(data_dir, straight, config_path, 40)
    assert f"{straight}: steps 30 -> 40" in out


def test_strategy_choices_are_checked_before_any_device_is_touched(monkeypatch):
    assert distribute.make_strategy("default") is None
    with pytest.raises(ConfigError, match="unknown strategy 'ring'"):
        distribute.make_strategy("ring")
    with pytest.raises(ConfigError, match="--cpu-devices splits the CPU for --strategy mirrored"):
        distribute.make_strategy("default", cpu_devices=2)
    with pytest.raises(ConfigError, match="--cpu-devices must be >= 2"):
        distribute.make_strategy("mirrored", cpu_devices=1)
    assert distribute.describe(None) == {"name": "default", "replicas": 1}
    assert distribute.is_chief(None) is True
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="--strategy multiworker needs TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}}')
    with pytest.raises(
        ConfigError, match="TF_CONFIG is not a cluster spec with 'cluster' and 'task'"
    ):
        distribute.make_strategy("multiworker")
