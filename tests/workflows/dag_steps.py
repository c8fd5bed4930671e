"""Trivial step functions for the scheduler tests (module level: workers
import them by name)."""

import json
import os
import signal
import time


def timed(run_dir: str, name: str, seconds: float = 0.0) -> dict:
    """Sleeps, recording when it started and ended (wall clock)."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    os.makedirs(os.path.join(run_dir, "times"), exist_ok=True)
    with open(os.path.join(run_dir, "times", f"{name}.json"), "w") as f:
        json.dump({"start": start, "end": end, "pid": os.getpid()}, f)
    return {"name": name, "pid": os.getpid()}


def fail_unless_fixed(run_dir: str) -> dict:
    """The injected failure: raises until RUN/fixed exists."""
    if not os.path.exists(os.path.join(run_dir, "fixed")):
        raise RuntimeError("injected failure")
    return {"fixed": True}


def kill_self(run_dir: str) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}
