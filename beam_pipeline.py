"""Building a Beam pipeline that runs locally by default and anywhere by flag.

Beam 2.68+'s DirectRunner first tries the Prism runner, which downloads a
binary (impossible offline: it fails, then falls back), and only the
FnApiRunner reads `direct_num_workers` / `direct_running_mode`. So when the
user names no runner, or the DirectRunner, we hand Beam an FnApiRunner with
K worker processes ourselves; any other `--runner` (Dataflow, Flink, Spark,
Prism) and every other Beam pipeline option pass through unchanged.
"""

from typing import Sequence

LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner")
RUNNING_MODES = ("multi_processing", "multi_threading", "in_memory")


def pipeline_options(
    beam_args: Sequence[str] = (), workers: int = 2, running_mode: str = "multi_processing"
):
    """PipelineOptions from command-line style Beam flags, with local defaults."""
    from apache_beam.options import pipeline_options as po

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if running_mode not in RUNNING_MODES:
        raise ValueError(f"unknown running mode {running_mode!r}; expected one of {RUNNING_MODES}")
    check_known(beam_args)
    options = po.PipelineOptions(list(beam_args))
    if options.view_as(po.StandardOptions).runner in LOCAL_RUNNERS:
        direct = options.view_as(po.DirectOptions)
        direct.direct_num_workers = workers
        direct.direct_running_mode = running_mode
        harness = options.view_as(po.WorkerOptions)
        if harness.default_sdk_harness_log_level is None:
            # Local workers share the user's terminal: without this every
            # worker warns that it has no semi_persistent_directory.
            harness.default_sdk_harness_log_level = "ERROR"
    # Workers must import our code by module name: it has to be installed
    # (pip install -e .), which the Makefile does. Main-session pickling
    # would drag the CLI's globals along, so leave it off.
    return options


def check_known(beam_args: Sequence[str]) -> None:
    """Refuses flags Beam does not know. Beam itself drops them with a log
    line, so a typo (`--verison 2.0.0`, `--epislon 0.2`) would run the job
    with the default instead of what was meant."""
    from apache_beam.options import pipeline_options as po

    options = po.PipelineOptions(list(beam_args))
    known = options.get_all_options()
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    if unknown:
        flags = ", ".join(f"--{name}" for name in unknown)
        raise ValueError(
            f"unknown option {flags}: neither this command nor Beam's pipeline options "
            "define it (flags the command does not know are handed to Beam); nothing was run"
        )


def make_pipeline(options):
    """A beam.Pipeline on the explicit local FnApiRunner unless a runner is named."""
    import apache_beam as beam
    from apache_beam.options import pipeline_options as po

    if options.view_as(po.StandardOptions).runner in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)
