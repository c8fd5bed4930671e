"""A small resumable scheduler: named steps, their dependencies, done-markers.

A workflow is a list of `Step`s: a name, a module-level function, its
keyword arguments and the names of the steps it needs. `run_steps` runs
every step whose dependencies are done, up to `workers` at a time, in a
pool of spawned worker processes (TensorFlow is not fork-safe, and a
crash stays out of the scheduler). A step's function writes its artifacts
under the run directory and returns a JSON-able dict of what it produced;
the worker then writes `RUN/.done/<step>.json` holding that dict,
atomically, after the artifacts. So:

- a re-run skips every step with a marker, and
- a run killed at any point (the scheduler, a worker, the machine) re-runs
  only the unfinished steps; each step's function must be idempotent
  (collectors and trainers resume by themselves; the rest overwrite
  atomically).

Each step's stdout and stderr (tqdm bars, Beam and TensorFlow chatter) go
to `RUN/logs/<step>.log`; the scheduler appends one JSON line per event to
`RUN/steps.jsonl` (start, done, skip, failed) and hands the same record to
`progress`. A worker that outlives the scheduler (it was killed) kills its
own process group within a second, so a re-run never races an orphan over
the same files.
"""

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from neverstop import jsonfile

DONE_DIR = ".done"
LOG_DIR = "logs"
STEP_LOG = "steps.jsonl"

logger = logging.getLogger(__name__)

# A fresh worker process after this many steps: TensorFlow keeps some
# memory per trained network.
TASKS_PER_WORKER = 8


class WorkflowError(RuntimeError):
    """A workflow that cannot run (a bad graph) or steps that failed."""


@dataclasses.dataclass(frozen=True)
class Step:
    """`fn(run_dir, **params) -> dict`, run once every step in `deps` is done.

    `fn` must be a module-level function (it is pickled by reference into a
    spawned process) and `params` plain data.
    """

    name: str
    fn: Callable[..., Dict[str, Any]]
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    deps: Sequence[str] = ()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def marker_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, DONE_DIR, f"{name}.json")


def log_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, LOG_DIR, f"{name}.log")


def read_marker(run_dir: str, name: str) -> Optional[dict]:
    """The marker of a finished step, or None (an unreadable marker counts as
    not done: the step runs again)."""
    path = marker_path(run_dir, name)
    try:
        with open(path) as f:
            marker = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logging.warning("ignoring unreadable marker %s; the step runs again", path)
        return None
    return marker if isinstance(marker, dict) and marker.get("step") == name else None


def read_step_log(run_dir: str) -> List[dict]:
    """Every event of every run in this directory, oldest first."""
    path = os.path.join(run_dir, STEP_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_graph(steps: Sequence[Step]) -> Dict[str, Step]:
    """Steps by name; raises WorkflowError on a duplicate or unusable name,
    an unknown dependency or a cycle, naming them."""
    by_name: Dict[str, Step] = {}
    for step in steps:
        if step.name in by_name:
            raise WorkflowError(f"two steps are named {step.name!r}")
        if not step.name or "/" in step.name or step.name.startswith("."):
            raise WorkflowError(f"step name {step.name!r} must be a plain file name")
        by_name[step.name] = step
    for step in steps:
        unknown = [d for d in step.deps if d not in by_name]
        if unknown:
            raise WorkflowError(f"step {step.name!r} depends on unknown steps {unknown}")
    state: Dict[str, int] = {}  # 1: on the current path, 2: checked

    def visit(name: str, path: List[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise WorkflowError(f"the steps form a cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in by_name[name].deps:
            visit(dep, path + [name])
        state[name] = 2

    for step in steps:
        visit(step.name, [])
    return by_name


def chain_heights(steps: Sequence[Step]) -> Dict[str, int]:
    """For each step, the number of steps on the longest chain from it to the
    end of the workflow (itself included): the scheduler starts the ready
    step with the longest chain first, so serial chains do not wait behind
    independent work."""
    by_name = check_graph(steps)
    dependents: Dict[str, List[str]] = {name: [] for name in by_name}
    for step in steps:
        for dep in step.deps:
            dependents[dep].append(step.name)
    heights: Dict[str, int] = {}

    def height(name: str) -> int:
        if name not in heights:
            heights[name] = 1 + max((height(d) for d in dependents[name]), default=0)
        return heights[name]

    for name in by_name:
        height(name)
    return heights


# --- In the worker processes ------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def _init_worker(parent: int) -> None:
    """Its own process group (the scheduler can stop it and its subprocesses
    together) and a watch on the scheduler."""
    os.setsid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _run_in_worker(run_dir: str, step: Step) -> dict:
    """Runs one step, then writes its marker; returns the marker."""
    path = log_path(run_dir, step.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a") as log:
        # File descriptors, not only sys.stdout: Beam and TensorFlow write to
        # them from C++ and from their own threads.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logger.info("step %s (pid %d)", step.name, os.getpid())
    start = time.perf_counter()
    try:
        outputs = step.fn(run_dir, **step.params) or {}
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        raise
    marker = {
        "step": step.name,
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 3),
        "finished": _now(),
    }
    jsonfile.write_atomic(marker_path(run_dir, step.name), marker)
    logger.info("step %s done in %.1f s", step.name, marker["seconds"])
    sys.stderr.flush()
    return marker


# --- The scheduler ------------------------------------------------------------------------


def run_steps(
    steps: Sequence[Step],
    run_dir: str,
    workers: int = 2,
    progress: Optional[Callable[[dict], None]] = None,
) -> Dict[str, dict]:
    """Runs every step not yet done, dependencies first, up to `workers` at
    once; returns every step's marker.

    When a step fails, the steps already running are let finish (their work
    is kept), no new one starts, and WorkflowError names the failed steps
    and the end of their logs. Re-running picks up from there.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise WorkflowError(f"workers must be a positive integer, got {workers!r}")
    by_name = check_graph(steps)
    os.makedirs(os.path.join(run_dir, DONE_DIR), exist_ok=True)
    with open(os.path.join(run_dir, STEP_LOG), "a", buffering=1) as step_log:

        def record(event: str, name: str, **extra) -> None:
            entry = {"time": _now(), "event": event, "step": name, **extra}
            step_log.write(json.dumps(entry, sort_keys=True) + "\n")
            if progress:
                progress(entry)

        done: Dict[str, dict] = {}
        for step in steps:
            marker = read_marker(run_dir, step.name)
            if marker is not None:
                done[step.name] = marker
                record("skip", step.name, seconds=marker.get("seconds"))
        heights = chain_heights(steps)
        # Longest remaining chain first (the critical path), then list order.
        todo = sorted((s.name for s in steps if s.name not in done), key=lambda n: -heights[n])
        failed = _schedule(run_dir, by_name, todo, done, workers, record) if todo else []
    if failed:
        details = "\n".join(
            f"--- {name}: {log_path(run_dir, name)} ends with:\n{_tail(log_path(run_dir, name))}"
            for name in failed
        )
        raise WorkflowError(
            f"{len(failed)} step(s) failed: {', '.join(failed)}. Finished steps are kept; "
            f"run the same command again to resume.\n{details}"
        )
    return done


def _schedule(run_dir, by_name, todo, done, workers, record) -> List[str]:
    """Runs `todo` on a pool of spawned workers; returns the failed steps."""
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
        max_tasks_per_child=TASKS_PER_WORKER,
    )
    running: Dict[concurrent.futures.Future, tuple] = {}
    failed: List[str] = []
    try:
        while True:
            busy = {name for name, _ in running.values()}
            if not failed:
                for name in todo:
                    if len(running) >= workers:
                        break
                    if name in done or name in busy:
                        continue
                    if all(d in done for d in by_name[name].deps):
                        future = executor.submit(_run_in_worker, run_dir, by_name[name])
                        running[future] = (name, time.perf_counter())
                        busy.add(name)
                        record("start", name)
            if not running:
                if not failed and any(n not in done for n in todo):
                    raise WorkflowError("no step can start; the graph is inconsistent")
                return failed
            finished, _ = concurrent.futures.wait(
                list(running), return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                name, started = running.pop(future)
                seconds = round(time.perf_counter() - started, 3)
                error = future.exception()
                marker = read_marker(run_dir, name)
                if error is None and marker is not None:
                    done[name] = marker
                    record("done", name, seconds=seconds)
                    continue
                if isinstance(error, concurrent.futures.process.BrokenProcessPool):
                    reason = "its worker process died (killed, or crashed)"
                else:
                    reason = f"{type(error).__name__}: {error}"
                failed.append(name)
                record("failed", name, seconds=seconds, reason=reason)
    except BaseException:
        _kill_workers(executor)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _kill_workers(executor) -> None:
    # Each worker leads its own process group (_init_worker).
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: str, limit: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
