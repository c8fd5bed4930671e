"""What is in a data dir: the dataset cards a person reads before training.

Reads the JSON files TFDS writes beside the shards (dataset_info.json and
metadata.json), so listing a data dir never loads TensorFlow.
"""

import json
import os
import re
from typing import List, Optional

from neverstop.datasets import rlds_grasp

_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _card(version_dir: str) -> Optional[dict]:
    info_path = os.path.join(version_dir, "dataset_info.json")
    if not os.path.isfile(info_path):
        return None  # incomplete or not a dataset
    with open(info_path) as f:
        info = json.load(f)
    metadata = {}
    metadata_path = os.path.join(version_dir, "metadata.json")
    if os.path.isfile(metadata_path):
        with open(metadata_path) as f:
            metadata = json.load(f)
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


def list_datasets(data_dir: str) -> List[dict]:
    """Every published `name/config:version` under data_dir, sorted."""
    cards = []
    if not os.path.isdir(data_dir):
        raise ValueError(f"data dir {data_dir!r} does not exist")
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
                card = _card(os.path.join(config_dir, version))
                if card:
                    cards.append(card)
    return cards


def show(data_dir: str, dataset: str) -> dict:
    """The card of one dataset; `name/config` picks the newest version."""
    wanted = dataset if ":" in dataset else None
    matches = [
        c
        for c in list_datasets(data_dir)
        if c["id"] == wanted or (wanted is None and c["id"].split(":")[0] == dataset)
    ]
    if not matches:
        known = ", ".join(c["id"] for c in list_datasets(data_dir)) or "none"
        raise ValueError(f"no dataset {dataset!r} in {data_dir!r}; published: {known}")
    return max(matches, key=lambda c: tuple(int(x) for x in c["id"].split(":")[1].split(".")))
