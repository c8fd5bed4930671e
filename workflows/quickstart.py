"""The README's first command: the paper's chain, tiny, in a few minutes.

`neverstop quickstart` runs `workflows/paper.py`'s steps at the `QUICKSTART`
scale under DATA_DIR/quickstart: 240 scripted and 60 random base episodes
(collected by the Beam collector), ingested as `grasps/base:1.0.0`; a short
pre-training; the base policy with exploration noise collects 100
`checkerboard` grasps (`grasps/checkerboard:1.0.0`); one fine-tune on
50/50 base/target data; the base policy and the fine-tuned one evaluated on
`checkerboard` (held-out objects); one table and one plot in
DATA_DIR/quickstart/report/. Like the experiment, it resumes where a killed
run stopped.
"""

import dataclasses
import os
from typing import Callable, Optional

from neverstop.workflows import paper

DEFAULT_DATA_DIR = "neverstop_data"


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    data_dir: str = DEFAULT_DATA_DIR
    workers: int = 2
    scale: paper.Scale = paper.QUICKSTART


def run_dir(config: QuickstartConfig) -> str:
    return os.path.join(config.data_dir, "quickstart")


def run(
    config: QuickstartConfig = QuickstartConfig(),
    progress: Optional[Callable[[dict], None]] = None,
) -> str:
    """Runs (or resumes) the quickstart; returns the path of its report (README.md).

    Raises:
        ValueError: DATA_DIR/quickstart was made by a quickstart with other
            settings (an older neverstop's): nothing there is touched.
    """
    directory = run_dir(config)
    try:
        return paper.run(config.scale, directory, workers=config.workers, progress=progress)
    except paper.ScaleMismatchError as error:
        raise ValueError(
            f"{error.path}: this quickstart was run with other settings ({error.differences}), "
            "e.g. by an older neverstop, and is kept as it is; use another --data-dir, or "
            f"delete {directory} to run the quickstart afresh"
        ) from None
