"""Cross-stage reliability drills for the job users run first on dirty data (``supirkit curate``).

The per-stage drills live beside each stage (shard: tests/test_shard_resume.py and test_shard_torture.py;
caption: test_caption.py; negatives: test_negatives.py; training: test_train_run.py). Here:
- the torture folder goes through ``supirkit curate``: the job completes, every input gets exactly one
  scores row (accepted, or rejected with a reason), and the job's own memory stays bounded;
- ``supirkit curate`` SIGKILLed in its write pass (a tar renamed, its stats not yet written) and rerun
  ends with the same curated shards, byte for byte, as an uninterrupted run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from datapipe_fixtures import _RSS_BOOTSTRAP, read_set
from torture import make_torture_folder, torture_sources

ROOT = Path(__file__).resolve().parents[1]
#: the demo curation profile (small crops) run in-process, without progress output
CURATE = ["--config", "curate/demo.yaml", "--set", "runner.executor=local", "--set", "runner.progress=none",
          "--set", "report.grid_samples=3", "--set", "report.thumb_size=64"]
#: decoding the 30000x30000 bomb alone would take 2.7 GB; the job itself needs a few hundred MB
RSS_LIMIT = 1.2e9


def _curate(argv: list[str], env: dict | None = None, timeout: int = 300) -> tuple[int, str, int]:
    """Runs ``supirkit curate`` in a child; returns (exit code, output, the child's own peak RSS)."""
    proc = subprocess.run([sys.executable, "-c", _RSS_BOOTSTRAP, "curate", *map(str, argv)], cwd=ROOT,
                          env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    text = proc.stdout.decode("utf-8", "replace")
    found = re.findall(r"^__peak_rss_kb__=(\d+)$", text, re.M)
    return proc.returncode, text, int(found[-1]) * 1024 if found else 0


def _scores(out: Path) -> list[dict]:
    from supirkit.datapipe.manifest import open_manifest

    return (
        open_manifest(out / "__supirkit__" / "scores")
        .to_table(columns=["source", "accepted", "stage", "reason"])
        .to_pylist()
    )


def test_torture_folder_through_curate_every_input_accounted_for(tmp_path):
    from supirkit.datapipe.keys import display_source

    root = tmp_path / "torture"
    expected = make_torture_folder(root)
    assert len(expected) >= 15
    out = tmp_path / "curated"
    code, log, rss = _curate([*torture_sources(root), "--out", out, *CURATE,
                              "--set", "input.inputs_per_partition=8"])
    # the torture images are all below the curate size: nothing is written, and a job that wrote nothing
    # although it had inputs says so and exits non-zero (every input is still accounted for below)
    assert code == 1, log
    assert f"wrote no samples although there were {len(expected)} inputs" in log and "too_small" in log, log
    assert 0 < rss < RSS_LIMIT, f"peak RSS {rss / 1e6:.0f} MB"

    prefix = display_source(str(root)) + "/"
    rows = _scores(out)
    by_name: dict[str, dict] = {}
    for r in rows:
        assert r["source"].startswith(prefix), r["source"]
        name = r["source"][len(prefix):]
        assert name not in by_name, f"{name} has two scores rows"
        by_name[name] = r
    assert sorted(by_name) == sorted(display_source(k) for k in expected)
    for name, r in by_name.items():
        assert r["accepted"] or r["reason"], f"{name} rejected without a reason: {r}"
    # what the datapipe refuses, curation refuses: with the same reason code, or earlier from the header
    # (the torture images are tiny, below the demo profile's 256 px short side)
    for name, reason in expected.items():
        if reason != "ok":
            row = by_name[display_source(name)]
            assert not row["accepted"] and row["reason"] in (reason, "too_small"), (name, reason, row)
    assert by_name["bomb.png"]["reason"] == "too_many_pixels"
    # only accepted inputs reach the shards
    accepted = {r["source"] for r in rows if r["accepted"]}
    assert {meta["source"] for _, meta in read_set(out).values()} == accepted


def test_curate_killed_in_write_pass_then_rerun_equals_uninterrupted(tmp_path):
    from supirkit.demo.samples import make_sample_folder

    folder = tmp_path / "samples"
    make_sample_folder(folder, size=320)
    argv = [folder, *CURATE, "--set", "input.inputs_per_partition=4", "--set", "output.samples_per_shard=2"]

    clean = tmp_path / "clean"
    code, log, _ = _curate([*argv[:1], "--out", clean, *argv[1:]])
    assert code == 0, log
    reference = read_set(clean)
    assert len(reference) >= 3, "the drill needs at least two output shards"

    out = tmp_path / "killed"
    env = dict(os.environ, SUPIRKIT_FAULT="after_tar_rename:1")  # shard 1's tar is in place, its stats are not
    code, log, _ = _curate([*argv[:1], "--out", out, *argv[1:]], env=env)
    assert code == -9, log
    assert (out / "curated-000001.tar").exists() and not (
        out / "__supirkit__" / "stats" / "curated-000001.json"
    ).exists(), log
    code, log, _ = _curate([*argv[:1], "--out", out, *argv[1:]])
    assert code == 0, log
    resumed = read_set(out)
    assert sorted(resumed) == sorted(reference)
    for key, (image, meta) in reference.items():
        assert resumed[key][0] == image, key
        assert resumed[key][1] == meta, key
