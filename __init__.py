"""neverstop: offline QT-Opt grasping with fine-tuning, built around RLDS data pipelines.

The repository root is this package; its stages are the subpackages
`neverstop.envs`, `neverstop.pipelines`, `neverstop.datasets`,
`neverstop.trainers` and `neverstop.workflows`, all sharing the episode
contract in `neverstop.schema`. Importing `neverstop` loads nothing heavy.
"""

from neverstop.version import __version__
