"""Selecting from a scores table works from any working folder: the table holds absolute sources, so
``shard --from-manifest ... --where ...`` run elsewhere (or under ``ray job submit``, whose working folder
is a copy) selects the same rows; sources that vanished since are counted with their reason, and a selection
whose every source vanished exits non-zero with one line saying why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from datapipe_fixtures import LOCAL, keys_and_bytes, rejections

WHERE = "accepted and width >= 64"


def _cli(*argv) -> int:
    from supirkit.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A curate job run from its own folder with a relative source path, as a user types it."""
    import os

    from supirkit.demo.samples import make_sample_folder

    home = tmp_path_factory.mktemp("home")
    make_sample_folder(home / "photos", size=320, n_good=5, seed=4)
    before = os.getcwd()
    os.chdir(home)
    try:
        assert _cli("curate", "photos", "--out", "hq", "--config", "curate/demo.yaml", *LOCAL) == 0
    finally:
        os.chdir(before)
    return home


def _select(scores: str, out: Path) -> int:
    return _cli("shard", "--from-manifest", scores, "--where", WHERE, "--out", out, *LOCAL)


def test_scores_hold_absolute_sources(curated):
    import pyarrow.dataset as ds

    sources = ds.dataset(str(curated / "hq" / "__supirkit__" / "scores"), format="parquet").to_table(
        columns=["source"]).column("source").to_pylist()
    assert sources and all(Path(s).is_absolute() and Path(s).is_file() for s in sources)


def test_from_manifest_selects_the_same_rows_from_any_folder(curated, tmp_path, monkeypatch):
    monkeypatch.chdir(curated)
    assert _select("hq/__supirkit__/scores", tmp_path / "here") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _select(str(curated / "hq" / "__supirkit__" / "scores"), tmp_path / "there") == 0
    here, there = keys_and_bytes(tmp_path / "here"), keys_and_bytes(tmp_path / "there")
    assert here and here == there


def test_vanished_sources_are_counted_and_all_vanished_is_an_error(tmp_path, monkeypatch, capsys):
    import pyarrow.dataset as ds

    from supirkit.datapipe.conditions import filter_table
    from supirkit.demo.samples import make_sample_folder

    make_sample_folder(tmp_path / "photos", size=320, n_good=5, seed=5)
    assert _cli("curate", tmp_path / "photos", "--out", tmp_path / "hq", "--config", "curate/demo.yaml", *LOCAL) == 0
    scores = str(tmp_path / "hq" / "__supirkit__" / "scores")
    chosen = filter_table(ds.dataset(scores, format="parquet").to_table(), WHERE).column("source").to_pylist()
    assert len(chosen) >= 2
    Path(chosen[0]).unlink()
    monkeypatch.chdir(tmp_path / "photos")
    capsys.readouterr()
    assert _select(scores, tmp_path / "some") == 0
    line = capsys.readouterr().out
    assert "vanished 1" in line, line
    assert len(keys_and_bytes(tmp_path / "some")) == len(chosen) - 1
    assert [r["reason"] for r in rejections(tmp_path / "some")] == ["vanished"]
    summary = json.loads((tmp_path / "some" / "__supirkit__" / "summary.json").read_text())
    assert summary["rejected"] == {"vanished": 1}

    for source in chosen[1:]:
        Path(source).unlink()
    assert _select(scores, tmp_path / "none") == 1
    out = capsys.readouterr().out
    assert f"wrote no samples although there were {len(chosen)} inputs" in out and "vanished" in out
