"""``supirkit caption`` writing caption tables (the default): a table per input shard keyed by sample key, no
copy of the images; the caption set reads as its shards in the training loader, ``inspect`` and ``shard
--from-manifest``; resume and exactly-once; a corpus captioned this way trains (2 CPU processes) on the same
batches as one captioned by rewriting its shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from caption_fixtures import caption_argv, make_shards

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
def _run(argv):
    from supirkit.cli import main

    return main([str(a) for a in argv])


def _samples(folder):
    from supirkit.datapipe.tario import list_shards, read_shard

    return {s["__key__"]: s for url in list_shards(str(folder)) for s in read_shard(url)}


def _tables(out: Path) -> list[list[dict]]:
    import pyarrow.parquet as pq

    parts = sorted((out / "__supirkit__" / "captions").glob("captions-*.parquet"))
    return [pq.read_table(p).to_pylist() for p in parts]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, tiny_models):
    """One input set captioned both ways: caption tables (the default) and rewritten shards."""
    root = tmp_path_factory.mktemp("caption_tables")
    shards = make_shards(root / "in", n_shards=2, per_shard=5, with_txt=True)
    assert _run(caption_argv(shards, root / "tables", tiny_models)) == 0
    assert _run(caption_argv(shards, root / "rewritten", tiny_models, "--set", "output.write=shards")) == 0
    return {"root": root, "shards": shards, "tables": root / "tables", "rewritten": root / "rewritten"}


def test_caption_tables_hold_every_caption_and_no_image(captioned):
    import pyarrow.parquet as pq

    shards, out = captioned["shards"], captioned["tables"]
    assert not list(out.glob("*.tar"))  # nothing of the corpus is copied
    assert _size(out) < 0.5 * _size(shards)
    before = _samples(shards)
    tables = _tables(out)
    assert len(tables) == 2
    rewritten = _samples(captioned["rewritten"])
    for part, url in zip(tables, sorted(str(p) for p in shards.glob("*.tar"))):
        # the input shard's samples, in its order, keyed by key
        assert [r["key"] for r in part] == [s["__key__"] for s in _samples_in(url)]
        for r in part:
            assert r["txt"] and r["txt"] == r["caption"]["text"] and r["caption"]["clip_tokens"] > 0
            assert r["previous_txt"] == before[r["key"]]["txt"].decode()
            assert r["source"].endswith(f"#{r['key']}") and os.fsdecode(r["source_uri"]) == f"{url}#{r['key']}"
            # the same captions as the rewritten shards (seeds per shard and batch, whichever the output)
            assert rewritten[r["key"]]["txt"].decode() == r["txt"]
    inputs = pq.read_table(out / "__supirkit__" / "caption_inputs.parquet").to_pylist()
    assert [r["rows"] for r in inputs] == [5, 5] and all(Path(r["input"]).is_absolute() for r in inputs)
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["write"] == "table" and summary["caption"]["captions"] == 10 and summary["samples"] == 10
    stats = json.loads((out / "__supirkit__" / "captions" / "_stats" / "captions-000000.stats.json").read_text())
    assert stats["counts"]["rows"] == 5 and stats["caption_settings"]["generation"]["temperature"] == 0.2


def _samples_in(url):
    from supirkit.datapipe.tario import read_shard

    return list(read_shard(url))


def test_caption_set_reads_as_its_shards_in_the_training_loader(captioned):
    """The loader over the caption set draws exactly what it draws over the rewritten shards: same keys,
    captions, prompts, crops and degradations; also through an fsspec memory filesystem."""
    import numpy as np
    from train_fixtures import data_section

    from supirkit.train.data import MixtureStream

    def stream(shards):
        return MixtureStream(data_section([{"name": "hq", "shards": str(shards), "weight": 1}]), seed=3,
                             batch_size=1, prompt_rule=None)

    a, b = stream(captioned["tables"]), stream(captioned["rewritten"])
    assert a.indexes[0].counts.tolist() == b.indexes[0].counts.tolist() == [5, 5]
    for i in range(12):
        x, y = a.sample(i), b.sample(i)
        assert (x["key"], x["caption"], x["prompt"]) == (y["key"], y["caption"], y["prompt"])
        assert x["caption"] and np.array_equal(x["hq"], y["hq"]) and np.array_equal(x["lq"], y["lq"])


def test_caption_set_through_an_fsspec_filesystem(captioned):
    """A caption set copied (with its input set) to another filesystem is read there: its input shards are
    found beside it by their relative paths."""
    import fsspec

    from supirkit.train.data import ShardSetIndex

    fs = fsspec.filesystem("memory")
    root = captioned["root"]
    for folder in ("in", "tables"):
        for p in (root / folder).rglob("*"):
            if p.is_file():
                fs.pipe(f"/cs/{p.relative_to(root).as_posix()}", p.read_bytes())
    index = ShardSetIndex.open("memory://cs/tables")
    assert [u.rsplit("/", 1)[-1] for u in index.urls] == ["shard-000000.tar", "shard-000001.tar"]
    assert index.urls[0].startswith("memory://") and index.counts.tolist() == [5, 5]
    caption, _ = index.caption(1, 2)
    assert caption == _tables(captioned["tables"])[1][2]["txt"]
    fs.rm("/cs", recursive=True)


def test_inspect_and_shard_from_manifest_join_the_captions(captioned, tmp_path, capsys):
    from supirkit.inspection import open_collection, summarize

    out = captioned["tables"]
    coll = open_collection(out)
    assert coll.layout == "caption set" and len(coll.urls) == 2
    summary = summarize(coll)
    assert summary["samples"] == 10 and summary["captioned"] == 10 and summary["fields"]["txt"] == 10
    assert "caption.clip_tokens" in summary["columns"]
    assert _run(["inspect", out, "--show", 2, "--no-summary"]) == 0
    shown = capsys.readouterr().out
    first = _tables(out)[0][0]
    assert f"caption: {first['txt']}" in shown
    # re-shard the captioned samples whose caption is short: self-contained shards with the caption as .txt
    assert _run(["shard", "--from-manifest", out, "--where", "caption.clip_tokens >= 1", "--out", tmp_path / "re",
                 "--set", "runner.executor=local", "--set", "runner.progress=none"]) == 0
    resharded = _samples(tmp_path / "re")
    captions = {r["key"]: r for part in _tables(out) for r in part}
    originals = _samples(captioned["shards"])
    assert len(resharded) == 10
    for s in resharded.values():
        meta = json.loads(s["json"])
        source_key = meta["source"].rsplit("#", 1)[1]
        assert s["txt"].decode() == captions[source_key]["txt"]
        assert meta["caption"]["clip_tokens"] == captions[source_key]["caption"]["clip_tokens"]
        ext = "jpg" if "jpg" in s else "png"
        assert s[ext] == originals[source_key][ext]  # bytes unchanged


def test_caption_tables_resume_exactly_once(tmp_path, tiny_models, captioned):
    shards = make_shards(tmp_path / "in", n_shards=3, per_shard=2)
    out = tmp_path / "out"
    env = dict(os.environ, SUPIRKIT_FAULT="caption_mid_shard:1")  # table 0 done, killed inside table 1
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", *map(str, caption_argv(shards, out, tiny_models))],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    caps = out / "__supirkit__" / "captions"
    assert sorted(p.name for p in (caps / "_stats").glob("*.stats.json")) == ["captions-000000.stats.json"]
    first = (caps / "captions-000000.parquet").read_bytes()
    assert _run(caption_argv(shards, out, tiny_models, "--set", "caption.prefetch_batches=0")) == 0
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["skipped_done"] == 1 and summary["caption"]["captions"] == 6
    assert (caps / "captions-000000.parquet").read_bytes() == first  # not redone
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert _run(caption_argv(shards, tmp_path / "straight", tiny_models)) == 0
    resumed, straight = _tables(out), _tables(tmp_path / "straight")
    assert [[(r["key"], r["txt"]) for r in t] for t in resumed] == [[(r["key"], r["txt"]) for r in t] for t in straight]
    keys = [r["key"] for t in resumed for r in t]
    assert len(keys) == len(set(keys)) == 6  # nothing lost or doubled
    # the rewritten-shards folder is another output: a caption set is not resumed into it, nor the reverse
    assert _run(caption_argv(shards, out, tiny_models, "--set", "output.write=shards")) == 2


def test_failed_samples_dropped_or_kept_uncaptioned(tmp_path, tiny_models):
    from supirkit.datapipe.runner import iter_rejections
    from supirkit.train.data import ShardSetIndex

    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=3, corrupt=True)
    assert _run(caption_argv(shards, tmp_path / "drop", tiny_models)) == 0
    assert len(_tables(tmp_path / "drop")[0]) == 3
    marker = tmp_path / "drop" / "__supirkit__" / "captions" / "_stats" / "captions-000000.stats.json"
    stats = json.loads(marker.read_text())
    assert {r["reason"] for r in stats["rejections"]} == {"not_an_image", "no_image_in_sample"}
    assert not list(iter_rejections(tmp_path / "drop"))  # the tables' stats are not shard stats
    assert _run(caption_argv(shards, tmp_path / "keep", tiny_models, "--set", "caption.on_failure=keep")) == 0
    kept = {r["key"]: r for r in _tables(tmp_path / "keep")[0]}
    assert len(kept) == 5 and kept["badbytes0000"]["txt"] is None
    assert kept["badbytes0000"]["caption"]["error"] == "not_an_image"
    assert ShardSetIndex.open(str(tmp_path / "keep")).counts.tolist() == [5]


@pytest.mark.slow
def test_captioned_corpus_trains_on_the_same_batches_either_way(captioned, tiny_models, tmp_path):
    """The demo training config on 2 CPU processes, over the caption set and over the rewritten shards:
    the same keys in every step on every rank, and the same parameters after each step."""
    import yaml
    from train_fixtures import read_trace

    from supirkit.datapipe.config import CONFIG_ROOT

    runs = {}
    for name in ("tables", "rewritten"):
        cfg = yaml.safe_load((CONFIG_ROOT / "train" / "demo.yaml").read_text(encoding="utf-8"))
        cfg["data"]["mixture"] = [{**cfg["data"]["mixture"][0], "shards": str(captioned[name])}]
        cfg["model"]["pretrained"] = str(tiny_models["sdxl"])
        cfg["output_dir"] = str(tmp_path / name)
        cfg["schedule"]["max_steps"] = 3
        cfg["checkpoint"]["every_steps"] = 3
        cfg["validation"] = {"every_steps": 0, "loss_batches": 0}
        cfg["logging"] = {"backend": "none", "every_steps": 1, "trace": True}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
        proc = subprocess.run([str(Path(sys.executable).with_name("supirkit")), "train", "--config", str(path),
                               "--launcher", "cpu_2proc"], env=env, capture_output=True, text=True, timeout=900,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs[name] = read_trace(tmp_path / name)
    assert sorted(runs["tables"]) == [0, 1]
    for rank in (0, 1):
        steps = runs["tables"][rank]
        assert [r["step"] for r in steps] == [1, 2, 3]
        assert [r["keys"] for r in steps] == [r["keys"] for r in runs["rewritten"][rank]]
        assert [r["params"] for r in steps] == [r["params"] for r in runs["rewritten"][rank]]
