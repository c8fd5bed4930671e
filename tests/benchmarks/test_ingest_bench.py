"""Tests for neverstop/benchmarks/ingest_bench.py (tiny sizes; timings never asserted)."""

from neverstop.benchmarks import ingest_bench


def test_tiny_bench_measures_both_sides_on_the_same_episodes():
    result = ingest_bench.run(episodes=12, small=6)
    assert sorted(result["results"]) == [6, 12]
    for n, sides in result["results"].items():
        for side in ("ours", "peer"):
            assert sides[side]["code"] == 0
            assert sides[side]["episodes_per_s"] == n / sides[side]["seconds"]
            assert sides[side]["peak_rss_mb"] > 50  # TensorFlow alone is bigger than this
    big = result["results"][12]
    assert result["ratio"] == big["ours"]["episodes_per_s"] / big["peer"]["episodes_per_s"]
