"""tf.train.Example and TFRecord bytes, written without TensorFlow.

Ingestion workers write every shard through this module. Importing
TensorFlow costs ~2.8 s a process here, and TFDS's example serializer spends
0.6 ms an episode in Python protobuf objects; this writes the same wire
format directly, ~0.03 ms an episode, so a worker that converts files never
imports TensorFlow. The output is what `tf.io.TFRecordWriter` and TFDS's
`ExampleSerializer` would produce for the same values (tests parse both and
compare), and it loads with `tfds.builder_from_directory` and
`tf.data.TFRecordDataset`.

The protobuf messages (tensorflow/core/example/{example,feature}.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    *List     { repeated ... value = 1 [packed for float and int64]; }

A TFRecord is: uint64 length, uint32 masked CRC-32C of the length, the
data, uint32 masked CRC-32C of the data (all little-endian).
"""

import functools
import struct
from typing import BinaryIO, Iterable, Mapping, Tuple

import google_crc32c
import numpy as np

BYTES = "bytes"
FLOAT = "float"
INT64 = "int64"
KINDS = (BYTES, FLOAT, INT64)

_LEN = 2  # wire type of length-delimited fields
_FIELD1, _FIELD2, _FIELD3 = (1 << 3) | _LEN, (2 << 3) | _LEN, (3 << 3) | _LEN
_KIND_FIELD = {BYTES: _FIELD1, FLOAT: _FIELD2, INT64: _FIELD3}
_MASK_DELTA = 0xA282EAD8


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take ten bytes."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _field(tag: int, payload: bytes) -> bytes:
    return b"".join((_TAGS[tag], varint(len(payload)), payload))


_TAGS = {tag: bytes((tag,)) for tag in (_FIELD1, _FIELD2, _FIELD3)}


def _packed_int64(values) -> bytes:
    array = np.asarray(values)
    if array.dtype == np.bool_:  # flags: a one-byte varint each
        return array.astype(np.uint8).tobytes()
    return b"".join([varint(int(v)) for v in array.astype(np.int64).ravel()])


def encode_feature(kind: str, values) -> bytes:
    """One `Feature` message: `values` is a sequence of bytes (BYTES) or
    anything numpy flattens to numbers (FLOAT as float32, INT64; bools are
    stored 0/1 as int64, as TFDS does)."""
    if kind == BYTES:
        inner = b"".join([_field(_FIELD1, bytes(v)) for v in values])
    elif kind == FLOAT:
        packed = np.ascontiguousarray(values, dtype="<f4").tobytes()
        inner = _field(_FIELD1, packed) if packed else b""
    elif kind == INT64:
        packed = _packed_int64(values)
        inner = _field(_FIELD1, packed) if packed else b""
    else:
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {KINDS}")
    return _field(_KIND_FIELD[kind], inner)


@functools.lru_cache(maxsize=1024)
def _key_field(key: str) -> bytes:
    return _field(_FIELD1, key.encode("utf-8"))


def encode_example(features: Mapping[str, Tuple[str, object]]) -> bytes:
    """A serialized `tf.train.Example` from {key: (kind, values)}, keys sorted."""
    entries = b"".join(
        [
            _field(_FIELD1, _key_field(key) + _field(_FIELD2, encode_feature(*features[key])))
            for key in sorted(features)
        ]
    )
    return _field(_FIELD1, entries)


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: length, its CRC, the data, its CRC."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            record,
            struct.pack("<I", masked_crc32c(record)),
        )
    )


def write_records(f: BinaryIO, records: Iterable[bytes]) -> int:
    """Writes framed records to an open binary file; returns how many."""
    count = 0
    for record in records:
        f.write(frame(record))
        count += 1
    return count


def read_records(f: BinaryIO) -> Iterable[bytes]:
    """The records of a TFRecord file, checking both CRCs of each.

    Raises:
        ValueError: on a truncated record or a CRC mismatch, naming the record.
    """
    index = 0
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError(f"record {index}: truncated header ({len(header)} of 12 bytes)")
        length, length_crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != length_crc:
            raise ValueError(f"record {index}: length CRC mismatch")
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise ValueError(f"record {index}: truncated data (expected {length} bytes)")
        if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise ValueError(f"record {index}: data CRC mismatch")
        yield data
        index += 1
