"""The Q-network: Q(s, a) = sigmoid(head(tower(image), gripper state, action)).

It is two Keras models so CEM can run the image tower once per state and the
(cheap) head once per sampled action:

- `tower`: uint8 image [B, H, W, 3] -> features. With the `late` merge the
  features are a vector (conv stack, flatten, dense); with `qtopt` they are
  the last conv feature map.
- `head`: (features, state [B, 2], action [B, 5]) -> logit [B]. `late`
  concatenates features, state and action and runs dense layers; `qtopt`
  embeds state and action, broadcast-adds them into the feature map and runs
  `qtopt_convs` more conv layers before the dense layers (QT-Opt's merge:
  every CEM sample pays for those convs).

With `actor` on, the network also holds an actor (`actor_tower`,
`actor_head`): its own conv tower (the same stack) and a dense layer over
(features, state) -> tanh action [B, 5]. It shares nothing with Q, so the
TD error and the behaviour-cloning error never pull on the same weights.
Beside it sits its Polyak average (`average_actor_tower`,
`average_actor_head`, not trainable), which is what acts.

`layer_flops` counts multiply-adds x2 of every conv and dense layer for
one example, the numbers `neverstop bench train` adds up.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from neverstop import schema
from neverstop.trainers.config import TrainConfig

STATE_DIM = 2  # gripper_closed, height_to_bottom
HEIGHT_SCALE = 5.0  # metres -> about [0, 1.5], the range of the other inputs


def state_vector(observation: Dict[str, tf.Tensor]) -> tf.Tensor:
    """[B, 2] float32: gripper_closed and the scaled height_to_bottom."""
    return tf.stack(
        [
            tf.cast(observation[schema.GRIPPER_CLOSED], tf.float32),
            tf.cast(observation[schema.HEIGHT_TO_BOTTOM], tf.float32) * HEIGHT_SCALE,
        ],
        axis=-1,
    )


def _conv(filters: int, kernel: int, stride: int, name: str) -> tf.keras.layers.Layer:
    return tf.keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", activation="relu", name=name
    )


class SpatialSoftArgmax(tf.keras.layers.Layer):
    """[B, H, W, C] -> [B, 2C]: each channel's expected (x, y) in [-1, 1] under a
    softmax over its positions, with a learned temperature (Levine et al.'s
    spatial softmax). Where something is, as numbers a dense head can relate to
    an action, which a flattened feature map only says implicitly."""

    def build(self, input_shape):
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(), initializer="zeros", trainable=True
        )

    def call(self, x):
        _, h, w, c = x.shape
        logits = tf.reshape(tf.transpose(x, (0, 3, 1, 2)), (-1, c, h * w))
        weights = tf.nn.softmax(logits / tf.exp(self.log_temperature), axis=-1)
        ys, xs = tf.meshgrid(tf.linspace(-1.0, 1.0, h), tf.linspace(-1.0, 1.0, w), indexing="ij")
        grid = tf.stack([tf.reshape(xs, (-1,)), tf.reshape(ys, (-1,))], axis=-1)  # [HW, 2]
        return tf.reshape(tf.einsum("bcp,pk->bck", weights, grid), (-1, 2 * c))


def build_tower(config: TrainConfig, name: str = "tower") -> tf.keras.Model:
    size = config.image_size
    image = tf.keras.Input((size, size, 3), dtype=tf.uint8, name="image")
    x = tf.keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(tf.cast(image, tf.float32))
    for i, (filters, kernel, stride) in enumerate(config.tower_filters):
        x = _conv(filters, kernel, stride, f"conv{i}")(x)
    if config.merge == "late":
        conv_map = x
        x = tf.keras.layers.Flatten(name="flatten")(x)
        x = tf.keras.layers.Dense(config.head_units[0], activation="relu", name="embed")(x)
        if config.keypoints:
            points = SpatialSoftArgmax(name="keypoints")(conv_map)
            x = tf.keras.layers.Concatenate(name="embed_keypoints")([x, points])
    return tf.keras.Model(image, x, name=name)


def build_head(config: TrainConfig, feature_shape: Tuple[int, ...], name: str = "head"):
    features = tf.keras.Input(feature_shape, name="features")
    state = tf.keras.Input((STATE_DIM,), name="state")
    action = tf.keras.Input((schema.ACTION_DIM,), name="action")
    state_action = tf.keras.layers.Concatenate(name="state_action")([state, action])
    if config.merge == "late":
        x = tf.keras.layers.Concatenate(name="merge")([features, state_action])
        units = config.head_units[1:]
    else:
        channels = feature_shape[-1]
        embedded = tf.keras.layers.Dense(channels, activation="relu", name="sa_embed")(state_action)
        embedded = tf.keras.layers.Reshape((1, 1, channels), name="sa_broadcast")(embedded)
        x = tf.keras.layers.Add(name="merge")([features, embedded])
        for i in range(config.qtopt_convs):
            x = _conv(channels, 3, 1, f"merged_conv{i}")(x)
        x = tf.keras.layers.Flatten(name="flatten")(x)
        units = config.head_units
    for i, n in enumerate(units):
        x = tf.keras.layers.Dense(n, activation="relu", name=f"fc{i}")(x)
    logit = tf.keras.layers.Dense(1, name="logit")(x)
    logit = tf.keras.layers.Reshape((), name="squeeze")(logit)
    return tf.keras.Model([features, state, action], logit, name=name)


def build_actor_head(config: TrainConfig, feature_shape: Tuple[int, ...], name: str = "actor"):
    """(features, state) -> action [B, 5] in [-1, 1]."""
    features = tf.keras.Input(feature_shape, name="features")
    state = tf.keras.Input((STATE_DIM,), name="state")
    x = tf.keras.layers.Flatten(name="flatten")(features)
    x = tf.keras.layers.Concatenate(name="merge")([x, state])
    x = tf.keras.layers.Dense(config.head_units[-1], activation="relu", name="fc0")(x)
    action = tf.keras.layers.Dense(schema.ACTION_DIM, activation="tanh", name="action")(x)
    return tf.keras.Model([features, state], action, name=name)


def assign(targets: List[tf.Variable], sources: List[tf.Variable]) -> None:
    """targets <- sources, variable by variable (same structure)."""
    for target, source in zip(targets, sources, strict=True):
        target.assign(source)


def polyak_update(averages: List[tf.Variable], sources: List[tf.Variable], keep: float) -> None:
    """averages <- keep * averages + (1 - keep) * sources, variable by variable."""
    tau = 1.0 - keep
    for average, source in zip(averages, sources, strict=True):
        average.assign(average + tau * (source - average))


class QNetwork(tf.Module):
    """A tower and a head (and, with `actor`, an actor tower and head);
    `weights` in a fixed order: tower, head, then the actor's."""

    def __init__(self, config: TrainConfig, name: str = "q", with_actor: bool = True):
        super().__init__(name=name)
        self.config = config
        self.tower = build_tower(config, f"{name}_tower")
        self.head = build_head(config, tuple(self.tower.output_shape[1:]), f"{name}_head")
        self.actor_tower = self.actor_head = None
        self.average_actor_tower = self.average_actor_head = None
        if config.actor and with_actor:
            self.actor_tower, self.actor_head = self._build_actor(f"{name}_actor")
            self.average_actor_tower, self.average_actor_head = self._build_actor(
                f"{name}_average_actor"
            )
            for model in (self.average_actor_tower, self.average_actor_head):
                model.trainable = False
            self.reset_average_actor()

    def _build_actor(self, name: str):
        tower = build_tower(self.config, f"{name}_tower")
        return tower, build_actor_head(self.config, tuple(tower.output_shape[1:]), f"{name}_head")

    @property
    def has_actor(self) -> bool:
        return self.actor_tower is not None

    def parts(self) -> Dict[str, tf.keras.Model]:
        """The Keras models by checkpoint name (tower, head[, actor_tower, actor_head,
        average_actor_tower, average_actor_head])."""
        parts = {"tower": self.tower, "head": self.head}
        if self.has_actor:
            parts.update(
                actor_tower=self.actor_tower,
                actor_head=self.actor_head,
                average_actor_tower=self.average_actor_tower,
                average_actor_head=self.average_actor_head,
            )
        return parts

    def checkpoint_parts(self, role: Optional[str] = None) -> Dict[str, tf.keras.Model]:
        """parts() keyed as a learner's checkpoint names them, `<role>_<part>`
        (role: this network's name, e.g. "online", unless given)."""
        role = role or self.name
        return {f"{role}_{k}": v for k, v in self.parts().items()}

    @property
    def actor_weights(self) -> List[tf.Variable]:
        return list(self.actor_tower.weights) + list(self.actor_head.weights)

    @property
    def average_actor_weights(self) -> List[tf.Variable]:
        return list(self.average_actor_tower.weights) + list(self.average_actor_head.weights)

    def reset_average_actor(self) -> None:
        """The average starts (again) at the actor's current weights."""
        assign(self.average_actor_weights, self.actor_weights)

    def actor_from_average(self) -> None:
        """The trained actor takes the weights of its average (the policy
        that acts): where a fine-tune starts."""
        assign(self.actor_weights, self.average_actor_weights)

    @property
    def q_weights(self) -> List[tf.Variable]:
        """Q's weights only: what target networks copy."""
        return list(self.tower.weights) + list(self.head.weights)

    @property
    def feature_shape(self) -> Tuple[int, ...]:
        return tuple(self.tower.output_shape[1:])

    @property
    def weights(self) -> List[tf.Variable]:
        return [w for part in self.parts().values() for w in part.weights]

    @property
    def trainable_weights(self) -> List[tf.Variable]:
        return [w for part in self.parts().values() for w in part.trainable_weights]

    def features(self, image: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.tower(image, training=training)

    def logits(self, features, state, action, training: bool = False) -> tf.Tensor:
        return self.head([features, state, action], training=training)

    def __call__(self, observation: Dict[str, tf.Tensor], action, training: bool = False):
        """Logits Q(s, a) before the sigmoid, [B]."""
        features = self.features(observation[schema.IMAGE], training)
        return self.logits(features, state_vector(observation), action, training)

    def act(
        self, observation: Dict[str, tf.Tensor], training: bool = False, average: bool = True
    ) -> tf.Tensor:
        """The actor's actions [B, 5]: its Polyak average's (what acts), or with
        average=False the trained actor's (what the loss sees)."""
        tower, head = (
            (self.average_actor_tower, self.average_actor_head)
            if average
            else (self.actor_tower, self.actor_head)
        )
        features = tower(observation[schema.IMAGE], training=training)
        return head([features, state_vector(observation)], training=training)

    def copy_from(self, other: "QNetwork") -> None:
        """Q's weights from `other` (the actor's are never copied)."""
        assign(self.q_weights, other.q_weights)

    def get_numpy(self) -> List[np.ndarray]:
        return [w.numpy() for w in self.weights]


def _layer_flops(layer: tf.keras.layers.Layer) -> int:
    if isinstance(layer, tf.keras.layers.Conv2D):
        _, h, w, c_out = layer.output_shape
        kh, kw = layer.kernel_size
        c_in = layer.input_shape[-1]
        return 2 * h * w * kh * kw * c_in * c_out
    if isinstance(layer, tf.keras.layers.Dense):
        return 2 * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return 0


def layer_flops(model: tf.keras.Model) -> Dict[str, int]:
    """FLOPs of each conv/dense layer for one example's forward pass, in layer order."""
    flops = {layer.name: _layer_flops(layer) for layer in model.layers}
    return {name: n for name, n in flops.items() if n}


def first_layer_flops(model: tf.keras.Model) -> int:
    """The first weighted layer's FLOPs: its input gradient is never needed
    when its input is data, so backward skips that half for it."""
    return next(iter(layer_flops(model).values()), 0)
