"""The consolidated row counts of a shard set (``__supirkit__/shards.parquet``): written when a job ends,
dropped when a pass starts changing shards, read by the training loader in place of one footer per shard,
locally, through ``file://`` and through an fsspec filesystem (memory, standing in for object storage)."""
from __future__ import annotations

from pathlib import Path

import pytest
from train_fixtures import data_section, write_shard_set


@pytest.fixture()
def shard_set(tmp_path):
    folder = tmp_path / "hq"
    keys = write_shard_set(folder, "hq", 3, 4, size=(80, 80), seed=1)
    return folder, keys


def test_table_written_at_the_end_and_read_instead_of_footers(shard_set, monkeypatch):
    from supirkit.datapipe import shard_table
    from supirkit.datapipe.shard_format import ShardSetLayout
    from supirkit.datapipe.tario import list_shards
    from supirkit.train.data import ShardSetIndex

    folder, _ = shard_set
    layout = ShardSetLayout(folder)
    assert shard_table.write_shard_table(layout) == layout.shard_table
    assert shard_table.read_shard_table(str(folder)) == {f"hq-{i:06d}.tar": 4 for i in range(3)}
    opened = []
    monkeypatch.setattr(shard_table, "index_rows", lambda url: opened.append(url) or 99)
    assert ShardSetIndex.open(str(folder)).counts.tolist() == [4, 4, 4] and opened == []
    # a shard the table does not list (written since: a job still running) is counted from its own footer
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    sink = ShardSink(folder, "hq", 3)
    for k in range(2):
        sink.write({"__key__": f"new{k}", "txt": "x"})
    sink.commit(UnitStats())
    urls = list_shards(str(folder))
    counts = shard_table.count_rows(urls, counter=lambda url: opened.append(url) or 2)
    assert counts.tolist() == [4, 4, 4, 2] and opened == [urls[3]]


def test_a_pass_that_changes_shards_drops_the_table(tmp_path):
    from supirkit.datapipe.config import RunnerConfig
    from supirkit.datapipe.runner import Pass, run_stage, write_job_summary
    from supirkit.datapipe.shard_format import ShardSetLayout
    from supirkit.datapipe.sinks import ShardOutput
    from supirkit.datapipe.stage import Stage
    from supirkit.datapipe.stats import JobResult

    class Two(Stage):
        name = "two"

        def load_partition(self, work_dir, index):
            return index

        def process(self, partition, sink, stats):
            for k in range(2):
                sink.write({"__key__": f"k{partition}x{k}", "txt": "x"})

    out = tmp_path / "set"
    layout = ShardSetLayout(out)
    layout.work.mkdir(parents=True)
    runner = RunnerConfig(executor="local", progress="none")
    run_stage(Pass(Two(), ShardOutput(out, "s"), 2, layout.work), runner)
    write_job_summary(layout, "two", JobResult())
    assert layout.shard_table.is_file()
    run_stage(Pass(Two(), ShardOutput(out, "s"), 2, layout.work), runner)  # all done: nothing changes
    assert layout.shard_table.is_file()
    run_stage(Pass(Two(), ShardOutput(out, "s"), 3, layout.work), runner)  # a unit to write: counts change
    assert not layout.shard_table.exists()


def test_loader_reads_the_table_through_fsspec_and_file_urls(shard_set):
    import fsspec

    from supirkit.datapipe.shard_format import ShardSetLayout
    from supirkit.datapipe.shard_table import write_shard_table
    from supirkit.train.data import MixtureStream, ShardSetIndex

    folder, keys = shard_set
    write_shard_table(ShardSetLayout(folder))
    fs = fsspec.filesystem("memory")
    for f in Path(folder).rglob("*"):
        if f.is_file():
            fs.pipe(f"/table-test/{f.relative_to(folder).as_posix()}", f.read_bytes())
    try:
        index = ShardSetIndex.open("memory://table-test")
        assert index.counts.tolist() == [4, 4, 4] and index.urls[0].startswith("memory://")
        # the counts came from the one table: without the footers they are still there
        for i in range(3):
            fs.rm(f"/table-test/__supirkit__/index/hq-{i:06d}.parquet")
        assert ShardSetIndex.open("memory://table-test").counts.tolist() == [4, 4, 4]
    finally:
        fs.rm("/table-test", recursive=True)
    as_url = MixtureStream(data_section([{"name": "hq", "shards": f"file://{folder}", "weight": 1}]), seed=1)
    local = MixtureStream(data_section([{"name": "hq", "shards": str(folder), "weight": 1}]), seed=1)
    assert as_url.indexes[0].counts.tolist() == [4, 4, 4]
    for i in range(4):
        a, b = as_url.sample(i), local.sample(i)
        assert a["key"] == b["key"] in keys and a["caption"] == b["caption"]
