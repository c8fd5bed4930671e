"""The RLDS grasping dataset: its card, its versions and how it is laid out.

A dataset is addressed the TFDS way, `name/config:version`, and lives at
`<data_dir>/<name>/<config>/<version>/` with TFRecord shards named
`<name>-train.tfrecord-00000-of-00004`, `dataset_info.json`,
`features.json` (the RLDS features of the schema module) and the ingestion's
`dead_letter.jsonl`. It loads with `tfds.builder_from_directory(...)` and
`tfds.load("name/config:version", data_dir=...)`.

This module knows the layout and the card (description, citation, release
notes, statistics); it does not know where episodes come from.
"""

import dataclasses
import os
import re
from typing import Dict, Mapping, Optional, Sequence

from neverstop import schema

SPLIT = "train"
FILE_FORMAT = "tfrecord"
DEAD_LETTER_FILE = "dead_letter.jsonl"
DEFAULT_VERSION = "1.0.0"

DESCRIPTION = """\
Vision-based grasping episodes in the RLDS format, as used by neverstop's
offline QT-Opt trainer (after Julian et al., "Never Stop Learning: The
Effectiveness of Fine-Tuning in Robotic Reinforcement Learning", CoRL 2020).
Each episode is one grasp attempt of at most 10 steps: a 64x64 RGB image from
an over-the-shoulder camera, whether the gripper is closed and the tool's
height above the tray floor; actions [dx, dy, dz, dyaw, close] in [-1, 1];
reward 1.0 on the final action if an object was lifted. Episode metadata
records the task, source (sim or robot), robot morphology, policy, outcome,
seed and the raw file each episode came from.
"""

CITATION = """\
@inproceedings{julian2020never,
  title     = {Never Stop Learning: The Effectiveness of Fine-Tuning in Robotic
               Reinforcement Learning},
  author    = {Julian, Ryan and Swanson, Benjamin and Sukhatme, Gaurav S. and
               Levine, Sergey and Finn, Chelsea and Hausman, Karol},
  booktitle = {Conference on Robot Learning (CoRL)},
  year      = {2020}
}"""

DEFAULT_RELEASE_NOTES = {DEFAULT_VERSION: "Initial ingestion."}

_NAME = r"[a-z][a-z0-9_]*"
_VERSION = r"\d+\.\d+\.\d+"


@dataclasses.dataclass(frozen=True)
class DatasetId:
    """`name/config:version`, e.g. `base/base:1.0.0` or `grasps/checkerboard:1.2.0`."""

    name: str
    config: str
    version: str = DEFAULT_VERSION

    def __post_init__(self):
        for field, pattern, example in (
            ("name", _NAME, "grasps"),
            ("config", _NAME, "base"),
            ("version", _VERSION, "1.0.0"),
        ):
            value = getattr(self, field)
            if not isinstance(value, str) or not re.fullmatch(pattern, value):
                raise ValueError(
                    f"dataset {field} {value!r} is not valid; expected something like {example!r} "
                    "(lower-case letters, digits and _; versions X.Y.Z)"
                )

    @classmethod
    def parse(cls, text: str) -> "DatasetId":
        match = re.fullmatch(rf"({_NAME})/({_NAME})(?::({_VERSION}))?", text)
        if not match:
            raise ValueError(f"dataset {text!r} is not of the form name/config[:X.Y.Z]")
        name, config, version = match.groups()
        return cls(name, config, version or DEFAULT_VERSION)

    def __str__(self) -> str:
        return f"{self.name}/{self.config}:{self.version}"

    def version_dir(self, data_dir: str) -> str:
        if data_dir.startswith("gs://"):
            return "/".join([data_dir.rstrip("/"), self.name, self.config, self.version])
        return os.path.join(data_dir, self.name, self.config, self.version)


def shard_name(dataset: DatasetId, shard: int, num_shards: int) -> str:
    """The TFDS file name of one shard (TFDS's default sharded template)."""
    return f"{dataset.name}-{SPLIT}.{FILE_FORMAT}-{shard:05d}-of-{num_shards:05d}"


@dataclasses.dataclass
class Statistics:
    """What `neverstop datasets show` prints: counts a person checks before training."""

    episodes: int = 0
    steps: int = 0
    successes: int = 0
    policies: Dict[str, int] = dataclasses.field(default_factory=dict)
    tasks: Dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, other: "Statistics") -> "Statistics":
        self.episodes += other.episodes
        self.steps += other.steps
        self.successes += other.successes
        for mine, theirs in ((self.policies, other.policies), (self.tasks, other.tasks)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        return self

    def add_episode(self, steps: int, success: bool, policy: str, task: str) -> "Statistics":
        self.episodes += 1
        self.steps += steps
        self.successes += int(bool(success))
        self.policies[policy] = self.policies.get(policy, 0) + 1
        self.tasks[task] = self.tasks.get(task, 0) + 1
        return self

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), success_rate=self.success_rate)


def write_dataset_info(
    directory: str,
    dataset: DatasetId,
    shard_lengths: Sequence[int],
    num_bytes: int,
    statistics: Statistics,
    image_encoding: str = "png",
    release_notes: Optional[Mapping[str, str]] = None,
    extra_metadata: Optional[Mapping[str, object]] = None,
) -> None:
    """Writes dataset_info.json and features.json for shards already in `directory`.

    `directory` may be a temporary one: paths are not recorded in the card,
    so the folder can be moved into place afterwards.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import dataset_info as dataset_info_lib
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    identity = dataset_info_lib.DatasetIdentity(
        name=dataset.name,
        version=tfds.core.Version(dataset.version),
        data_dir=directory,
        module_name="",
        config_name=dataset.config,
        config_description=f"episodes of the {dataset.config!r} task",
        # The card's notes are keyed by the version being written (a 1.2.0
        # card must not describe itself as 1.0.0).
        release_notes=dict(
            release_notes or {dataset.version: DEFAULT_RELEASE_NOTES[DEFAULT_VERSION]}
        ),
    )
    metadata = tfds.core.MetadataDict()
    metadata["statistics"] = statistics.as_dict()
    metadata["image_encoding"] = image_encoding
    metadata["schema_version"] = schema.SCHEMA_VERSION
    metadata.update(dict(extra_metadata or {}))
    info = tfds.core.DatasetInfo(
        builder=identity,
        description=DESCRIPTION,
        features=schema.episode_features(image_encoding),
        citation=CITATION,
        homepage="https://sites.google.com/view/neverstop-ftrl",
        metadata=metadata,
    )
    info.set_file_format(FILE_FORMAT)
    template = naming.ShardedFileTemplate(
        data_dir=directory, dataset_name=dataset.name, split=SPLIT, filetype_suffix=FILE_FORMAT
    )
    split = splits_lib.SplitInfo(
        name=SPLIT,
        shard_lengths=list(shard_lengths),
        num_bytes=num_bytes,
        filename_template=template,
    )
    info.set_splits(splits_lib.SplitDict([split]))
    info.write_to_directory(directory)
