"""A folder of bad and unusual inputs goes through ``supirkit shard`` without a crash: every input is
either a sample or a rejection with the expected reason, and the job's memory stays bounded (the
30000x30000 PNG bomb is refused from its header)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from datapipe_fixtures import LOCAL, read_set, rejections, shard_cli_rss, total_inputs
from torture import EXIF_STORED_SIZE, NON_UTF8_NAME, make_torture_folder, torture_sources

#: the job's own peak RSS is about 190 MB; decoding the bomb alone would take 2.7 GB
RSS_LIMIT = 700e6


def _relative(source: str, root: Path) -> str:
    from supirkit.datapipe.keys import display_source

    prefix = display_source(str(root)) + "/"
    assert source.startswith(prefix), source
    return source[len(prefix):]


def test_torture_folder_every_input_accounted_for(tmp_path):
    from supirkit.datapipe.keys import display_source

    root = tmp_path / "torture"
    expected = make_torture_folder(root)
    assert len(expected) >= 16
    out = tmp_path / "out"
    code, log, rss = shard_cli_rss([*torture_sources(root), "--out", str(out), *LOCAL])
    assert code == 0, log
    assert rss < RSS_LIMIT, f"peak RSS {rss / 1e6:.0f} MB"

    got: dict[str, str] = {}
    samples = read_set(out)
    for _, meta in samples.values():
        got[_relative(meta["source"], root)] = "ok"
    for r in rejections(out):
        name = _relative(r["source"], root)
        assert name not in got, f"{name} accounted for twice"
        got[name] = r["reason"]
    shown = {display_source(k): v for k, v in expected.items()}  # sources are stored in display form
    assert got == shown
    assert total_inputs(out) == len(samples) + len(rejections(out)) == len(expected)

    by_name = {_relative(m["source"], root): m for _, m in samples.values()}
    w, h = EXIF_STORED_SIZE
    assert (by_name["exif_rotated.jpg"]["orig_width"], by_name["exif_rotated.jpg"]["orig_height"]) == (h, w)
    assert by_name["animated.gif"]["n_frames"] == 3
    assert display_source(NON_UTF8_NAME) == "caf\\xe9.jpg" and "caf\\xe9.jpg" in by_name
    assert by_name["jpeg_named.png"]["format"] == "JPEG"
    assert by_name["dup_a.jpg"]["copies"] == 2
    # the escaped name is also what the stats JSON holds, and the exact bytes sit in the index
    import pyarrow.dataset as pads

    index = pads.dataset(
        sorted(str(p) for p in (out / "__supirkit__" / "index").glob("shard-*.parquet")), format="parquet"
    ).to_table()
    exact = {os.fsdecode(u) for u in index.column("source_uri").to_pylist()}
    assert str(root / NON_UTF8_NAME) in exact
    summary = json.loads((out / "__supirkit__" / "summary.json").read_text())
    assert summary["samples"] == sum(v == "ok" for v in expected.values())
