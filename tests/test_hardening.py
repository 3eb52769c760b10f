"""What production sends besides bad inputs: two runs into one folder, resumes from elsewhere, damaged
bookkeeping, dead writers' leftovers, SIGTERM, a full or read-only disk, config abuse and clusters that
cannot serve the request. Each must end in one line and a non-zero exit (or a correct resume), never a
traceback, a hang or a job that resumes onto the wrong folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datapipe_fixtures import LOCAL, ROOT, keys_and_bytes, make_images, read_set, shard_cli

SHARD = [*LOCAL, "--set", "sharding.samples_per_shard=3"]


def _main(argv, capsys) -> tuple[int, list[str]]:
    """``supirkit ...`` in this process; (exit code, the lines it printed to stderr)."""
    from supirkit.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("__peak")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one (a stand-in for another run)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, ro=False)`` -> a fresh tmpfs of ``size`` bytes (a small disk to fill); skipped where
    mounting is not allowed (tests then run as an unprivileged user)."""
    mounted = []

    def mount(size: int, ro: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ------------------------------------------------------------------------------------------ the lock

def _write_lock(out: Path, **holder) -> Path:
    meta = out / "__supirkit__"
    meta.mkdir(parents=True, exist_ok=True)
    lock = meta / "lock.json"
    lock.write_text(json.dumps({"token": "x", "locked_at": "2026-01-01T00:00:00", **holder}))
    return lock


def test_a_second_run_into_a_folder_stops_with_one_line_naming_the_first(tmp_path, capsys):
    """A real second process holds the lock (taken through the library, as a running job holds it)."""
    src = tmp_path / "in"
    make_images(src, 4)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from supirkit.datapipe.lock import OutputLock\n"
        f"OutputLock({str(out / '__supirkit__')!r}, {str(out)!r}).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
        assert code == 1 and len(lines) == 1, lines
        assert f"another run is writing here: pid {holder.pid} on host" in lines[0], lines
        assert not list(out.glob("*.tar")) and not (out / "__supirkit__" / "work").exists()
    finally:
        holder.kill()
        holder.wait()
    # its owner is gone: the lock is stale, taken over, and the job runs
    code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
    assert code == 0, lines
    assert len(keys_and_bytes(out)) == 4
    assert not (out / "__supirkit__" / "lock.json").exists()  # released at the end


def test_stale_locks_of_dead_or_replaced_owners_are_taken_over(tmp_path, sleeper, capsys):
    from supirkit.datapipe.lock import this_host

    src = tmp_path / "in"
    make_images(src, 3)
    out = tmp_path / "out"
    _write_lock(out, host=this_host(), pid=_dead_pid(), started=time.time() - 60)
    assert _main(["shard", str(src), "--out", str(out), *SHARD], capsys)[0] == 0
    # a live pid whose process started after the lock was taken: the pid was reused, the owner is gone
    _write_lock(out, host=this_host(), pid=sleeper.pid, started=1000.0)
    assert _main(["shard", str(src), "--out", str(out), *SHARD], capsys)[0] == 0
    # the same live process that took it: refused
    from supirkit.datapipe.lock import process_start

    _write_lock(out, host=this_host(), pid=sleeper.pid, started=process_start(sleeper.pid))
    code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
    assert code == 1 and f"pid {sleeper.pid}" in lines[0]


def test_a_lock_held_from_another_host_is_named_with_the_file_to_delete(tmp_path, capsys):
    src = tmp_path / "in"
    make_images(src, 2)
    out = tmp_path / "out"
    lock = _write_lock(out, host="node_17", pid=4242, started=time.time(), command="supirkit shard")
    code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
    assert code == 1 and len(lines) == 1
    assert "pid 4242 on host node_17 (supirkit shard)" in lines[0] and f"delete {lock}" in lines[0], lines


def test_lock_taken_when_the_link_reply_is_lost(tmp_path, monkeypatch):
    """NFS: ``link`` may succeed on the server while the client sees an error; the link count tells."""
    from supirkit.datapipe import lock as lock_mod

    real_link = os.link

    def lossy_link(src, dst):
        real_link(src, dst)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(lock_mod.os, "link", lossy_link)
    out = tmp_path / "out"
    held = lock_mod.OutputLock(out / "__supirkit__", out).acquire()
    assert held.held and json.loads(held.path.read_text())["pid"] == os.getpid()
    monkeypatch.setattr(lock_mod.os, "link", real_link)
    held.release()
    assert not held.path.exists()


# ------------------------------------------------------------------------------------------ resume

def test_resume_from_another_working_folder_resumes_the_same_job(tmp_path):
    """Killed in its write pass in folder A with a relative source, resumed from folder B with the absolute
    path: the same job (plans hold absolute paths), ending with the uninterrupted run's samples."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_images(a / "photos", 9)
    b.mkdir()
    argv = ["--set", "sharding.samples_per_shard=3", "--set", "runner.executor=local", "--set",
            "runner.progress=none"]
    clean = tmp_path / "clean"
    shard_cli([str(a / "photos"), "--out", str(clean), *argv])
    out = tmp_path / "out"
    env = dict(os.environ, SUPIRKIT_FAULT="after_tar_rename:1")  # shard 0 done, shard 1 without its stats
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", "shard", "photos", "--out", str(out), *argv],
                          cwd=a, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    import pyarrow.parquet as pq

    uris = pq.read_table(out / "__supirkit__/work/partitions/part-000001.parquet").column("uri").to_pylist()
    assert all(os.path.isabs(os.fsdecode(u)) for u in uris)
    # another folder named "photos" under B must not be taken for A's
    make_images(b / "photos", 2, start=50)
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", "shard", "photos", "--out", str(out), *argv],
                          cwd=b, capture_output=True, timeout=120, text=True)
    assert proc.returncode == 2 and "was made from other sources" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "supirkit.cli", "shard", str(a / "photos") + "/", "--out",
                           str(out), *argv], cwd=b, capture_output=True, timeout=120, text=True)
    assert proc.returncode == 0 and "(1 already done)" in proc.stdout, proc.stdout + proc.stderr
    assert keys_and_bytes(out) == keys_and_bytes(clean)


def test_the_same_sources_spelt_differently_are_one_job(tmp_path, monkeypatch, capsys):
    make_images(tmp_path / "photos", 4)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert _main(["shard", "photos", "--out", str(out), *SHARD], capsys)[0] == 0
    from supirkit.cli import main

    for spelling in ("./photos", "photos/", str(tmp_path / "photos"), str(tmp_path / "photos") + "//",
                     f"file://{tmp_path / 'photos'}"):
        code = main(["shard", spelling, "--out", str(out), *SHARD])
        printed = capsys.readouterr()
        assert code == 0 and "(2 already done)" in printed.out, (spelling, printed)
    assert len(keys_and_bytes(out)) == 4


# ------------------------------------------------------------------------------------------ bookkeeping

def test_damaged_bookkeeping_is_rebuilt_or_refused_in_one_line(tmp_path, capsys):
    src = tmp_path / "in"
    make_images(src, 7)
    out = tmp_path / "out"
    argv = ["shard", str(src), "--out", str(out), *SHARD]
    assert _main(argv, capsys)[0] == 0
    reference = keys_and_bytes(out)
    meta = out / "__supirkit__"
    # derived markers are rebuilt: a truncated stats marker (its shard is redone), the dedup marker
    (meta / "stats" / "shard-000001.json").write_text('{"name": "shard-0')
    (meta / "work" / "dedup" / "_DONE").write_text("")
    code, _ = _main(argv, capsys)
    assert code == 0 and keys_and_bytes(out) == reference
    assert json.loads((meta / "stats" / "shard-000001.json").read_text())["counts"]["samples"] == 3
    # what identifies the job is refused: a 0-byte job file (a full disk under an older writer), a cut plan
    for damaged in (meta / "work" / "job.json", meta / "work" / "partitions" / "_DONE.json"):
        good = damaged.read_bytes()
        damaged.write_bytes(good[: len(good) // 2] if damaged.name == "_DONE.json" else b"")
        code, lines = _main(argv, capsys)
        assert code == 2 and len(lines) == 1 and str(damaged) in lines[0] and "--fresh" in lines[0], lines
        damaged.write_bytes(good)
    assert _main(argv + ["--fresh"], capsys)[0] == 0 and keys_and_bytes(out) == reference


def test_bookkeeping_files_are_written_atomically(tmp_path, capsys, monkeypatch):
    """job.json, summary.json, the plan and curate's selection marker all go through ``atomic_write``."""
    from supirkit.datapipe import files

    written = []
    real = files.atomic_output

    def spy(path, mode="wb"):
        written.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(files, "atomic_output", spy)
    src = tmp_path / "in"
    make_images(src, 3)
    assert _main(["shard", str(src), "--out", str(tmp_path / "out"), *SHARD], capsys)[0] == 0
    assert {"job.json", "summary.json", "_DONE.json", "part-000000.parquet", "_DONE",
            "shard-000000.json", "shard-000000.parquet"} <= set(written)


def test_temporary_files_of_dead_writers_are_removed_at_start_and_end(tmp_path, sleeper, capsys):
    from supirkit.datapipe.lock import this_host

    src = tmp_path / "in"
    make_images(src, 6)
    out = tmp_path / "out"
    argv = ["shard", str(src), "--out", str(out), *SHARD]
    assert _main(argv, capsys)[0] == 0
    host, dead = this_host(), _dead_pid()
    left = [out / f".tmp-{host}-{dead}-0badc0de-shard-000001.tar",  # a killed worker's partial shard
            out / "__supirkit__" / "work" / "partitions" / f".tmp-{host}-{dead}-12345678-part-000000.parquet",
            out / "__supirkit__" / "work" / "select" / f".tmp-{host}-{dead}-abcdef12-plan-000000.parquet",
            out / "__supirkit__" / ".tmp-other_node-77-deadbeef-summary.json"]  # another host's, lock held
    live = out / "__supirkit__" / "index" / f".tmp-{host}-{sleeper.pid}-aaaaaaaa-shard-000000.parquet"
    for p in [*left, live]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    assert _main(argv, capsys)[0] == 0
    assert not any(p.exists() for p in left)
    assert live.exists()  # a live writer of this host: never removed under it


# ------------------------------------------------------------------------------------------ SIGTERM

def _leftovers(out: Path) -> list[str]:
    return sorted(str(p) for p in out.rglob(".tmp-*")) + sorted(str(p) for p in out.rglob("lock.json"))


def test_sigterm_mid_shard_local_executor(tmp_path):
    """SIGTERM half-way through a shard in the local executor: one line, exit 143, the shard in progress
    aborted (no partial file, no final name), the lock released; the rerun completes the same set."""
    src = tmp_path / "in"
    make_images(src, 9)
    argv = [str(src), "--set", "sharding.samples_per_shard=3", *LOCAL]
    clean = tmp_path / "clean"
    shard_cli([argv[0], "--out", str(clean), *argv[1:]])
    out = tmp_path / "out"
    code, text = shard_cli([argv[0], "--out", str(out), *argv[1:]], {"SUPIRKIT_FAULT": "mid_shard:1:TERM"},
                           check=False)
    assert code == 143, text
    assert _one_line(text) == "supirkit shard: terminated (SIGTERM); rerun the same command to resume"
    assert not (out / "shard-000001.tar").exists() and _leftovers(out) == []
    code, text = shard_cli([argv[0], "--out", str(out), *argv[1:]], check=False)
    assert code == 0, text
    assert keys_and_bytes(out) == keys_and_bytes(clean)


def test_sigterm_ray_executor(tmp_path, ray_address):
    """SIGTERM to the driver of a Ray job (units in flight on the cluster): one line, exit 143, no stack dump;
    the rerun completes the same set."""
    src = tmp_path / "in"
    make_images(src, 12)
    argv = ["--set", "sharding.samples_per_shard=2", "--set", "runner.progress=none"]
    clean = tmp_path / "clean"
    shard_cli([str(src), "--out", str(clean), *argv], {"RAY_ADDRESS": ray_address}, timeout=300)
    out = tmp_path / "out"
    code, text = shard_cli([str(src), "--out", str(out), *argv],
                           {"RAY_ADDRESS": ray_address, "SUPIRKIT_FAULT": "after_shards:1:TERM"}, check=False,
                           timeout=300)
    assert code == 143, text
    assert _one_line(text) == "supirkit shard: terminated (SIGTERM); rerun the same command to resume"
    assert not list(out.rglob("lock.json"))
    code, text = shard_cli([str(src), "--out", str(out), *argv], {"RAY_ADDRESS": ray_address}, check=False,
                           timeout=300)
    assert code == 0, text
    assert read_set(out).keys() == read_set(clean).keys()


# ------------------------------------------------------------------------------------------ one-line errors

def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    if free > leave:
        (folder / "filler").write_bytes(b"\0" * (free - leave))


def test_full_disk_during_planning_is_one_line_with_folder_and_space(tmp_path, tmpfs, capsys):
    import numpy as np

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1500):  # the plan of long random names needs ~150 kB; job.json and the lock fit
        (src / f"{i:05d}-{rng.bytes(40).hex()}.jpg").write_bytes(b"x")
    disk = tmpfs(1 << 20)
    _fill(disk, 48 * 1024)
    out = disk / "out"
    code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert f"{out}/__supirkit__/work/partitions: no space left on the device (" in lines[0], lines
    assert "free" in lines[0] and "needs about" in lines[0] and "rerun the same command" in lines[0]


def test_full_disk_while_writing_shards_stops_with_one_line(tmp_path, tmpfs, capsys):
    import numpy as np
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):  # ~200 kB of noise each: 2.4 MB of shards for a 1 MB disk
        Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(src / f"n{i}.jpg", quality=95)
    out = tmpfs(1 << 20) / "out"
    code, lines = _main(["shard", str(src), "--out", str(out), *LOCAL, "--set", "sharding.samples_per_shard=2"],
                        capsys)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"supirkit shard: error: {out}: no space left on the device ("), lines
    import re

    need = re.search(r"\(([\d.]+) KB free\); this step needs about ([\d.]+) (KB|MB) more", lines[0])
    assert need, lines
    inputs = sum(p.stat().st_size for p in src.iterdir())
    needed = float(need.group(2)) * (1000 if need.group(3) == "KB" else 1e6)
    assert 0 < needed <= inputs and float(need.group(1)) * 1000 < needed  # what is left of the input bytes
    assert not list(out.rglob(".tmp-*"))  # the failed shard's partial file is gone


def test_read_only_out_is_one_line(tmp_path, tmpfs, capsys):
    src = tmp_path / "in"
    make_images(src, 2)
    if os.geteuid() == 0:
        out = tmpfs(1 << 20, ro=True)
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    code, lines = _main(["shard", str(src), "--out", str(out), *SHARD], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{out}: cannot write the output folder here: " in lines[0], lines


@pytest.mark.parametrize("setting, key", [("runner.max_retries=99999999999999", "runner.max_retries"),
                                          ("decode.max_file_bytes=9223372036854775807", "decode.max_file_bytes"),
                                          ("runner.num_cpus_per_task=1e9", "runner.num_cpus_per_task"),
                                          ("sharding.samples_per_shard=-1", "sharding.samples_per_shard")])
def test_out_of_range_numbers_are_one_line(tmp_path, capsys, setting, key):
    src = tmp_path / "in"
    make_images(src, 1)
    code, lines = _main(["shard", str(src), "--out", str(tmp_path / "out"), *LOCAL, "--set", setting], capsys)
    assert code == 2 and len(lines) == 1 and f": {key}: Input should be" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_duplicate_yaml_keys_are_one_line(tmp_path, capsys):
    src = tmp_path / "in"
    make_images(src, 1)
    cfg = tmp_path / "shard.yaml"
    cfg.write_text("runner:\n  executor: local\nsharding:\n  prefix: a\nrunner:\n  executor: ray\n")
    code, lines = _main(["shard", str(src), "--out", str(tmp_path / "out"), "--config", str(cfg)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{cfg}: line 5 invalid YAML: duplicate key 'runner'" in lines[0], lines


def test_a_resource_request_no_node_can_satisfy_is_one_line(tmp_path, ray_address):
    """num_cpus_per_task=4 on the 2-CPU test cluster: refused before anything is submitted (Ray would wait)."""
    src = tmp_path / "in"
    make_images(src, 2)
    t0 = time.time()
    code, text = shard_cli([str(src), "--out", str(tmp_path / "out"), "--set", "runner.num_cpus_per_task=4",
                            "--set", "runner.progress=none"], {"RAY_ADDRESS": ray_address}, check=False, timeout=120)
    assert code == 2, text
    line = _one_line(text)
    assert "runner.num_cpus_per_task=4: no node of the Ray cluster has that much (largest: 2 CPUs" in line, line
    assert time.time() - t0 < 100


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_unreachable_ray_address_is_one_line(tmp_path, address):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = address.format(port=port)
    src = tmp_path / "in"
    make_images(src, 1)
    code, text = shard_cli([str(src), "--out", str(tmp_path / "out"), "--set", f"runner.ray_address={address}",
                            "--set", "runner.connect_timeout_s=3"], {"RAY_ADDRESS": ""}, check=False, timeout=60)
    assert code == 2, text
    line = _one_line(text)
    assert "cannot reach the Ray cluster" in line and str(port) in line and "timeout 3 s" in line, line


def test_the_connect_timeout_applies_to_an_address_that_does_not_answer(monkeypatch):
    """A black-holed address (no refusal, no answer): the wait is bounded by runner.connect_timeout_s."""
    import socket

    from supirkit.datapipe.config import ConfigError
    from supirkit.datapipe.executors import check_reachable

    def silent(address, timeout=None):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ConfigError, match=r"runner.ray_address tcp://10.1.2.3:6379: cannot reach the Ray cluster "
                                          r"\(no answer, timeout 2 s\)"):
        check_reachable("10.1.2.3:6379", 2)
