"""Mixtures and continual chains: which datasets a trainer samples, and how much.

A mixture is data: a list of (dataset `name/config[:version]`, split with
TFDS slicing, weight) entries. Write it as a short string,

    base:train:0.5,checkerboard:train[:800]:0.5

where a bare name is a config of the default dataset name (`grasps`), so
`base` means `grasps/base` at its newest version in the data dir, or as YAML:

    sources:
      - {dataset: grasps/base:1.0.0, split: train, weight: 0.5}
      - {dataset: grasps/checkerboard, split: "train[:800]", weight: 0.5}

A chain is an ordered list of named mixtures (YAML `chain: [{name, mixture}]`),
one per fine-tuning link; see docs/mixing.md for the study's chain.

`resolve(data_dir)` checks everything a trainer would otherwise find out
mid-run: weights positive, datasets present, slices within their split,
feature specs equal to the schema's. It pins each version so the lineage
records exactly what was read.
"""

import dataclasses
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from neverstop import schema
from neverstop.datasets import catalog
from neverstop.datasets import rlds_grasp

DEFAULT_DATASET_NAME = "grasps"

_DATASET = r"[a-z][a-z0-9_]*(?:/[a-z][a-z0-9_]*)?(?::\d+\.\d+\.\d+)?"
_SPLIT = r"[a-z][a-z0-9_]*(?:\[[^\]]*\])?"
_ENTRY = re.compile(rf"\s*({_DATASET})\s*:\s*({_SPLIT})\s*:\s*([^,:\s]+)\s*")


class MixtureError(ValueError):
    """A mixture or chain that cannot be trained on; says which entry and why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One entry: `dataset` is `name/config[:version]` (or a bare config)."""

    dataset: str
    split: str = rlds_grasp.SPLIT
    weight: float = 1.0

    def __post_init__(self):
        if not re.fullmatch(_DATASET, self.dataset):
            raise MixtureError(
                f"dataset {self.dataset!r} is not of the form name/config[:X.Y.Z] or config"
            )
        if not re.fullmatch(_SPLIT, self.split):
            raise MixtureError(
                f"{self.dataset}: split {self.split!r} is not a TFDS split such as 'train' or "
                "'train[:800]'"
            )
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise MixtureError(f"{self.dataset}: weight {weight!r} is not a number")
        if not math.isfinite(weight) or weight <= 0:
            raise MixtureError(f"{self.dataset}: weight {weight} must be positive and finite")

    @property
    def dataset_prefix(self) -> str:
        """`name/config` without the version, the default name filled in."""
        base = self.dataset.split(":")[0]
        return base if "/" in base else f"{DEFAULT_DATASET_NAME}/{base}"

    def __str__(self) -> str:
        return f"{self.dataset}:{self.split}:{self.weight:g}"


@dataclasses.dataclass(frozen=True)
class ResolvedSource:
    """A source checked against a data dir: pinned version, its episodes' files."""

    source: Source
    dataset_id: rlds_grasp.DatasetId
    path: str
    episodes: int
    steps: Optional[int]  # of the whole split (the card's statistics), not the slice
    file_instructions: Tuple[Tuple[str, int, int], ...]  # (file, skip, take)

    @property
    def name(self) -> str:
        return f"{self.dataset_id}:{self.source.split}"


@dataclasses.dataclass(frozen=True)
class Mixture:
    sources: Tuple[Source, ...]

    def __post_init__(self):
        if not self.sources:
            raise MixtureError("a mixture needs at least one source")
        seen = set()
        for source in self.sources:
            key = (source.dataset_prefix, source.dataset.partition(":")[2], source.split)
            if key in seen:
                raise MixtureError(f"{source.dataset}:{source.split} appears twice in the mixture")
            seen.add(key)

    @property
    def weights(self) -> Tuple[float, ...]:
        """The weights normalised to sum to 1: each source's share of transitions."""
        total = sum(s.weight for s in self.sources)
        return tuple(s.weight / total for s in self.sources)

    @classmethod
    def parse(cls, text: str) -> "Mixture":
        """From `dataset:split:weight[,dataset:split:weight...]`."""
        if not isinstance(text, str) or not text.strip():
            raise MixtureError(
                "empty mixture; expected e.g. 'base:train:0.5,checkerboard:train:0.5'"
            )
        sources, rest = [], text
        while rest:
            match = _ENTRY.match(rest)
            if not match or (match.end() < len(rest) and rest[match.end()] != ","):
                raise MixtureError(
                    f"cannot read mixture entry {rest.split(',')[0]!r} of {text!r}; expected "
                    "dataset:split:weight, e.g. 'base:train:0.5' or "
                    "'grasps/checkerboard:1.0.0:train[:800]:0.5'"
                )
            dataset, split, weight = match.groups()
            try:
                value = float(weight)
            except ValueError:
                raise MixtureError(f"{dataset}: weight {weight!r} is not a number") from None
            sources.append(Source(dataset, split, value))
            rest = rest[match.end() + 1 :]
        return cls(tuple(sources))

    @classmethod
    def from_dict(cls, data, where: str = "mixture") -> "Mixture":
        if isinstance(data, str):
            return cls.parse(data)
        if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
            raise MixtureError(f"{where}: expected a mapping with a 'sources' list")
        sources = []
        for i, entry in enumerate(data["sources"]):
            if not isinstance(entry, dict) or "dataset" not in entry:
                raise MixtureError(f"{where}: source {i} needs at least a 'dataset'")
            unknown = set(entry) - {"dataset", "split", "weight"}
            if unknown:
                raise MixtureError(f"{where}: source {i} has unknown keys {sorted(unknown)}")
            sources.append(
                Source(
                    str(entry["dataset"]),
                    str(entry.get("split", rlds_grasp.SPLIT)),
                    entry.get("weight", 1.0),
                )
            )
        return cls(tuple(sources))

    @classmethod
    def load(cls, spec: str) -> "Mixture":
        """A YAML file's path, or the short string form."""
        if spec.endswith((".yaml", ".yml")) or os.path.isfile(spec):
            return cls.from_dict(_read_yaml(spec), where=spec)
        return cls.parse(spec)

    def as_dict(self) -> dict:
        return {
            "sources": [
                {"dataset": s.dataset, "split": s.split, "weight": s.weight} for s in self.sources
            ]
        }

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.sources)

    def resolve(self, data_dir: str) -> List[ResolvedSource]:
        """Checks every source against `data_dir` (see the module doc).

        Raises:
            MixtureError: naming the source and what is wrong with it.
        """
        return [_resolve(source, data_dir) for source in self.sources]


@dataclasses.dataclass(frozen=True)
class Chain:
    """An ordered list of (link name, mixture): one fine-tune per link, each
    starting from the previous link's checkpoint."""

    links: Tuple[Tuple[str, Mixture], ...]

    @classmethod
    def load(cls, path: str) -> "Chain":
        data = _read_yaml(path)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("chain"), list)
            or not data["chain"]
        ):
            raise MixtureError(f"{path}: expected a mapping with a non-empty 'chain' list")
        links, names = [], set()
        for i, link in enumerate(data["chain"]):
            if not isinstance(link, dict) or "name" not in link or "mixture" not in link:
                raise MixtureError(f"{path}: chain link {i} needs a 'name' and a 'mixture'")
            name = str(link["name"])
            if name in names:
                raise MixtureError(f"{path}: chain link name {name!r} appears twice")
            names.add(name)
            links.append((name, Mixture.from_dict(link["mixture"], where=f"{path}: link {name!r}")))
        return cls(tuple(links))

    @classmethod
    def study(
        cls,
        tasks: Sequence[str] = schema.CHALLENGE_TASKS,
        target_split: str = "train",
        base: str = "base",
    ) -> "Chain":
        """The study's continual chain: each link fine-tunes on 50% base data
        and 50% the next challenge's target data."""
        return cls(
            tuple(
                (task, Mixture((Source(base, "train", 0.5), Source(task, target_split, 0.5))))
                for task in tasks
            )
        )


def _read_yaml(path: str):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise MixtureError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise MixtureError(f"{path} is not valid YAML: {e}") from None


def expected_step_spec() -> Dict[str, Tuple[Tuple[Optional[int], ...], str]]:
    """{flat step feature: (shape, dtype)} of the schema's RLDS features."""
    return _step_spec(schema.episode_features("png"))


def _step_spec(features) -> Dict[str, Tuple[Tuple[Optional[int], ...], str]]:
    steps = features[schema.STEPS]
    flat = {}

    def walk(prefix, info):
        if isinstance(info, dict):
            for key, value in info.items():
                walk(f"{prefix}/{key}" if prefix else key, value)
        else:
            flat[prefix] = (tuple(info.shape), getattr(info.dtype, "name", str(info.dtype)))

    walk("", steps.feature.get_tensor_info())
    return flat


def _resolve(source: Source, data_dir: str) -> ResolvedSource:
    import tensorflow_datasets as tfds

    if not os.path.isdir(data_dir):
        raise MixtureError(f"data dir {data_dir!r} does not exist")
    version = source.dataset.partition(":")[2]
    wanted = f"{source.dataset_prefix}:{version}" if version else source.dataset_prefix
    try:
        card = catalog.show(data_dir, wanted)
    except ValueError as e:
        raise MixtureError(f"mixture source {source}: {e}") from None
    dataset_id = rlds_grasp.DatasetId.parse(card["id"])
    builder = tfds.builder_from_directory(card["path"])
    spec, expected = _step_spec(builder.info.features), expected_step_spec()
    for key in sorted(set(spec) | set(expected)):
        if spec.get(key) != expected.get(key):
            raise MixtureError(
                f"{dataset_id}: step feature {key!r} is {spec.get(key, 'missing')} (shape, "
                f"dtype), but neverstop's schema has {expected.get(key, 'no such feature')}; "
                "the trainer cannot mix it with other sources"
            )
    split_name = source.split.split("[")[0]
    if split_name not in builder.info.splits:
        raise MixtureError(
            f"{dataset_id}: no split {split_name!r}; it has {sorted(builder.info.splits)}"
        )
    try:
        sub = builder.info.splits[source.split]
    except (ValueError, AssertionError, KeyError) as e:
        total = builder.info.splits[split_name].num_examples
        raise MixtureError(
            f"{dataset_id}: split slice {source.split!r} does not fit the {split_name!r} split "
            f"of {total} episodes ({e})"
        ) from None
    if sub.num_examples <= 0:  # TFDS counts a backwards slice (train[3:1]) as -2
        raise MixtureError(f"{dataset_id}: {source.split!r} selects no episodes")
    instructions = tuple(
        (fi.filename, int(fi.skip), int(fi.take)) for fi in sub.file_instructions if fi.take != 0
    )
    return ResolvedSource(
        source=source,
        dataset_id=dataset_id,
        path=card["path"],
        episodes=int(sub.num_examples),
        steps=card["statistics"].get("steps"),
        file_instructions=instructions,
    )
