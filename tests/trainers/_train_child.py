"""Run by test_trainer.py in a fresh process: train the tiny network.

    python -m tests.trainers._train_child DATA_DIR RUN_DIR STEPS ACTOR [HANG_AT]

ACTOR: 1 to train with an actor (config actor: true), else 0.
With HANG_AT, after saving the checkpoint of step HANG_AT it writes
RUN_DIR/hanging and sleeps until killed (the test SIGKILLs it there). Prints
the digest of every variable in the final checkpoint as its last line.
"""

import os
import sys
import time

from neverstop.trainers import checkpoints, run
from tests.trainers.helpers import BASE, tiny_config


def main():
    data_dir, run_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    actor = sys.argv[4] == "1"
    hang_at = int(sys.argv[5]) if len(sys.argv) > 5 else None

    def hang(event, step):
        if event == "checkpoint" and step == hang_at:
            open(os.path.join(run_dir, "hanging"), "w").close()
            while True:
                time.sleep(1)

    config = tiny_config(steps=steps, checkpoint_every=50, log_every=25, actor=actor)
    run.train(config, BASE, data_dir, run_dir, progress=False, deterministic=True, callbacks=[hang])
    print(run.checkpoint_digest(checkpoints.locate(run_dir).prefix))


if __name__ == "__main__":
    main()
