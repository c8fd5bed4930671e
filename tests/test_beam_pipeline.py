"""Tests for neverstop/beam_pipeline.py: local FnApiRunner by default, any runner by flag."""

import apache_beam as beam
import pytest
from apache_beam.io.gcp import gcsio
from apache_beam.options import pipeline_options as po
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from neverstop import beam_pipeline

DATAFLOW_ARGS = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]


class _OfflineGcs:
    """Stands in for GcsIO: building a Dataflow pipeline asks GCS whether the
    temp bucket has soft delete on, which offline retries for two minutes."""

    def is_soft_delete_enabled(self, path):
        return False


def test_local_options_set_the_worker_count_and_mode():
    options = beam_pipeline.pipeline_options([], workers=3)
    direct = options.view_as(po.DirectOptions)
    assert direct.direct_num_workers == 3
    assert direct.direct_running_mode == "multi_processing"
    assert options.view_as(po.StandardOptions).runner is None


@pytest.mark.parametrize("runner", ["DirectRunner", "FnApiRunner"])
def test_named_local_runners_also_get_the_worker_count(runner):
    options = beam_pipeline.pipeline_options([f"--runner={runner}"], 4, "multi_threading")
    direct = options.view_as(po.DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (4, "multi_threading")


def test_other_runners_and_their_options_pass_through():
    options = beam_pipeline.pipeline_options(DATAFLOW_ARGS, workers=3)
    assert options.view_as(po.StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(po.GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("p", "r", "gs://b/t")
    # The local worker settings are not forced onto a remote runner.
    assert options.view_as(po.DirectOptions).direct_num_workers != 3


@pytest.mark.timeout(60)
def test_make_pipeline_hands_a_named_runner_to_beam(monkeypatch):
    monkeypatch.setattr(gcsio, "GcsIO", _OfflineGcs)
    # Beam's validator rejects "p" and bucket "b" (too short) before it would
    # ever submit, so build with well-formed names; the pipeline is never run.
    args = [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=us-central1",
        "--temp_location=gs://my-bucket/tmp",
    ]
    pipeline = beam_pipeline.make_pipeline(beam_pipeline.pipeline_options(args, workers=3))
    assert isinstance(pipeline, beam.Pipeline)
    assert not isinstance(pipeline.runner, FnApiRunner)
    assert type(pipeline.runner).__name__ == "DataflowRunner"
    assert pipeline.options.view_as(po.GoogleCloudOptions).project == "my-project"


def test_make_pipeline_defaults_to_a_local_fn_api_runner():
    options = beam_pipeline.pipeline_options([], workers=2)
    pipeline = beam_pipeline.make_pipeline(options)
    assert isinstance(pipeline, beam.Pipeline)
    assert isinstance(pipeline.runner, FnApiRunner)
    assert pipeline.options.view_as(po.DirectOptions).direct_num_workers == 2


def test_local_pipeline_runs_in_memory():
    options = beam_pipeline.pipeline_options([], workers=1, running_mode="in_memory")
    with beam_pipeline.make_pipeline(options) as pipeline:
        squares = pipeline | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * x)
        assert_that(squares, equal_to([1, 4, 9]))


@pytest.mark.parametrize("workers", [0, -1])
def test_non_positive_workers_are_refused(workers):
    with pytest.raises(ValueError, match=f"workers must be >= 1, got {workers}"):
        beam_pipeline.pipeline_options([], workers=workers)


def test_unknown_running_mode_is_refused():
    with pytest.raises(ValueError, match="unknown running mode 'threads'"):
        beam_pipeline.pipeline_options([], running_mode="threads")


def test_flags_beam_does_not_know_are_refused_not_dropped():
    # Beam would log and drop them, running with the defaults instead.
    with pytest.raises(ValueError, match="unknown option --epislon, --verison: neither"):
        beam_pipeline.pipeline_options(DATAFLOW_ARGS + ["--verison", "2.0.0", "--epislon=0.2"])
    # Options of other runners that Beam defines still pass.
    options = beam_pipeline.pipeline_options(
        ["--runner=FlinkRunner", "--flink_master=host:8081", "--experiments=a"]
    )
    assert options.view_as(po.FlinkRunnerOptions).flink_master == "host:8081"
