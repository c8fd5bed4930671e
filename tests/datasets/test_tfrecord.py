"""Tests for neverstop/datasets/tfrecord.py and ingest.serialize_episode:
TensorFlow-free bytes must be what TensorFlow and TFDS read and write."""

import io

import numpy as np
import pytest

from neverstop import schema
from neverstop.datasets import tfrecord
from neverstop.pipelines import ingest
from tests.pipelines.test_ingest import _episode


@pytest.mark.parametrize(
    "value, expected",
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")],
)
def test_varints_match_the_protobuf_encoding(value, expected):
    assert tfrecord.varint(value) == expected


def test_negative_int64_takes_ten_bytes_and_parses_back():
    import tensorflow as tf

    assert len(tfrecord.varint(-1)) == 10
    record = tfrecord.encode_example({"x": (tfrecord.INT64, [-5, 0, 2**40])})
    parsed = tf.train.Example.FromString(record)
    assert list(parsed.features.feature["x"].int64_list.value) == [-5, 0, 2**40]


def test_examples_parse_like_those_tensorflow_builds():
    import tensorflow as tf

    values = {
        "b": (tfrecord.BYTES, [b"", b"\x00\xff" * 200]),
        "f": (tfrecord.FLOAT, np.array([[1.5, -2.25], [3.0, np.float32(0.1)]])),
        "i": (tfrecord.INT64, [True, False, 7]),
        "empty": (tfrecord.FLOAT, []),
    }
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=values["b"][1])),
                "f": tf.train.Feature(
                    float_list=tf.train.FloatList(value=[1.5, -2.25, 3.0, np.float32(0.1)])
                ),
                "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 0, 7])),
                "empty": tf.train.Feature(float_list=tf.train.FloatList(value=[])),
            }
        )
    )
    ours = tfrecord.encode_example(values)
    assert tf.train.Example.FromString(ours) == expected
    # Keys are written sorted, so the bytes are a pure function of the values.
    assert ours == tfrecord.encode_example(dict(reversed(list(values.items()))))


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown feature kind 'double'"):
        tfrecord.encode_feature("double", [1.0])


def test_episodes_serialize_as_tfds_would_serialize_them():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = schema.episode_features("png")
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    for index in range(4):
        episode = _episode(index, steps=3 + index)
        episode.metadata[schema.FILE_PATH] = f"/raw/é-{index}.nsep"  # non-ASCII text too
        tfds_bytes = serializer.serialize_example(
            features.encode_example(ingest.to_rlds_example(episode))
        )
        ours = ingest.serialize_episode(episode)
        assert tf.train.Example.FromString(ours) == tf.train.Example.FromString(tfds_bytes)


def test_tfrecord_files_read_back_with_tensorflow_and_with_our_reader(tmp_path):
    import tensorflow as tf

    records = [b"", b"one", bytes(range(256)) * 40]
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as f:
        assert tfrecord.write_records(f, records) == 3
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    with open(path, "rb") as f:
        assert list(tfrecord.read_records(f)) == records
    # And the other way round: what TensorFlow writes, byte for byte.
    theirs = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in records:
            writer.write(record)
    assert theirs.read_bytes() == path.read_bytes()


def test_corrupt_records_name_the_record_and_the_fault(tmp_path):
    data = b"".join(tfrecord.frame(r) for r in (b"first", b"second"))
    flipped = bytearray(data)
    flipped[len(tfrecord.frame(b"first")) + 14] ^= 1  # a byte of the second record's data
    with pytest.raises(ValueError, match="record 1: data CRC mismatch"):
        list(tfrecord.read_records(io.BytesIO(bytes(flipped))))
    with pytest.raises(ValueError, match="record 1: truncated data"):
        list(tfrecord.read_records(io.BytesIO(data[:-3])))
    with pytest.raises(ValueError, match="record 0: truncated header"):
        list(tfrecord.read_records(io.BytesIO(data[:5])))
