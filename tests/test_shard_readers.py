"""Shards written by supirkit are plain WebDataset: they read back byte-identical through ``webdataset``,
``ray.data.read_webdataset(decoder=None)`` and ``datasets.load_dataset("webdataset")``; and the shard job
gives the same shards on Ray (in-process driver, and a child-process driver joining the shared Ray)."""
from __future__ import annotations

import signal

import pytest
from datapipe_fixtures import LOCAL, keys_and_bytes, make_images, run_shard, shard_cli


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    make_images(root / "src", 9)
    (root / "src" / "dup.jpg").write_bytes((root / "src" / "img_004.jpg").read_bytes())
    out = root / "out"
    assert run_shard([str(root / "src"), "--out", str(out), "--set", "sharding.samples_per_shard=4", *LOCAL]) == 0
    return root, out, keys_and_bytes(out)


def test_plain_webdataset_reads_the_same_bytes(shard_set):
    import webdataset as wds

    from supirkit.datapipe.tario import list_shards

    _, out, truth = shard_set
    urls = list_shards(out)
    got = {s["__key__"]: s["jpg"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}
    assert got == truth and len(got) == 9


def test_hf_datasets_webdataset_builder_reads_the_same_bytes(shard_set):
    import datasets

    from supirkit.datapipe.tario import list_shards

    root, out, truth = shard_set
    ds = datasets.load_dataset("webdataset", data_files={"train": list_shards(out)}, split="train",
                               cache_dir=str(root / "hf_cache"))
    ds = ds.cast_column("jpg", datasets.Image(decode=False))
    got = {row["__key__"]: row["jpg"]["bytes"] for row in ds}
    assert got == truth
    assert {row["json"]["key"] for row in ds} == set(truth)


@pytest.mark.ray
def test_ray_data_reads_the_same_bytes(shard_set, ray_address):
    import ray

    from supirkit.datapipe.tario import list_shards

    _, out, truth = shard_set
    ds = ray.data.read_webdataset(list_shards(out), decoder=None)
    got = {row["__key__"]: row["jpg"] for row in ds.iter_rows()}
    assert got == truth


@pytest.mark.ray
def test_shard_job_on_ray_matches_the_local_run(shard_set, ray_address, tmp_path):
    root, out, truth = shard_set
    on_ray = tmp_path / "ray_out"
    assert run_shard([str(root / "src"), "--out", str(on_ray), "--set", "sharding.samples_per_shard=4",
                      "--set", "runner.executor=ray", "--set", "runner.progress=log"]) == 0
    assert keys_and_bytes(on_ray) == truth
    for t in out.glob("shard-*.tar"):
        assert (on_ray / t.name).read_bytes() == t.read_bytes()


@pytest.mark.ray
def test_ray_driver_killed_and_rerun_joins_the_cluster_and_resumes(shard_set, ray_address, tmp_path):
    """The unchanged command as a separate driver process (it joins the running Ray via RAY_ADDRESS, as
    under ``ray job submit``), SIGKILLed once the first unit is done, then run again."""
    root, _, truth = shard_set
    out = tmp_path / "out"
    args = [str(root / "src"), "--out", str(out), "--set", "sharding.samples_per_shard=4",
            "--set", "runner.executor=ray", "--set", "runner.progress=log"]
    code, log = shard_cli(args, env_extra={"SUPIRKIT_FAULT": "after_shards:1", "RAY_ADDRESS": ray_address},
                          check=False)
    assert code == -signal.SIGKILL, log
    code, log = shard_cli(args, env_extra={"RAY_ADDRESS": ray_address})
    assert "9 samples" in log, log
    assert keys_and_bytes(out) == truth
