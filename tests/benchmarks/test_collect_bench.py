"""Tests for neverstop/benchmarks/collect_bench.py: collect --workers 2 against --workers 1."""

import os
import tempfile

import pytest

from neverstop.benchmarks import collect_bench


def test_run_compares_one_and_two_workers_on_the_same_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = collect_bench.run(episodes=4, seed=1)
    assert os.listdir(tmp_path) == []  # both output directories are cleaned up
    runs = result["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    assert [r["episodes"] for r in runs] == [4, 4]
    assert result["identical"] is True
    for r in runs:
        assert r["episodes_per_s"] == pytest.approx(4 / r["seconds"])
        assert r["steady_per_s"] > 0
        assert r["startup_s"] > 0
    assert result["ratio"] > 0
    assert result["ratio"] == pytest.approx(runs[1]["episodes_per_s"] / runs[0]["episodes_per_s"])


@pytest.mark.parametrize("episodes", [1, 0])
def test_run_needs_at_least_two_episodes(episodes):
    with pytest.raises(ValueError, match=f"episodes must be >= 2, got {episodes}"):
        collect_bench.run(episodes=episodes)
