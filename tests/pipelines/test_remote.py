"""Tests for gs:// publishing (neverstop/pipelines/remote.py) against a local GCS emulator."""

import json
import os
import socket
import subprocess
import sys

import pytest

from neverstop.pipelines import ingest
from neverstop.pipelines import remote
from tests.pipelines.test_ingest import _LOAD_SCRIPT, _config, _digests, _episode, _write_raw

emulator = pytest.importorskip("gcp_storage_emulator.server")


def _byte_exact_uploads(original):
    """The emulator's `_read_data`, with gcsfs's multipart uploads parsed byte for byte.

    gcsfs uploads a file under 5 MiB as one multipart/related body whose parts
    end in a bare b"\\n" before the boundary. The emulator parses it with
    Python's email parser, which takes a final b"\\r" of the file for half of a
    CRLF and drops it: a shard whose last byte was 0x0D (its last record's CRC
    decides, so about 1 shard in 256) came back one byte short. This parser
    cuts at the boundary instead and removes exactly the b"\\n" gcsfs added.
    """

    def read_data(handler, query):
        content_type = handler.headers.get("Content-Type") or ""
        if not content_type.startswith("multipart/related"):
            return original(handler, query)
        body = emulator._decode_raw_data(emulator._read_raw_data(handler), handler)
        boundary = b"--" + content_type.split("boundary=", 1)[1].strip('"').encode()
        parts = body.split(boundary)
        assert len(parts) == 4 and parts[-1].startswith(b"--"), "not a gcsfs multipart body"
        (_, meta), (headers, content) = (
            p[1:-1].split(b"\n\n", 1) for p in parts[1:3]  # b"\n" after and before each boundary
        )
        part_type = headers.decode().split("Content-Type:", 1)[1].strip()
        return {"meta": json.loads(meta), "content": content, "content-type": part_type}

    return read_data


@pytest.fixture
def gcs(monkeypatch):
    """A GCS emulator on a free loopback port with an empty bucket 'bucket'."""
    monkeypatch.setattr(emulator, "_read_data", _byte_exact_uploads(emulator._read_data))
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


@pytest.mark.parametrize("last", [b"\r", b"\n", b"\r\n", b"\n\n", b"x"])
def test_a_file_round_trips_byte_for_byte_whatever_its_last_bytes(gcs, tmp_path, last):
    """A regression test for the emulator's dropped final 0x0D (`_byte_exact_uploads`)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    shard = b"\x00\r\n" * 100 + last
    (staging / "grasps-train.tfrecord-00000-of-00001").write_bytes(shard)
    (staging / "dataset_info.json").write_text("{}")
    remote.publish(str(staging), "gs://bucket/tfds/grasps/base/1.0.0", gcs)
    assert gcs.cat("bucket/tfds/grasps/base/1.0.0/grasps-train.tfrecord-00000-of-00001") == shard
    fetched = remote.fetch("gs://bucket/tfds/grasps/base/1.0.0", str(tmp_path / "fetched"), gcs)
    with open(os.path.join(fetched, "grasps-train.tfrecord-00000-of-00001"), "rb") as f:
        assert f.read() == shard
    with open(os.path.join(fetched, "dataset_info.json")) as f:
        assert f.read() == "{}"
