"""The raw sim episode file: one self-describing file per episode.

Layout (little-endian), extension `.nsep` ("neverstop episode"):

    b"NSEP" | u16 format version | u32 header length | header (JSON, UTF-8)
    | numeric arrays, back to back | encoded images, back to back
    | u32 CRC-32 of everything before it

The JSON header carries the schema version, the episode metadata of the
RLDS schema, provenance (task, policy, seed, renderer, package versions),
and where each array and image lies in the payload, so the file can be read
with nothing but this module (or numpy and json). Images are stored already
encoded (PNG by default) exactly as the dataset will store them, so
ingestion validates and passes the bytes through. The trailing CRC makes a
truncated or corrupted file an error that names the file, never a silently
shorter episode.

Files are written atomically (a temporary name in the same directory, then
rename), so a killed writer leaves no half-written episode. The bytes are a
pure function of the episode: no wall-clock time, host or process id.

Step convention (RLDS): an episode of T actions has T + 1 steps. Step t
holds observation t, the action taken there and the reward that action
earned; the last step holds the final observation, a zero action, reward 0,
discount 0 and is_last (and is_terminal when the episode ended in a grasp
attempt, which every sim episode does).
"""

import dataclasses
import json
import os
import re
import struct
import tempfile
import zlib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from neverstop import schema

MAGIC = b"NSEP"
FORMAT_VERSION = 1
EXTENSION = ".nsep"
TEMP_PREFIX = ".tmp-"
_PREAMBLE = struct.Struct("<4sHI")
_CRC = struct.Struct("<I")

# Per-step arrays stored in the payload, in this order, with their dtypes.
_ARRAYS = (
    (schema.GRIPPER_CLOSED, np.float32, ()),
    (schema.HEIGHT_TO_BOTTOM, np.float32, ()),
    (schema.ACTION, np.float32, (schema.ACTION_DIM,)),
    (schema.REWARD, np.float32, ()),
    (schema.DISCOUNT, np.float32, ()),
    (schema.IS_FIRST, np.bool_, ()),
    (schema.IS_LAST, np.bool_, ()),
    (schema.IS_TERMINAL, np.bool_, ()),
)


class RawLogError(ValueError):
    """A raw episode file is unreadable or breaks the schema; names the file."""


class UnreadableError(RawLogError):
    """Not even the file's identity can be read: not an episode file, a
    foreign format or schema version, a header that does not parse."""


@dataclasses.dataclass
class Episode:
    """One episode in memory: per-step arrays, encoded images, metadata.

    `steps` maps each per-step field name (schema constants) to an array
    whose first axis is the step; `images` holds one encoded image per step.
    `metadata` has the schema's episode_metadata keys except file_path (a
    property of where the file lies, filled in by the reader).
    """

    steps: Dict[str, np.ndarray]
    images: List[bytes]
    metadata: Dict[str, object]
    image_encoding: str = "png"
    provenance: Dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.images)

    @property
    def episode_id(self) -> str:
        return str(self.metadata[schema.EPISODE_ID])


def encode_png(image: np.ndarray) -> bytes:
    """Lossless RGB PNG of a uint8 HxWx3 image: no row filter, zlib level 9.

    For our renders this is 1.1 KB a 64x64 frame, smaller than Pillow's
    optimised PNG (1.5 KB): flat-shaded scenes compress best unfiltered.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape}")
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def encode_image(image: np.ndarray, encoding: str = "png", jpeg_quality: int = 95) -> bytes:
    """Encodes one observation image as the dataset will store it."""
    encoding = schema.validate_image_encoding(encoding)
    if encoding == "png":
        return encode_png(image)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, "JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def image_size(encoded: bytes, encoding: str) -> tuple:
    """(height, width) read from an encoded image's header, without decoding."""
    if encoding == "png":
        if encoded[:8] != b"\x89PNG\r\n\x1a\n" or encoded[12:16] != b"IHDR":
            raise ValueError("not a PNG image")
        width, height = struct.unpack(">II", encoded[16:24])
        return height, width
    if encoded[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG image")
    i = 2
    while i + 9 < len(encoded):
        if encoded[i] != 0xFF:
            raise ValueError("corrupt JPEG marker stream")
        marker = encoded[i + 1]
        length = struct.unpack(">H", encoded[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", encoded[i + 5 : i + 9])
            return height, width
        i += 2 + length
    raise ValueError("JPEG has no frame header")


def from_rollout(
    observations: Sequence[Mapping[str, np.ndarray]],
    actions: Sequence[np.ndarray],
    rewards: Sequence[float],
    metadata: Mapping[str, object],
    image_encoding: str = "png",
    provenance: Optional[Mapping[str, object]] = None,
    terminal: bool = True,
) -> Episode:
    """Builds an Episode from T actions and the T + 1 observations around them."""
    num_actions = len(actions)
    if len(observations) != num_actions + 1 or len(rewards) != num_actions:
        raise ValueError(
            f"expected T + 1 observations and T rewards for T = {num_actions} actions, "
            f"got {len(observations)} and {len(rewards)}"
        )
    n = num_actions + 1
    flags = np.zeros(n, np.bool_)
    steps = {
        schema.GRIPPER_CLOSED: np.array(
            [o[schema.GRIPPER_CLOSED] for o in observations], np.float32
        ),
        schema.HEIGHT_TO_BOTTOM: np.array(
            [o[schema.HEIGHT_TO_BOTTOM] for o in observations], np.float32
        ),
        schema.ACTION: np.concatenate(
            [
                np.asarray(actions, np.float32).reshape(-1, schema.ACTION_DIM),
                np.zeros((1, schema.ACTION_DIM), np.float32),
            ]
        ),
        schema.REWARD: np.append(np.asarray(rewards, np.float32), np.float32(0)),
        schema.DISCOUNT: np.append(np.ones(num_actions, np.float32), np.float32(0)),
        schema.IS_FIRST: flags.copy(),
        schema.IS_LAST: flags.copy(),
        schema.IS_TERMINAL: flags.copy(),
    }
    steps[schema.IS_FIRST][0] = True
    steps[schema.IS_LAST][-1] = True
    steps[schema.IS_TERMINAL][-1] = terminal
    images = [encode_image(o[schema.IMAGE], image_encoding) for o in observations]
    return Episode(steps, images, dict(metadata), image_encoding, dict(provenance or {}))


def _header(episode: Episode) -> dict:
    arrays, offset = [], 0
    for name, dtype, shape in _ARRAYS:
        array = np.ascontiguousarray(episode.steps[name], dtype=dtype)
        arrays.append(
            {
                "name": name,
                "dtype": np.dtype(dtype).str,
                "shape": list(array.shape),
                "offset": offset,
                "nbytes": array.nbytes,
            }
        )
        offset += array.nbytes
    return {
        "format": "neverstop-episode",
        "format_version": FORMAT_VERSION,
        "schema_version": schema.SCHEMA_VERSION,
        "metadata": {k: v for k, v in episode.metadata.items() if k != schema.FILE_PATH},
        "provenance": episode.provenance,
        "num_steps": episode.num_steps,
        "image_encoding": episode.image_encoding,
        "image_shape": list(schema.IMAGE_SHAPE),
        "arrays": arrays,
        "images": {"offset": offset, "lengths": [len(b) for b in episode.images]},
    }


def to_bytes(episode: Episode) -> bytes:
    """The file's bytes: a pure function of the episode."""
    header = json.dumps(_header(episode), sort_keys=True, separators=(",", ":")).encode()
    parts = [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header)), header]
    for name, dtype, _ in _ARRAYS:
        parts.append(
            np.ascontiguousarray(episode.steps[name], dtype=dtype)
            .astype(np.dtype(dtype).newbyteorder("<"), copy=False)
            .tobytes()
        )
    parts.extend(episode.images)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def filename(episode_id: str) -> str:
    """The file name for an episode id (ids are made file-name safe)."""
    if not re.fullmatch(r"[A-Za-z0-9._=+-]+", episode_id):
        raise ValueError(f"episode id {episode_id!r} is not file-name safe")
    return episode_id + EXTENSION


def write_episode(directory: str, episode: Episode) -> str:
    """Writes `episode` into `directory` atomically; returns the file path."""
    validate(episode, where=f"episode {episode.episode_id}")
    data = to_bytes(episode)
    path = os.path.join(directory, filename(episode.episode_id))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=EXTENSION)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_header(path: str) -> dict:
    """Reads only the JSON header (cheap: metadata without the payload)."""
    with open(path, "rb") as f:
        preamble = f.read(_PREAMBLE.size)
        magic, version, length = _check_preamble(path, preamble)
        header = f.read(length)
    if len(header) != length:
        raise RawLogError(f"{path}: truncated header ({len(header)} of {length} bytes)")
    return _parse_header(path, header)


def _check_preamble(path: str, preamble: bytes):
    if len(preamble) < _PREAMBLE.size:
        raise UnreadableError(
            f"{path}: truncated file ({len(preamble)} bytes); expected a neverstop episode"
        )
    magic, version, length = _PREAMBLE.unpack(preamble)
    if magic != MAGIC:
        raise UnreadableError(
            f"{path}: not a neverstop episode file (magic {magic!r}, expected {MAGIC!r})"
        )
    if version != FORMAT_VERSION:
        raise UnreadableError(
            f"{path}: episode format version {version}; this neverstop "
            f"reads version {FORMAT_VERSION}"
        )
    return magic, version, length


def _parse_header(path: str, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableError(f"{path}: unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise UnreadableError(
            f"{path}: header is a JSON {type(header).__name__}, expected an object"
        )
    if header.get("schema_version") != schema.SCHEMA_VERSION:
        raise UnreadableError(
            f"{path}: schema version {header.get('schema_version')}, expected "
            f"{schema.SCHEMA_VERSION}"
        )
    return header


def from_bytes(data: bytes, path: str = "<bytes>") -> Episode:
    """Parses and validates a whole file's bytes (see read_episode)."""
    _, _, length = _check_preamble(path, data[: _PREAMBLE.size])
    if len(data) < _PREAMBLE.size + length + _CRC.size:
        raise RawLogError(f"{path}: truncated file ({len(data)} bytes)")
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise RawLogError(f"{path}: checksum mismatch (truncated or corrupted file)")
    header = _parse_header(path, body[_PREAMBLE.size : _PREAMBLE.size + length])
    payload = memoryview(body)[_PREAMBLE.size + length :]
    try:
        steps = {}
        for spec in header["arrays"]:
            start, stop = spec["offset"], spec["offset"] + spec["nbytes"]
            steps[spec["name"]] = (
                np.frombuffer(payload[start:stop], dtype=spec["dtype"])
                .reshape(spec["shape"])
                .astype(np.dtype(spec["dtype"]).newbyteorder("="))
            )
        images, offset = [], header["images"]["offset"]
        for n in header["images"]["lengths"]:
            images.append(bytes(payload[offset : offset + n]))
            offset += n
        if offset != len(payload):
            raise RawLogError(f"{path}: payload has {len(payload) - offset} unexplained bytes")
        metadata = dict(header["metadata"], **{schema.FILE_PATH: path})
        episode = Episode(
            steps, images, metadata, header["image_encoding"], header.get("provenance", {})
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, RawLogError):
            raise
        raise RawLogError(f"{path}: malformed header or payload: {e}") from None
    validate(episode, where=path)
    return episode


def read_episode(path: str) -> Episode:
    """Reads and validates one episode file; RawLogError names what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableError(f"{path}: cannot read: {e.strerror}") from None
    return from_bytes(data, path)


def validate(episode: Episode, where: str = "") -> None:
    """Checks an episode against the schema; RawLogError says what and where."""
    prefix = f"{where}: " if where else ""
    n = episode.num_steps
    if n < 2:
        raise RawLogError(f"{prefix}{n} steps; an episode needs at least 2 (one action)")
    if n > schema.MAX_EPISODE_STEPS + 1:
        raise RawLogError(f"{prefix}{n} steps; expected at most {schema.MAX_EPISODE_STEPS + 1}")
    for name, dtype, shape in _ARRAYS:
        if name not in episode.steps:
            raise RawLogError(f"{prefix}missing per-step field {name!r}")
        array = np.asarray(episode.steps[name])
        if array.shape != (n,) + shape:
            raise RawLogError(f"{prefix}{name} has shape {array.shape}, expected {(n,) + shape}")
        if array.dtype != np.dtype(dtype):
            raise RawLogError(f"{prefix}{name} has dtype {array.dtype}, expected {np.dtype(dtype)}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = int(np.argwhere(~np.isfinite(array.reshape(n, -1)))[0][0])
            raise RawLogError(f"{prefix}step {bad}: {name} is not finite")
    actions = episode.steps[schema.ACTION]
    if np.any(np.abs(actions) > 1.0):
        bad = int(np.argwhere(np.abs(actions) > 1.0)[0][0])
        raise RawLogError(f"{prefix}step {bad}: action {actions[bad].tolist()} outside [-1, 1]")
    rewards = episode.steps[schema.REWARD]
    if np.any((rewards < -1.0) | (rewards > 1.0)):
        bad = int(np.argwhere((rewards < -1.0) | (rewards > 1.0))[0][0])
        raise RawLogError(f"{prefix}step {bad}: reward {rewards[bad]} outside [-1, 1]")
    first, last = episode.steps[schema.IS_FIRST], episode.steps[schema.IS_LAST]
    if not first[0] or first[1:].any():
        raise RawLogError(f"{prefix}is_first must be set on step 0 only")
    if not last[-1] or last[:-1].any():
        raise RawLogError(f"{prefix}is_last must be set on the final step only (step {n - 1})")
    if episode.steps[schema.IS_TERMINAL][:-1].any():
        raise RawLogError(f"{prefix}is_terminal set before the final step")
    encoding = episode.image_encoding
    if encoding not in schema.IMAGE_ENCODINGS:
        raise RawLogError(
            f"{prefix}image encoding {encoding!r}, expected one of " f"{schema.IMAGE_ENCODINGS}"
        )
    for t, image in enumerate(episode.images):
        try:
            size = image_size(image, encoding)
        except (ValueError, struct.error) as e:
            raise RawLogError(f"{prefix}step {t}: image is not a valid {encoding}: {e}") from None
        if size != schema.IMAGE_SHAPE[:2]:
            raise RawLogError(
                f"{prefix}step {t}: image is {size[0]}x{size[1]}, expected "
                f"{schema.IMAGE_SHAPE[0]}x{schema.IMAGE_SHAPE[1]}"
            )
    missing = [
        k for k in schema.METADATA_KEYS if k != schema.FILE_PATH and k not in episode.metadata
    ]
    if missing:
        raise RawLogError(f"{prefix}episode metadata lacks {', '.join(missing)}")
    for key in schema.METADATA_KEYS:
        if key == schema.FILE_PATH:
            continue
        value = episode.metadata[key]
        if key == schema.SUCCESS:
            ok = isinstance(value, (bool, np.bool_)) or (
                isinstance(value, (int, np.integer)) and value in (0, 1)
            )
            expected = "true or false"
        elif key == schema.SEED:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            expected = "an integer"
        else:
            ok = isinstance(value, str)
            expected = "a string"
        if not ok:
            raise RawLogError(f"{prefix}episode metadata {key} is {value!r}, expected {expected}")


def list_episode_files(directory: str) -> List[str]:
    """Finished episode files in `directory`, sorted (temporary files skipped)."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, f)
        for f in os.listdir(directory)
        if f.endswith(EXTENSION) and not f.startswith(TEMP_PREFIX)
    )


def iter_episodes(directory: str) -> Iterator[Episode]:
    for path in list_episode_files(directory):
        yield read_episode(path)


def remove_stale_temporaries(directory: str) -> int:
    """Deletes what killed writers left behind (temporary files, or the
    scratch directories of bag writers); returns how many."""
    import shutil

    removed = 0
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(TEMP_PREFIX):
                path = os.path.join(directory, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
    return removed
