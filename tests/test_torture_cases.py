"""Every kind of bad input (tests/torture.py: file level, tar member level, metadata level), each alone and
under a time limit, through ``supirkit shard``, ``supirkit curate`` and ``supirkit inspect``: 0 crashes (a
traceback, an exit code other than the documented ones), 0 hangs (the limit), and every input accounted for
with its expected reason.

The whole torture folder in one job is tests/test_shard_torture.py (shard) and tests/test_drills.py
(curate); here each case runs alone, so a hang or a crash names its case.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from datapipe_fixtures import LOCAL, read_set, rejections
from torture import CASES, case_sources, make_case

#: seconds one case may take through one command (each runs in well under a second; a FIFO opened for
#: reading would block forever)
LIMIT_S = 60
CURATE = ["--config", "curate/demo.yaml", "--set", "runner.executor=local", "--set", "runner.progress=none",
          "--set", "report.enabled=false"]


class CaseTimedOut(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    """Raise ``CaseTimedOut`` in this (the main) thread after ``seconds``: a blocked ``open`` of a FIFO is
    interrupted by the signal (PEP 475 retries a system call only when the handler returns)."""
    def expire(signum, frame):
        raise CaseTimedOut(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from supirkit.cli import main

    with time_limit(LIMIT_S):
        code = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return code, text


def _relative(source: str, root: Path) -> str:
    from supirkit.datapipe.keys import display_source

    prefix = display_source(str(root)) + "/"
    assert source.startswith(prefix), source
    return source[len(prefix):]


def _shown(expected: dict) -> dict:
    from supirkit.datapipe.keys import display_source

    return {display_source(k): v for k, v in expected.items()}


def test_the_torture_suite_has_at_least_25_kinds_on_three_levels():
    assert len(CASES) >= 25
    assert {"special_members", "unsafe_members", "cut_tar"} <= set(CASES)  # tar member level
    assert "hostile_metadata" in CASES  # metadata level (8 kinds of bad .json in it)


@pytest.fixture(params=sorted(CASES))
def made_case(request, tmp_path):
    """(case, root, expected): the case made in tmp_path/in; skipped where this machine cannot make it."""
    case, root = request.param, tmp_path / "in"
    expected = make_case(case, root)
    if not expected:
        pytest.skip(f"{case}: not possible here (root reads everything; socket path too long)")
    return case, root, expected


def test_case_through_shard(made_case, tmp_path, capsys):
    case, root, expected = made_case
    out = tmp_path / "out"
    code, text = _cli(["shard", *case_sources(case, root), "--out", str(out), *LOCAL], capsys)
    ok = sum(v == "ok" for v in expected.values())
    assert code == (0 if ok else 1), text  # 1: "wrote no samples although there were N inputs"
    got = {_relative(meta["source"], root): "ok" for _, meta in read_set(out).values()}
    for r in rejections(out):
        name = _relative(r["source"], root)
        assert name not in got, f"{name} accounted for twice"
        got[name] = r["reason"]
    assert got == _shown(expected)


def test_case_through_curate(made_case, tmp_path, capsys):
    case, root, expected = made_case
    out = tmp_path / "out"
    code, text = _cli(["curate", *case_sources(case, root), "--out", str(out), *CURATE], capsys)
    assert code in (0, 1), text  # the torture images are below the demo profile's size: 1 = nothing written
    from supirkit.datapipe.manifest import open_manifest

    rows = open_manifest(out / "__supirkit__" / "scores").to_table(columns=["source", "reason"]).to_pylist()
    got = {_relative(r["source"], root): r["reason"] for r in rows}
    want = _shown(expected)
    assert sorted(got) == sorted(want), text
    for name, reason in want.items():
        # refused for the same reason as by shard, or earlier from the header (below the 256 px short side)
        assert got[name] in ((reason, "too_small") if reason != "ok" else ("too_small",)), (name, got[name])


def test_case_through_inspect(made_case, tmp_path, capsys):
    """``inspect`` of the shards each case makes, and of each tar of the case as it is (hostile members and
    metadata, a cut tar, a file that is not one): a damaged tar is named and exits 1, the rest is reported."""
    case, root, expected = made_case
    out = tmp_path / "out"
    _cli(["shard", *case_sources(case, root), "--out", str(out), *LOCAL], capsys)
    code, text = _cli(["inspect", str(out), "--show", "3", "--grid", str(tmp_path / "g.png"), "--html",
                       str(tmp_path / "p.html"), "--n", "4"], capsys)
    assert code == 0, text
    for tar in sorted(p for p in root.glob("*.tar") if p.is_file()):
        damaged = expected.get(tar.name) == "corrupt_tar"
        shown = sum(1 for k, v in expected.items() if k.startswith(f"{tar.name}#") and v == "ok")
        code, text = _cli(["inspect", str(tar), "--show", "20", "--grid", str(tmp_path / "t.png")], capsys)
        if damaged and not shown:  # not a tar at all: one line, as for any file that is no shard
            assert code == 2 and f"{tar}: not a readable tar shard" in text, text
            continue
        assert code == (1 if damaged else 0), text
        assert (f"unreadable shard {tar}" in text) == damaged, text
        assert text.count("\n== ") >= shown, text  # every readable sample is shown (bad json as {})


def test_inspect_a_folder_of_tars_with_damaged_ones_names_each_and_reports_the_rest(tmp_path, capsys):
    """The whole torture folder as a shard set (its tars: hostile members and metadata, one cut short, one
    not a tar, a FIFO named .tar), then a supirkit shard set with one shard truncated afterwards."""
    from torture import make_torture_folder

    root = tmp_path / "torture"
    make_torture_folder(root)
    code, text = _cli(["inspect", str(root), "--show", "50", "--grid", str(tmp_path / "g.png")], capsys)
    assert code == 1, text
    for bad in ("cut.tar", "garbage.tar", "fifo.tar"):
        assert f"unreadable shard {root / bad}" in text, (bad, text)
    assert "inspect: 3 of 6 shard(s) could not be read whole" in text, text
    assert "unreadable shard" not in "\n".join(ln for ln in text.splitlines() if "members.tar" in ln)

    src = tmp_path / "photos"
    from datapipe_fixtures import make_images

    make_images(src, 9)
    out = tmp_path / "set"
    assert _cli(["shard", str(src), "--out", str(out), *LOCAL, "--set", "sharding.samples_per_shard=3"],
                capsys)[0] == 0
    tar = out / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1500])  # cut inside its first sample
    code, text = _cli(["inspect", str(out), "--show", "9"], capsys)
    assert code == 1 and f"unreadable shard {tar}" in text, text
    assert text.count("\n== ") >= 6, text  # the two whole shards' samples
