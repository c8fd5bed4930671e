"""Tests for neverstop/datasets/rlds_grasp.py and catalog.py."""

import pytest

from neverstop.datasets import catalog
from neverstop.datasets import rlds_grasp


def test_dataset_ids_parse_the_tfds_way():
    assert rlds_grasp.DatasetId.parse("grasps/base:1.2.0") == rlds_grasp.DatasetId(
        "grasps", "base", "1.2.0"
    )
    assert rlds_grasp.DatasetId.parse("grasps/base").version == rlds_grasp.DEFAULT_VERSION
    assert (
        str(rlds_grasp.DatasetId("grasps", "checkerboard", "2.0.1")) == "grasps/checkerboard:2.0.1"
    )
    for bad in ("grasps", "grasps/base:1", "Grasps/base", "grasps/base:1.0.0/x"):
        with pytest.raises(ValueError):
            rlds_grasp.DatasetId.parse(bad)


def test_shard_names_follow_the_tfds_template():
    dataset = rlds_grasp.DatasetId("grasps", "base")
    assert rlds_grasp.shard_name(dataset, 2, 10) == "grasps-train.tfrecord-00002-of-00010"


def test_statistics_add_up():
    total = rlds_grasp.Statistics(2, 10, 1, {"scripted": 2}, {"base": 2})
    total.add(rlds_grasp.Statistics(3, 12, 3, {"scripted": 1, "random": 2}, {"base": 3}))
    assert (total.episodes, total.steps, total.successes) == (5, 22, 4)
    assert total.policies == {"scripted": 3, "random": 2}
    assert total.success_rate == pytest.approx(0.8)


def test_catalog_lists_and_shows_published_datasets(tmp_path):
    from tests.pipelines.test_ingest import _config, _raw_dir, _run

    raw = _raw_dir(tmp_path / "raw", 6)
    _run(_config(raw, tmp_path / "data"))
    _run(_config(raw, tmp_path / "data", version="1.1.0"))
    (tmp_path / "data" / "grasps" / "base" / ".incomplete-2.0.0-x").mkdir()  # ignored
    cards = catalog.list_datasets(str(tmp_path / "data"))
    assert [c["id"] for c in cards] == ["grasps/base:1.0.0", "grasps/base:1.1.0"]
    card = catalog.show(str(tmp_path / "data"), "grasps/base")
    assert card["id"] == "grasps/base:1.1.0"
    assert card["splits"]["train"]["episodes"] == 6
    assert card["statistics"]["successes"] == 2
    assert card["dead_letters"] == 0
    with pytest.raises(ValueError, match="published: grasps/base:1.0.0, grasps/base:1.1.0"):
        catalog.show(str(tmp_path / "data"), "grasps/checkerboard")


def test_a_version_whose_card_is_corrupt_is_named_and_the_others_still_listed(tmp_path):
    from tests.pipelines.test_ingest import _config, _raw_dir, _run

    raw = _raw_dir(tmp_path / "raw", 3)
    data = tmp_path / "data"
    _run(_config(raw, data))
    _run(_config(raw, data, version="1.1.0"))
    metadata = data / "grasps" / "base" / "1.1.0" / "metadata.json"
    metadata.write_text("{not json")
    broken = []
    cards = catalog.list_datasets(str(data), broken)
    assert [c["id"] for c in cards] == ["grasps/base:1.0.0"]
    assert [b[0] for b in broken] == ["grasps/base:1.1.0"]
    assert broken[0][1].startswith(f"{metadata}: not valid JSON")
    # Without a list to report into, the first corrupt card is the error.
    with pytest.raises(ValueError, match=f"{metadata}: not valid JSON"):
        catalog.list_datasets(str(data))
    # Asking for the dataset's newest version names the corrupt file rather
    # than quietly answering with the older one.
    with pytest.raises(ValueError, match=f"grasps/base:1.1.0: its card cannot be read: {metadata}"):
        catalog.show(str(data), "grasps/base")
    assert catalog.show(str(data), "grasps/base:1.0.0")["id"] == "grasps/base:1.0.0"
    metadata.write_text("[]")
    with pytest.raises(ValueError, match="expected a JSON object, got a list"):
        catalog.list_datasets(str(data))
