"""``supirkit shard`` end to end, in-process with the local executor: shard format, keys, provenance,
manifests (--from-manifest --where), img2dataset input, fsspec input, config guard."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from datapipe_fixtures import (
    LOCAL,
    jpeg_bytes,
    keys_and_bytes,
    make_images,
    png_bytes,
    read_set,
    rejections,
    run_shard,
    total_inputs,
    write_img2dataset_folder,
)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A small mixed folder packed once: 9 JPEGs (3 of them in a sub-folder), a PNG, two copies of one
    image under other names, a non-image; 4 inputs per shard."""
    root = tmp_path_factory.mktemp("packed")
    src = root / "src"
    files = make_images(src, 6)
    files.update(make_images(src, 3, start=6, sub="sub"))
    (src / "pic.png").write_bytes(png_bytes(40))
    files["pic.png"] = png_bytes(40)
    (src / "zz_copy1.jpg").write_bytes(files["img_002.jpg"])
    (src / "sub" / "zz_copy2.jpg").write_bytes(files["img_002.jpg"])
    (src / "broken.jpg").write_bytes(b"not an image")
    out = root / "out"
    assert run_shard([str(src), "--out", str(out), "--set", "sharding.samples_per_shard=4", *LOCAL]) == 0
    return src, out, files


def test_shards_keep_bytes_and_carry_required_metadata(packed):
    from supirkit.datapipe.keys import content_key

    src, out, files = packed
    samples = read_set(out)
    by_bytes = {v: k for k, v in files.items()}
    assert len(samples) == len(files) == 10
    for key, (data, meta) in samples.items():
        assert key == content_key(data) and "." not in key  # content-derived, dot-free
        assert data in by_bytes  # bytes unchanged
        assert {"key", "source", "orig_width", "orig_height"} <= set(meta) and meta["key"] == key
        assert meta["source"] == str(src / by_bytes[data]) and meta["encoded"] == "original"
    kept = samples[content_key(files["img_002.jpg"])][1]
    assert kept["copies"] == 3 and kept["source"] == str(src / "img_002.jpg")
    dups = sorted(r["source"] for r in rejections(out) if r["reason"] == "duplicate")
    assert dups == [str(src / "sub" / "zz_copy2.jpg"), str(src / "zz_copy1.jpg")]
    # each copy names the kept one, and the kept one's index row lists the copies
    assert {r["detail"] for r in rejections(out) if r["reason"] == "duplicate"} == {
        f"same content as {src / 'img_002.jpg'}"}
    from supirkit.datapipe.manifest import open_manifest

    index = {r["key"]: r for r in open_manifest(out).to_table().to_pylist()}
    assert sorted(index[content_key(files["img_002.jpg"])]["duplicates"]) == dups  # a list column, not text
    assert all(r["duplicates"] == [] for k, r in index.items() if k != content_key(files["img_002.jpg"]))
    assert [r["reason"] for r in rejections(out) if r["source"].endswith("broken.jpg")] == ["not_an_image"]
    assert total_inputs(out) == 13 == len(samples) + len(rejections(out))


def test_shard_layout_index_stats_and_adjacent_members(packed):
    import pyarrow.parquet as pq

    from supirkit.datapipe.shard_format import ShardSetLayout
    from supirkit.datapipe.tario import list_shards

    _, out, _ = packed
    layout = ShardSetLayout(out)
    # nothing but shards at the top; everything else under __supirkit__/
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".tar")) == ["__supirkit__"]
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == [f"shard-{i:06d}.tar" for i in range(len(tars))] and len(tars) == 4  # 13 inputs / 4
    assert list_shards(str(out / f"shard-{{000000..{len(tars) - 1:06d}}}.tar")) == [str(out / t) for t in tars]
    for t in tars:
        with tarfile.open(out / t) as tar:
            keys = [m.name.split(".", 1)[0] for m in tar.getmembers()]
        groups = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(groups) == len(set(groups))  # a sample's files are adjacent
        index = pq.read_table(layout.index_dir / t.replace(".tar", ".parquet"))
        assert sorted(index.column("key").to_pylist()) == sorted(set(keys))
        if keys:  # the last shard holds only a duplicate: it is empty
            assert {"orig_width", "orig_height", "width", "height", "source", "source_uri", "bytes", "has_caption",
                    "duplicates", "copies"} <= set(index.column_names)
            for row in index.to_pylist():  # one row per sample: its size on disk and its pixel size
                with tarfile.open(out / t) as tar:
                    members = [m for m in tar.getmembers() if m.name.split(".", 1)[0] == row["key"]]
                assert row["bytes"] == sum(m.size for m in members)
                assert (row["width"], row["height"]) == (row["orig_width"], row["orig_height"]) != (None, None)
                # member offsets in the index point at each member's data (random access without a scan)
                by_ext = {m.name.split(".", 1)[1]: (m.offset_data, m.size) for m in members}
                assert {e["ext"]: (e["offset"], e["size"]) for e in row["members"]} == by_ext
        stats = json.loads((layout.stats_dir / t.replace(".tar", ".json")).read_text())
        assert stats["counts"]["samples"] == len(set(keys))
        assert {"inputs", "samples", "bytes"} <= set(stats["counts"]) and "timings_s" in stats
        assert sum(stats["rejected"].values()) == len(stats["rejections"])
    summary = json.loads(layout.summary_file.read_text())
    assert summary["samples"] == 10 and summary["rejected"] == {"duplicate": 2, "not_an_image": 1}


def test_same_inputs_give_the_same_shard_bytes(packed, tmp_path):
    src, out, _ = packed
    again = tmp_path / "again"
    assert run_shard([str(src), "--out", str(again), "--set", "sharding.samples_per_shard=4", *LOCAL]) == 0
    for t in sorted(out.glob("*.tar")):
        assert (again / t.name).read_bytes() == t.read_bytes()


def test_target_bytes_cuts_shards(tmp_path):
    files = make_images(tmp_path / "src", 6)
    size = min(len(b) for b in files.values())
    out = tmp_path / "out"
    assert run_shard([str(tmp_path / "src"), "--out", str(out), "--set", f"sharding.target_bytes={2 * size}",
                      *LOCAL]) == 0
    assert len(list(out.glob("shard-*.tar"))) == 3  # two images reach the byte target
    assert len(keys_and_bytes(out)) == 6


def test_rerun_refuses_a_changed_config_unless_fresh(packed, tmp_path, capsys):
    src, _, _ = packed
    out = tmp_path / "out"
    assert run_shard([str(src), "--out", str(out), *LOCAL]) == 0
    assert run_shard([str(src), "--out", str(out), "--set", "prefilter.min_side=8", *LOCAL]) == 2
    assert "different config" in capsys.readouterr().err
    assert run_shard([str(src), "--out", str(out), "--set", "prefilter.min_side=8", "--fresh", *LOCAL]) == 0


def test_from_manifest_where_selects_rows_and_rereads_their_sources(packed, tmp_path, capsys):
    import pyarrow.compute as pc

    from supirkit.datapipe.manifest import open_manifest

    src, out, files = packed
    index = open_manifest(out).to_table()
    expect = set(index.filter(pc.greater_equal(index["orig_width"], 30))["key"].to_pylist())
    assert 0 < len(expect) < index.num_rows
    sel = tmp_path / "sel"
    assert run_shard(["--from-manifest", str(out), "--where", "orig_width >= 30 and format == 'JPEG'",
                      "--out", str(sel), *LOCAL]) == 0
    got = read_set(sel)
    assert set(got) == expect
    for key, (data, meta) in got.items():
        assert data == (Path(meta["source"])).read_bytes()
    # a condition that is not in the language is refused before any work, in one line
    assert run_shard(["--from-manifest", str(out), "--where", "__import__('os')", "--out", str(tmp_path / "x"),
                      *LOCAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "condition error" in err[0] and not (tmp_path / "x").exists()
    assert run_shard(["--from-manifest", str(out), "--where", "sharpnes > 1", "--out", str(tmp_path / "y"),
                      *LOCAL]) == 2
    assert "sharpnes" in capsys.readouterr().err


def test_non_utf8_names_are_escaped_in_json_and_reread_from_the_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9 \xff.jpg")
    (src / name).write_bytes(jpeg_bytes(7))
    (src / "plain.jpg").write_bytes(jpeg_bytes(8))
    out = tmp_path / "out"
    assert run_shard([str(src), "--out", str(out), *LOCAL]) == 0
    sources = sorted(m["source"] for _, m in read_set(out).values())
    assert sources == [str(src) + "/caf\\xe9 \\xff.jpg", str(src / "plain.jpg")]
    sel = tmp_path / "sel"
    assert run_shard(["--from-manifest", str(out), "--where", "source != 'x'", "--out", str(sel), *LOCAL]) == 0
    assert sorted(keys_and_bytes(sel).values()) == sorted([jpeg_bytes(7), jpeg_bytes(8)])


def test_img2dataset_tars_are_read_with_provenance_and_captions(tmp_path):
    truth = write_img2dataset_folder(tmp_path / "i2d")
    out = tmp_path / "out"
    assert run_shard([str(tmp_path / "i2d"), "--out", str(out), *LOCAL]) == 0
    tars = sorted(out.glob("shard-*.tar"))
    assert len(tars) == 2  # input shard i -> output shard i
    got = {}
    for url in tars:
        from supirkit.datapipe.tario import read_shard

        for s in read_shard(str(url)):
            meta = json.loads(s["json"])
            got[meta["source"]] = (s["jpg"], s["txt"].decode(), meta)
    assert len(got) == len(truth)
    for i2d_key, (img, caption) in truth.items():
        src = f"{tmp_path / 'i2d' / i2d_key[:5]}.tar#{i2d_key}"
        data, txt, meta = got[src]
        assert data == img and txt == caption
        assert meta["upstream"]["url"].endswith(f"{i2d_key}.jpg") and meta["upstream"]["key"] == i2d_key
    # selecting from that set re-reads the members from the input tars (one pass per tar)
    sel = tmp_path / "sel"
    assert run_shard(["--from-manifest", str(out), "--where", "upstream.similarity > 0.255", "--out", str(sel),
                      *LOCAL]) == 0
    picked = {m["source"] for _, m in read_set(sel).values()}
    assert picked == {f"{tmp_path / 'i2d' / k[:5]}.tar#{k}" for k in truth if not k.endswith("0000")}


def test_fsspec_url_source(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/dp-test/a.jpg", jpeg_bytes(1))
    fs.pipe("/dp-test/b/c.jpg", jpeg_bytes(2))
    try:
        out = tmp_path / "out"
        assert run_shard(["memory://dp-test", "--out", str(out), *LOCAL]) == 0
        got = {m["source"]: d for d, m in read_set(out).values()}
        assert got == {"memory:///dp-test/a.jpg": jpeg_bytes(1), "memory:///dp-test/b/c.jpg": jpeg_bytes(2)}
    finally:
        fs.rm("/dp-test", recursive=True)


def test_file_gone_between_passes_is_recorded(tmp_path, monkeypatch):
    from supirkit.datapipe import pack

    files = make_images(tmp_path / "src", 3)
    real = pack.group_exact_duplicates

    def delete_then_group(*a, **kw):  # runs between the hashing and the writing pass
        (tmp_path / "src" / "img_001.jpg").unlink()
        return real(*a, **kw)

    monkeypatch.setattr(pack, "group_exact_duplicates", delete_then_group)
    out = tmp_path / "out"
    assert run_shard([str(tmp_path / "src"), "--out", str(out), *LOCAL]) == 0
    assert len(keys_and_bytes(out)) == 2
    rej = rejections(out)
    assert [(Path(r["source"]).name, r["reason"]) for r in rej] == [("img_001.jpg", "vanished")]
    assert total_inputs(out) == 3 and len(files) == 3


def test_file_urls_and_brace_lists_address_inputs_and_shards(packed, tmp_path):
    """``file://`` URLs are local paths; a brace list ``{a,b}`` expands like a range, for inputs and shards."""
    from supirkit.datapipe.sources import list_inputs
    from supirkit.datapipe.tario import list_shards

    src, out, files = packed
    assert list_shards(f"file://{out}/shard-{{000000,000002}}.tar") == [str(out / "shard-000000.tar"),
                                                                        str(out / "shard-000002.tar")]
    assert list_shards(f"file://{out}") == list_shards(out)
    picked = [r.uri for r in list_inputs([f"file://{src}/img_00{{1,4}}.jpg", f"file://{src}/sub"])]
    assert picked == [str(src / "img_001.jpg"), str(src / "img_004.jpg")] + [
        str(src / "sub" / f"img_00{i}.jpg") for i in (6, 7, 8)] + [str(src / "sub" / "zz_copy2.jpg")]
    sel = tmp_path / "sel"
    assert run_shard([f"file://{src}/img_00{{1,4}}.jpg", "--out", f"file://{sel}", *LOCAL]) == 0
    assert sorted(keys_and_bytes(sel).values()) == sorted([files["img_001.jpg"], files["img_004.jpg"]])
    # a name that holds braces and exists is taken as written
    odd = tmp_path / "odd{1,2}"
    odd.mkdir()
    (odd / "x.jpg").write_bytes(files["img_000.jpg"])
    assert [r.uri for r in list_inputs([str(odd)])] == [str(odd / "x.jpg")]


@pytest.mark.parametrize("url", ["s3://bucket/corpus", "gs://bucket/corpus", "memory://x/out"])
def test_output_urls_are_refused_in_one_line(packed, tmp_path, monkeypatch, capsys, url):
    """Shards are committed with local renames: a URL --out is refused before any work, instead of
    silently becoming a local folder named ``s3:``."""
    src, _, _ = packed
    monkeypatch.chdir(tmp_path)
    assert run_shard([str(src), "--out", url, *LOCAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "local path" in err[0]
    assert list(tmp_path.iterdir()) == []
    from supirkit.datapipe.config import ConfigError
    from supirkit.datapipe.runner import prepare_output

    with pytest.raises(ConfigError):  # also as pathlib leaves it (s3:/bucket/corpus)
        prepare_output(Path(url), "shard", "h", False)
