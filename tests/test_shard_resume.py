"""Kill-and-resume: ``supirkit shard`` is SIGKILLed at fixed points (SUPIRKIT_FAULT, no sleeps), rerun
without the fault, and must end with exactly the shards of an uninterrupted run: same keys, same
bytes, same per-shard accounting; nothing lost, nothing twice."""
from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import pytest
from datapipe_fixtures import LOCAL, jpeg_bytes, make_images, read_set, run_shard, shard_cli

ARGS = ["--set", "sharding.samples_per_shard=3", *LOCAL]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """12 images (one copied twice), a non-image, and an input tar: 5 partitions."""
    root = tmp_path_factory.mktemp("resume")
    src = root / "src"
    files = make_images(src, 11)
    (src / "copy_of_3.jpg").write_bytes(files["img_003.jpg"])
    (src / "junk.jpg").write_bytes(b"junk")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(2):
            data = jpeg_bytes(900 + i)
            info = tarfile.TarInfo(f"{i:09d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (src / "upstream.tar").write_bytes(buf.getvalue())
    baseline = root / "baseline"
    assert run_shard([str(src), "--out", str(baseline), *ARGS]) == 0
    return src, baseline


def _accounting(out: Path) -> list:
    rows = []
    for p in sorted((out / "__supirkit__" / "stats").glob("shard-*.json")):
        st = json.loads(p.read_text())
        rows.append((p.name, st["counts"]["inputs"], st["counts"]["samples"], st["rejected"],
                     sorted((r["source"], r["reason"]) for r in st["rejections"])))
    return rows


@pytest.mark.parametrize("fault,left_behind", [
    ("after_tar_rename:1", lambda out: (out / "shard-000001.tar").exists()
     and (out / "__supirkit__" / "index" / "shard-000001.parquet").exists()
     and not (out / "__supirkit__" / "stats" / "shard-000001.json").exists()),
    ("after_shards:1", lambda out: not list(out.glob("shard-*.tar"))
     and (out / "__supirkit__" / "work" / "hash" / "_stats" / "hash-000000.stats.json").exists()),
    ("mid_shard:2", lambda out: not (out / "shard-000002.tar").exists() and any(out.glob(".tmp-*shard-000002.tar"))),
])
def test_killed_job_resumes_to_the_uninterrupted_result(source, tmp_path, fault, left_behind):
    src, baseline = source
    out = tmp_path / "out"
    code, log = shard_cli([str(src), "--out", str(out), *ARGS], env_extra={"SUPIRKIT_FAULT": fault}, check=False)
    assert code == -signal.SIGKILL, log  # it died at the fault point...
    assert left_behind(out), sorted(p.name for p in out.iterdir())  # ...and left that point's state
    assert run_shard([str(src), "--out", str(out), *ARGS]) == 0  # rerun, no fault
    assert read_set(out) == read_set(baseline)  # keys, bytes, metadata
    assert _accounting(out) == _accounting(baseline)
    for t in baseline.glob("shard-*.tar"):
        assert (out / t.name).read_bytes() == t.read_bytes()
    assert not list(out.glob(".tmp-*"))
