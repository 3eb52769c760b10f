"""Every stage's output folder opens, exactly as given, with the field's readers: webdataset with the brace
pattern the stage prints, ``ray.data.read_webdataset(OUT)``, ``datasets`` (with ``hf_features`` for a set whose
image formats differ), and ``pyarrow.dataset`` of the index alone (and of curate's scores), with expressions
on nested fields."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from datapipe_fixtures import LOCAL, png_bytes

pytestmark = pytest.mark.slow

STAGES = ("shard", "curate", "caption", "negatives", "testset")


def _cli(*argv) -> int:
    from supirkit.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_models):
    """One small output folder per stage, made through the CLI as a user would."""
    from supirkit.demo.samples import make_sample_folder

    root = tmp_path_factory.mktemp("readers")
    photos = root / "photos"
    make_sample_folder(photos, size=320, n_good=5, seed=3)
    (photos / "extra.png").write_bytes(png_bytes(5, h=300, w=320))  # a PNG among JPEGs: mixed formats
    out = {name: root / name for name in STAGES}
    assert _cli("shard", photos, "--out", out["shard"], *LOCAL, "--set", "sharding.samples_per_shard=4") == 0
    assert _cli("curate", photos, "--out", out["curate"], "--config", "curate/demo.yaml", *LOCAL) == 0
    assert _cli("caption", out["shard"], "--out", out["caption"], "--model", tiny_models["llava"],
                "--config", "caption/demo.yaml", *LOCAL) == 0
    assert _cli("negatives", out["shard"], "--out", out["negatives"], "--count", 3, "--model", tiny_models["sdxl"],
                "--config", "negatives/demo.yaml", *LOCAL, "--set", "output.samples_per_shard=2") == 0
    assert _cli("testset", photos, "--out", out["testset"], "--profile", "resshift", "--set", "crop.size=64",
                *LOCAL) == 0
    return out


def _keys_from_tars(out: Path) -> set[str]:
    from supirkit.datapipe.tario import list_shards, read_shard

    return {s["__key__"] for url in list_shards(out) for s in read_shard(url)}


@pytest.mark.parametrize("stage", STAGES)
def test_only_shards_at_the_top_of_every_output(outputs, stage):
    out = outputs[stage]
    assert {p.name for p in out.iterdir() if p.suffix != ".tar"} == {"__supirkit__"}


@pytest.mark.parametrize("stage", STAGES)
def test_webdataset_reads_the_printed_pattern(outputs, stage, capsys):
    import webdataset as wds

    from supirkit.datapipe.readers import shard_pattern

    pattern = shard_pattern(outputs[stage])
    assert "{" in pattern or pattern.endswith(".tar")
    keys = {s["__key__"] for s in wds.WebDataset(pattern, shardshuffle=False, empty_check=False)}
    assert keys == _keys_from_tars(outputs[stage]) and keys


@pytest.mark.ray
@pytest.mark.parametrize("stage", STAGES)
def test_ray_data_reads_the_folder_as_given(outputs, stage, ray_address):
    import ray

    rows = ray.data.read_webdataset(str(outputs[stage]), decoder=None).take_all()
    assert {r["__key__"] for r in rows} == _keys_from_tars(outputs[stage])


@pytest.mark.parametrize("stage", STAGES)
def test_hf_datasets_reads_the_folder_with_its_features(outputs, stage, tmp_path):
    import datasets

    from supirkit.datapipe.readers import hf_features

    ds = datasets.load_dataset("webdataset", data_dir=str(outputs[stage]), features=hf_features(outputs[stage]),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert set(ds["__key__"]) == _keys_from_tars(outputs[stage])
    images = [f for f, v in ds.features.items() if isinstance(v, datasets.Image)]
    assert images and any(ds[0][f] is not None for f in images)


def test_a_single_format_set_needs_no_features(outputs, tmp_path):
    import datasets

    ds = datasets.load_dataset("webdataset", data_dir=str(outputs["curate"]), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert set(ds["__key__"]) == _keys_from_tars(outputs["curate"])


@pytest.mark.parametrize("stage", STAGES)
def test_the_index_alone_is_a_parquet_dataset_with_nested_fields(outputs, stage):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from supirkit.datapipe.shard_format import ShardSetLayout

    index = pads.dataset(str(ShardSetLayout(outputs[stage]).index_dir), format="parquet")
    assert "members" in index.schema.names and "." not in "".join(index.schema.names)
    members = index.schema.field("members").type
    assert pa.types.is_list(members) and pa.types.is_struct(members.value_type)
    table = index.to_table()
    assert set(table.column("key").to_pylist()) == _keys_from_tars(outputs[stage])
    if stage == "curate":  # the quality scores of a sample: a struct column, filtered with a nested reference
        kept = index.to_table(filter=pc.field("scores", "sharpness") > 0)
        assert 0 < kept.num_rows <= table.num_rows
    if stage == "caption":
        assert index.to_table(filter=pc.field("caption", "clip_tokens") > 0).num_rows == table.num_rows


def test_curate_scores_are_a_separate_typed_table(outputs):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from supirkit.datapipe.shard_format import ShardSetLayout

    scores = pads.dataset(str(ShardSetLayout(outputs["curate"]).scores_dir), format="parquet")
    schema = scores.schema
    assert pa.types.is_list(schema.field("failed_rules").type) and schema.field("phash").type == pa.string()
    rejected = scores.to_table(filter=~pc.field("accepted"))
    assert all(isinstance(r, list) for r in rejected.column("failed_rules").to_pylist() if r is not None)
    assert all(len(h) == 16 for h in scores.to_table(filter=pc.field("phash").is_valid())["phash"].to_pylist())
    summary = json.loads(ShardSetLayout(outputs["curate"]).summary_file.read_text())
    assert summary["samples"] == len(_keys_from_tars(outputs["curate"]))
