"""What is in a data dir: the dataset cards a person reads before training.

Reads the JSON files TFDS writes beside the shards (dataset_info.json and
metadata.json), so listing a data dir never loads TensorFlow.
"""

import os
import re
from typing import List, Optional

from neverstop import jsonfile
from neverstop.datasets import rlds_grasp

_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _read_object(path: str) -> dict:
    """A JSON object from `path`; anything else is a ValueError naming it."""
    data = jsonfile.read(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def _card(version_dir: str) -> Optional[dict]:
    info_path = os.path.join(version_dir, "dataset_info.json")
    if not os.path.isfile(info_path):
        return None  # incomplete or not a dataset
    info = _read_object(info_path)
    metadata = {}
    metadata_path = os.path.join(version_dir, "metadata.json")
    if os.path.isfile(metadata_path):
        metadata = _read_object(metadata_path)
    splits = {
        s["name"]: {
            "episodes": sum(int(n) for n in s.get("shardLengths", [])),
            "shards": len(s.get("shardLengths", [])),
            "bytes": int(s.get("numBytes", 0)),
        }
        for s in info.get("splits", [])
    }
    dead = 0
    dead_path = os.path.join(version_dir, rlds_grasp.DEAD_LETTER_FILE)
    if os.path.isfile(dead_path):
        with open(dead_path) as f:
            dead = sum(1 for line in f if line.strip())
    name, config, version = version_dir.rstrip("/").split(os.sep)[-3:]
    return {
        "id": f"{name}/{config}:{version}",
        "path": version_dir,
        "splits": splits,
        "statistics": metadata.get("statistics", {}),
        "source": metadata.get("source"),
        "dead_letters": dead,
        "release_notes": info.get("releaseNotes", {}),
        "description": info.get("description", ""),
    }


def list_datasets(data_dir: str, broken: Optional[list] = None) -> List[dict]:
    """Every published `name/config:version` under data_dir, sorted. A
    version whose card cannot be read is left out; its (id, reason) goes to
    `broken` if given, else the first one raises ValueError."""
    cards = []
    if not os.path.isdir(data_dir):
        what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
        raise ValueError(f"data dir {data_dir!r} {what}")
    for name in sorted(os.listdir(data_dir)):
        for config in sorted(
            os.listdir(os.path.join(data_dir, name))
            if os.path.isdir(os.path.join(data_dir, name))
            else []
        ):
            config_dir = os.path.join(data_dir, name, config)
            if not os.path.isdir(config_dir):
                continue
            for version in sorted(v for v in os.listdir(config_dir) if _VERSION.fullmatch(v)):
                try:
                    card = _card(os.path.join(config_dir, version))
                except ValueError as e:
                    if broken is None:
                        raise
                    broken.append((f"{name}/{config}:{version}", str(e)))
                    continue
                if card:
                    cards.append(card)
    return cards


def show(data_dir: str, dataset: str) -> dict:
    """The card of one dataset; `name/config` picks the newest version."""
    wanted = dataset if ":" in dataset else None
    broken = []
    cards = list_datasets(data_dir, broken)

    def chosen(dataset_id):
        return dataset_id == wanted or (wanted is None and dataset_id.split(":")[0] == dataset)

    def version(dataset_id):
        return tuple(int(x) for x in dataset_id.split(":")[1].split("."))

    matches = [c for c in cards if chosen(c["id"])]
    best = max(matches, key=lambda c: version(c["id"])) if matches else None
    for dataset_id, reason in broken:
        # The version asked for, or one newer than the best readable match:
        # say why it cannot be read rather than quietly answer with another.
        if chosen(dataset_id) and (best is None or version(dataset_id) > version(best["id"])):
            raise ValueError(f"{dataset_id}: its card cannot be read: {reason}")
    if best is None:
        known = ", ".join(c["id"] for c in cards) or "none"
        raise ValueError(f"no dataset {dataset!r} in {data_dir!r}; published: {known}")
    return best
