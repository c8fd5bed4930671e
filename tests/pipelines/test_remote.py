"""Tests for gs:// publishing (neverstop/pipelines/remote.py) against a local GCS emulator."""

import os
import socket
import subprocess
import sys

import pytest

from neverstop.pipelines import ingest
from neverstop.pipelines import remote
from tests.pipelines.test_ingest import _LOAD_SCRIPT, _config, _digests, _episode, _write_raw

emulator = pytest.importorskip("gcp_storage_emulator.server")


@pytest.fixture
def gcs(monkeypatch):
    """A GCS emulator on a free loopback port with an empty bucket 'bucket'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    yield remote.filesystem()
    server.stop()


def test_publish_to_gs_fetch_back_and_load_with_tfds(gcs, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(7):
        _write_raw(raw, _episode(i))
    local = ingest.ingest(_config(raw, tmp_path / "local"), running_mode="in_memory").path
    summary = ingest.ingest(_config(raw, "gs://bucket/tfds"), running_mode="in_memory")
    assert summary.path == "gs://bucket/tfds/grasps/base/1.0.0"
    names = sorted(os.path.basename(p) for p in gcs.ls("bucket/tfds/grasps/base/1.0.0"))
    assert names == sorted(os.listdir(local))

    fetched = remote.fetch(
        summary.path, str(tmp_path / "fetched" / "grasps" / "base" / "1.0.0"), gcs
    )
    shards = {n: d for n, d in _digests(fetched).items() if ".tfrecord-" in n}
    assert shards == {n: d for n, d in _digests(local).items() if ".tfrecord-" in n}
    completed = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path / "fetched"), fetched],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert '"episodes": 7, "exact": 7' in completed.stdout


def test_a_published_gs_version_is_never_overwritten(gcs, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        _write_raw(raw, _episode(i))
    ingest.ingest(_config(raw, "gs://bucket/tfds"), running_mode="in_memory")
    before = gcs.cat("bucket/tfds/grasps/base/1.0.0/dataset_info.json")
    _write_raw(raw, _episode(3))
    with pytest.raises(ValueError, match="already published; publish a new --version"):
        ingest.ingest(_config(raw, "gs://bucket/tfds"), running_mode="in_memory")
    assert gcs.cat("bucket/tfds/grasps/base/1.0.0/dataset_info.json") == before
    summary = ingest.ingest(
        _config(raw, "gs://bucket/tfds", version="1.1.0"), running_mode="in_memory"
    )
    assert summary.statistics.episodes == 4


def test_the_card_is_uploaded_last(gcs, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("z-shard", "dataset_info.json", "a-features.json"):
        (staging / name).write_text(name)
    order = []
    real_put = gcs.put_file  # gcsfs makes its sync methods per instance

    def recording_put(lpath, rpath, *args, **kwargs):
        order.append(os.path.basename(rpath))
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(gcs, "put_file", recording_put)
    remote.publish(str(staging), "gs://bucket/x/1.0.0", gcs)
    assert order == ["a-features.json", "z-shard", "dataset_info.json"]
