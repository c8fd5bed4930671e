"""JSON files that readers never see half-written.

Run files (config, lineage), evaluation results, export info and workflow
done-markers all go through `write_atomic`: a reader (a resumed run, the
scheduler, a report) sees the old file or the whole new one.
"""

import json
import os
from typing import Any


def read(path: str) -> Any:
    """The JSON in `path`; a file that does not parse is a ValueError naming it."""
    with open(path) as f:
        try:
            return json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def check_writable(path: str) -> None:
    """Raises ValueError, before any work, if a file cannot be written at
    `path` later: it is a directory, or its directory cannot be made or
    written. Creates that directory, as write_atomic would."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ValueError(f"cannot write {path}: {directory} is not writable")


def write_atomic(path: str, data: Any) -> None:
    """Writes `data` as indented, key-sorted JSON through a temporary file in
    the same directory and a rename, creating the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
