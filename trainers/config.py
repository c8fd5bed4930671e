"""The trainer's typed configuration: every knob in one frozen dataclass.

Defaults follow QT-Opt (Kalashnikov et al., 2018) and the study (Julian et
al., 2020) where they apply, scaled to a 2-core CPU: gamma 0.9, CEM with 64
samples, 6 elites and 2 iterations, a Polyak-averaged first target network
and a lagged second one, fine-tuning at 0.25x the pre-training learning rate.
A run writes its resolved config as JSON; `TrainConfig.from_dict` reads it
back and refuses unknown keys, so a typo never silently means a default.
"""

import dataclasses
import json
import math
import numbers
from typing import Any, Dict, Optional, Tuple

import numpy as np

MODES = ("pretrain", "finetune", "scratch", "imagenet")
MERGES = ("late", "qtopt")
CEM_SELECT = ("best", "mean")
ACTING = ("cem", "actor", "actor_cem")
ACTOR_ACTING = ("actor", "actor_cem")  # the acting modes that need a network with an actor
# Fields that change the network's variables: a checkpoint can only be
# restored into a network built with the same values.
# What a config written before a field existed meant by its absence.
LEGACY_DEFAULTS = {
    "keypoints": False,
    "actor": False,
    "actor_weight": 1.0,
    "actor_polyak": 0.9995,
    "acting": "cem",
    "conservative_weight": 0.0,
    "actor_advantage_temperature": 0.0,
    "actor_max_weight": 20.0,
}

ARCHITECTURE_FIELDS = (
    "merge",
    "tower_filters",
    "head_units",
    "qtopt_convs",
    "image_size",
    "keypoints",
    "actor",
)
# What a tower's weights depend on (a vision tower file loads into Q's tower
# and the actor's alike, so whether the run has an actor does not matter).
TOWER_FIELDS = tuple(f for f in ARCHITECTURE_FIELDS if f != "actor")


class ConfigError(ValueError):
    """A config value (or a checkpoint's config) that cannot be used."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


# What each annotation accepts, and how an error names it.
_TYPE_CHECKS = {
    int: (_is_int, "an integer"),
    float: (_is_number, "a number"),
    bool: (_is_bool, "true or false"),
    str: (lambda v: isinstance(v, str), "a string"),
    Optional[bool]: (lambda v: v is None or _is_bool(v), "true, false or null"),
}


def check_types(config, prefix: str = "") -> None:
    """Raises ConfigError naming the first field of a config dataclass whose
    value is not of its annotated type (a JSON file can hold anything)."""
    for field in dataclasses.fields(config):
        check = _TYPE_CHECKS.get(field.type)
        if check is None:
            continue
        ok, expected = check
        value = getattr(config, field.name)
        if not ok(value):
            raise ConfigError(f"{prefix}{field.name} must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    samples: int = 64
    elites: int = 6
    iterations: int = 2
    initial_std: float = 0.5
    select: str = "best"  # "best": the best sample of the last iteration; "mean": the elites' mean
    # acting "actor_cem": CEM starts at the actor's action with this std (AW-Opt).
    actor_std: float = 0.3

    def __post_init__(self):
        check_types(self, "cem.")
        if self.samples < 2 or not 1 <= self.elites <= self.samples:
            raise ConfigError(
                f"CEM needs samples >= 2 and 1 <= elites <= samples, got "
                f"samples={self.samples} elites={self.elites}"
            )
        if self.iterations < 1:
            raise ConfigError(f"CEM iterations must be >= 1, got {self.iterations}")
        for name in ("initial_std", "actor_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"CEM {name} must be > 0, got {getattr(self, name)}")
        if self.select not in CEM_SELECT:
            raise ConfigError(
                f"CEM select must be one of {', '.join(CEM_SELECT)}, got {self.select!r}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    mode: str = "pretrain"
    merge: str = "late"
    # Network. tower_filters: one conv layer per entry, (filters, kernel, stride).
    image_size: int = 64
    tower_filters: tuple = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
    head_units: tuple = (256, 128)
    qtopt_convs: int = 2  # `qtopt` merge: conv layers after the broadcast add
    # `late` merge: also feed the head each tower channel's spatial soft-argmax
    # (x, y), where in the image that channel fires (docs/trainer.md). None:
    # on with `late`, off with `qtopt`.
    keypoints: Optional[bool] = None
    # An actor beside the Q-function (docs/trainer.md, "The actor"): its own
    # tower and a dense head, image + gripper state -> action, trained by
    # regression onto the actions of successful episodes (positive-filtered
    # behaviour cloning, as AW-Opt's actor) with weight actor_weight in the
    # loss. acting: what the policy does with a checkpoint, "cem" (QT-Opt's
    # argmax of Q), "actor" (the actor's action; needs actor) or "actor_cem"
    # (CEM over Q started at the actor's action, std cem.actor_std: AW-Opt's
    # policy; needs actor).
    actor: bool = False
    actor_weight: float = 1.0
    # The acting actor is the trained one's Polyak average:
    # average <- actor_polyak * average + (1 - actor_polyak) * actor every step.
    actor_polyak: float = 0.9995
    # AW-Opt's advantage weighting of the actor's regression (Lu et al., 2021):
    # each successful transition weighs exp((Q(s, a) - Q(s, pi(s))) / this),
    # at most actor_max_weight, so the actor follows the successes that Q
    # rates above its own action, not every lucky one. 0: unweighted.
    actor_advantage_temperature: float = 0.0
    actor_max_weight: float = 20.0
    acting: str = "cem"
    # Optimisation.
    steps: int = 20_000
    batch_size: int = 64
    learning_rate: float = 3e-4
    finetune_lr_scale: float = 0.25
    l2: float = 1e-5
    grad_clip_norm: float = 10.0
    # Q-learning.
    gamma: float = 0.9
    # Weight of a transition into a terminal step (a graded grasp) in the loss.
    terminal_weight: float = 1.0
    # Conservative Q (after CQL, Kumar et al., 2020; docs/trainer.md): the loss
    # gains conservative_weight * mean(Q(s, a_cem) - Q(s, a)), pushing Q down
    # where CEM over the online network would act and up at the data's
    # action, so the argmax stays where the data has evidence. 0: off (QT-Opt).
    conservative_weight: float = 0.0
    polyak: float = 0.995  # Q'1 <- polyak * Q'1 + (1 - polyak) * Q each step
    lag_steps: int = 500  # Q'2 <- Q'1 every lag_steps
    cem: CEMConfig = dataclasses.field(default_factory=CEMConfig)
    # Stream.
    augment: bool = True
    seed: int = 0
    # Run bookkeeping.
    checkpoint_every: int = 1_000
    keep_checkpoints: int = 3
    log_every: int = 100

    def __post_init__(self):
        if isinstance(self.cem, dict):
            object.__setattr__(self, "cem", _cem_config(self.cem))
        if not isinstance(self.cem, CEMConfig):
            raise ConfigError(f"cem must be a mapping of CEM settings, got {self.cem!r}")
        check_types(self)
        if not (
            isinstance(self.tower_filters, (list, tuple))
            and all(
                isinstance(f, (list, tuple)) and len(f) == 3 and all(_is_int(x) for x in f)
                for f in self.tower_filters
            )
        ):
            raise ConfigError(
                "tower_filters must be a non-empty list of (filters, kernel, stride) integers, "
                f"got {self.tower_filters!r}"
            )
        if not (
            isinstance(self.head_units, (list, tuple)) and all(_is_int(u) for u in self.head_units)
        ):
            raise ConfigError(f"head_units must be a list of integers, got {self.head_units!r}")
        object.__setattr__(self, "tower_filters", tuple(tuple(f) for f in self.tower_filters))
        object.__setattr__(self, "head_units", tuple(self.head_units))
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.merge not in MERGES:
            raise ConfigError(f"unknown merge {self.merge!r}; expected one of {', '.join(MERGES)}")
        check_acting(self, self.acting, "this config")
        if self.keypoints is None:
            object.__setattr__(self, "keypoints", self.merge == "late")
        if self.keypoints and self.merge != "late":
            raise ConfigError(
                "keypoints feed the `late` merge's head; the `qtopt` merge has none "
                "(set keypoints to false)"
            )
        for name in ("steps", "batch_size", "lag_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"gamma must be in (0, 1), got {self.gamma}")
        if not self.terminal_weight > 0.0:
            raise ConfigError(f"terminal_weight must be > 0, got {self.terminal_weight}")
        for name in ("conservative_weight", "actor_advantage_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a number >= 0, got {value}")
        for name in ("polyak", "actor_polyak"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in (
            "learning_rate",
            "finetune_lr_scale",
            "grad_clip_norm",
            "actor_weight",
            "actor_max_weight",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if not self.tower_filters or any(len(f) != 3 for f in self.tower_filters):
            raise ConfigError("tower_filters must be a non-empty list of (filters, kernel, stride)")

    @property
    def effective_learning_rate(self) -> float:
        """Fine-tuning runs at finetune_lr_scale x the pre-training rate."""
        scale = self.finetune_lr_scale if self.mode == "finetune" else 1.0
        return self.learning_rate * scale

    def architecture(self) -> Dict[str, Any]:
        return {name: _jsonable(getattr(self, name)) for name in ARCHITECTURE_FIELDS}

    def as_dict(self) -> Dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
        data = _with_legacy_defaults(data)
        if isinstance(data.get("cem"), dict):
            data["cem"] = _cem_config(data["cem"])
        return cls(**data)

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        """Reads a config JSON file; every error names the file."""
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON config: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: a config is a JSON object of fields, got a {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def with_merge(self, merge: str) -> "TrainConfig":
        """This config with another merge; `keypoints`, which was worked out
        for the old merge (only `late` has them), follows the new one."""
        if merge == self.merge:
            return self
        return self.replace(merge=merge, keypoints=None)


def check_compatible(
    saved: Dict[str, Any],
    config: TrainConfig,
    where: str,
    fields: Tuple[str, ...] = ARCHITECTURE_FIELDS,
) -> None:
    """Raises ConfigError naming every architecture field (of `fields`) that differs."""
    current = config.architecture()
    saved = {**LEGACY_DEFAULTS, **saved}  # always written by a run, never partial
    saved_arch = {k: _jsonable(saved.get(k)) for k in fields}
    diffs = [
        f"{k}: checkpoint has {saved_arch[k]!r}, this run has {current[k]!r}"
        for k in fields
        if saved_arch[k] != current[k]
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {where} was trained with an incompatible network config ("
            + "; ".join(diffs)
            + "); use the same architecture or start a new run"
        )


def check_acting(config: TrainConfig, acting: str, where: str) -> None:
    """Raises ConfigError unless a network trained with `config` can act by `acting`."""
    if acting not in ACTING:
        raise ConfigError(f"unknown acting {acting!r}; expected one of {', '.join(ACTING)}")
    if acting in ACTOR_ACTING and not config.actor:
        raise ConfigError(
            f'{where}: acting "{acting}" needs a network with an actor (config actor: true) '
            'and this one has none; act with "cem"'
        )


def _cem_config(values: Dict[str, Any]) -> CEMConfig:
    known = {f.name for f in dataclasses.fields(CEMConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown cem keys {unknown}; known: {sorted(known)}")
    return CEMConfig(**values)


def _with_legacy_defaults(data: Dict[str, Any]) -> Dict[str, Any]:
    """A run's resolved config written before a field existed meant LEGACY_DEFAULTS
    by its absence. A partial config (a user's overrides) means today's defaults:
    it is recognised by lacking fields that every resolved config has."""
    current = {f.name for f in dataclasses.fields(TrainConfig)} - set(LEGACY_DEFAULTS)
    if not current <= set(data):
        return dict(data)
    return {**LEGACY_DEFAULTS, **data}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def describe(config: Optional[TrainConfig] = None) -> str:
    return json.dumps((config or TrainConfig()).as_dict(), indent=2, sort_keys=True)
