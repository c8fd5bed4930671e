"""`neverstop export`: a checkpoint -> a SavedModel policy.

The SavedModel's `serving_default` signature maps a batch of observations
(image uint8 [B, 64, 64, 3], gripper_closed float32 [B], height_to_bottom
float32 [B]) to {"action": float32 [B, 5]} by the same greedy policy the
trainer evaluates with (CEM over Q, or the actor: `acting`). Its CEM seeds come from a tf.random.Generator saved
inside the model, so repeated calls explore different samples. Loading it
needs only TensorFlow: no neverstop code (tested in a fresh process).
`policy.json` next to it records the checkpoint, the CEM settings and the
signature.
"""

import os
from typing import Optional

import tensorflow as tf

from neverstop import jsonfile, schema
from neverstop.trainers import checkpoints
from neverstop.trainers import policy as policy_lib
from neverstop.trainers.config import CEMConfig, check_acting
from neverstop.trainers.networks import QNetwork


class ExportedPolicy(tf.Module):
    def __init__(
        self, network: QNetwork, cem_config: CEMConfig, seed: int = 0, acting: str = "cem"
    ):
        super().__init__(name="neverstop_policy")
        check_acting(network.config, acting, "the checkpoint")
        for name, part in network.parts().items():
            setattr(self, name, part)
        self._acting = acting
        self.rng = tf.random.Generator.from_seed(seed)
        self._network = network
        self._cem = cem_config
        self.act = tf.function(
            self._act, input_signature=policy_lib.input_signature(network.config.image_size)
        )

    def _act(self, image, gripper_closed, height_to_bottom):
        seed = self.rng.make_seeds(1)[:, 0]
        observation = {
            schema.IMAGE: image,
            schema.GRIPPER_CLOSED: gripper_closed,
            schema.HEIGHT_TO_BOTTOM: height_to_bottom,
        }
        action = policy_lib.greedy_actions(
            self._network, self._cem, observation, seed, self._acting
        )
        return {"action": action}


def export(checkpoint: str, out: str, seed: int = 0, acting: Optional[str] = None) -> dict:
    """Writes the SavedModel to `out` (refuses a non-empty `out`). `acting`
    None: the run's config.acting."""
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"--out {out}: exists and is not empty; choose a new directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out}: is a file; choose a new directory")
    created = not tf.io.gfile.exists(out)
    try:
        tf.io.gfile.makedirs(out)  # before loading anything: an unwritable place fails here
    except tf.errors.OpError as e:
        raise OSError(f"--out {out}: cannot create it: {e.message}") from None
    try:
        network, config, ref = checkpoints.load_network(checkpoint)
    except BaseException:
        if created:  # a checkpoint that cannot be loaded leaves no empty --out behind
            tf.io.gfile.rmtree(out)
        raise
    acting = acting or config.acting
    module = ExportedPolicy(network, config.cem, seed, acting)
    tf.saved_model.save(module, out, signatures={"serving_default": module.act})
    info = {
        "checkpoint": ref.id,
        "checkpoint_prefix": os.path.abspath(ref.prefix),
        "acting": acting,
        "cem": config.as_dict()["cem"],
        "merge": config.merge,
        "signature": {
            "inputs": {
                schema.IMAGE: f"uint8 [B, {config.image_size}, {config.image_size}, 3]",
                schema.GRIPPER_CLOSED: "float32 [B]",
                schema.HEIGHT_TO_BOTTOM: "float32 [B] (metres)",
            },
            "outputs": {"action": "float32 [B, 5] in [-1, 1]: dx, dy, dz, dyaw, close"},
        },
    }
    jsonfile.write_atomic(os.path.join(out, "policy.json"), info)
    return info
