"""bench_scale, a million inputs: ``shard`` and ``curate`` over N distinct tiny images, every input through the
whole path (minimum size lowered to the images' 32 px, no rules, 32-px crops: every input is read, decoded,
hashed, scored, grouped, selected and written), on a Ray of its own with 2 CPUs (one head started here,
``ray start``), driven by a separate process as ``supirkit`` would be.

Reported per job: wall time split into listing (the listing alone, timed first), planning (the partition
plan, which consumes the listing), per-input work (the passes that read every input), global steps (exact,
near grouping and selection on the driver) and writing (the write pass); the per-input work's own timers
(read, probe, decode, hash, signals, crop, encode, write) against each unit's whole time (``wall_s`` of the
unit stats, the same clock: the difference is the bookkeeping inside units: table, index and stats writes,
the runner, progress reports), per input and beside the decode floor of the same files measured here (read
+ libjpeg-turbo decode); the driver's peak RSS and each Ray worker's; files created per 1,000 inputs.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PER_DIR = 1000  # files per folder, as a crawl's output would be laid out
SIDE = 32

CURATE_SETTINGS = ["prefilter.min_side=16", "prefilter.max_aspect_ratio=0", "rules.checks=[]",
                   "output.crop.size=16", "output.crop.mode=resize_center", "input.inputs_per_partition=1000",
                   "output.samples_per_shard=1000", "report.enabled=false", "dedup.semantic.enabled=false",
                   "signals.iqa.metrics=[]", "signals.aesthetic.enabled=false", "runner.progress=log",
                   "runner.log_every_s=60", "runner.num_cpus_per_task=1", "runner.max_in_flight=4"]
SHARD_SETTINGS = ["sharding.samples_per_shard=1000", "runner.progress=log", "runner.log_every_s=60",
                  "runner.num_cpus_per_task=1", "runner.max_in_flight=4"]


def make_inputs(folder: Path, n: int, seed: int = 0) -> float:
    """``n`` distinct random 32x32 JPEGs, 1,000 per folder; returns seconds (reused when present)."""
    import simplejpeg

    marker = folder / f".made-{n}"
    if marker.exists():
        return 0.0
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    for d in range(0, n, PER_DIR):
        sub = folder / f"{d // PER_DIR:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        block = rng.integers(0, 256, (min(PER_DIR, n - d), SIDE, SIDE, 3), dtype=np.uint8)
        block[:, :, :, 0] = np.linspace(0, 255, SIDE, dtype=np.uint8)  # some structure beside the noise
        for i, img in enumerate(block):
            (sub / f"{d + i:07d}.jpg").write_bytes(simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB"))
    marker.write_text("")
    return time.perf_counter() - t


def decode_floor(folder: Path, count: int = 5000) -> float:
    """Microseconds to read and decode one input with the fastest decoder (the floor of any pass)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _floor

    files = sorted(folder.glob("00000/*.jpg"))[:count]
    t = time.process_time()
    for f in files:
        _floor.fastest(f.read_bytes())
    return 1e6 * (time.process_time() - t) / len(files)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A Ray of this benchmark's own (2 CPUs), stopped by ending its process group; and a watcher that keeps
    the peak RSS of each of its worker processes."""

    def __init__(self, temp: Path, cpus: int = 2) -> None:
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        port = _free_port()
        self.proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                      "--num-cpus", str(cpus), "--num-gpus", "0", "--include-dashboard", "false",
                                      "--port", str(port), "--temp-dir", str(temp), "--disable-usage-stats"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.address = f"{socket.gethostbyname(socket.gethostname())}:{port}"
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        time.sleep(8)

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    try:
                        if p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()[:3]):
                            self.peaks[p.pid] = max(self.peaks.get(p.pid, 0.0), p.memory_info().rss / 1e6)
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            time.sleep(0.5)

    def take_peaks(self) -> list[float]:
        peaks, self.peaks = sorted(self.peaks.values(), reverse=True), {}
        return peaks

    def stop(self) -> None:
        self._stop.set()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


DRIVER = r"""
import json, os, sys, time
job, src, out, settings = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, "benchmarks")  # the driver runs in the repository root
import _phases
phases, peaks = {}, {}
def timed(name, fn):
    return _phases.timed(phases, name, fn, peaks)
from supirkit.datapipe.sources import list_inputs
t = time.perf_counter(); n = sum(1 for _ in list_inputs([src])); listing = time.perf_counter() - t
from supirkit.datapipe.config import load_config
if job == "curate":
    import supirkit.curation.job as j
    from supirkit.curation.config import CurateConfig
    cfg = load_config(CurateConfig, "curate/default.yaml", settings)
    j.plan_partitions = timed("listing+planning", j.plan_partitions)
    run_stage = j.run_stage
    j.run_stage = lambda p, r: timed(p.desc, run_stage)(p, r)
    j.group_duplicates = timed("global: grouping", j.group_duplicates)
    j.select = timed("global: selection", j.select)
    j.write_job_summary = timed("summary", j.write_job_summary)
    t = time.perf_counter(); result = j.run_curate_job([src], out, cfg); total = time.perf_counter() - t
    ok = result.ok
else:
    import supirkit.datapipe.pack as j
    cfg = load_config(j.ShardConfig, "shard/default.yaml", settings)
    j.plan_partitions = timed("listing+planning", j.plan_partitions)
    run_stage = j.run_stage
    j.run_stage = lambda p, r: timed(p.desc, run_stage)(p, r)
    j.group_exact_duplicates = timed("global: grouping", j.group_exact_duplicates)
    j.write_job_summary = timed("summary", j.write_job_summary)
    t = time.perf_counter(); result = j.run_shard_job([src], out, cfg); total = time.perf_counter() - t
    ok = result.ok
hwm = _phases.peak_rss_mb()
print("__result__" + json.dumps({"inputs": n, "listing_s": listing, "phases": phases, "job_s": total, "ok": ok,
                                 "driver_peak_rss_mb": hwm, "driver_peak_after_mb": peaks}), flush=True)
os._exit(0)
"""


def unit_stats(out: Path) -> list[dict]:
    """Every unit's stats of a job: the table parts' markers under work/ and the shards' markers."""
    files = list((out / "__supirkit__" / "work").rglob("*.stats.json")) + \
        list((out / "__supirkit__" / "stats").glob("*.json"))
    return [json.loads(p.read_text()) for p in files]


def work_and_bookkeeping(out: Path, inputs: int) -> dict:
    """Per input: the work (the units' own timers, wall) and the units' whole wall time; the difference is
    the bookkeeping inside units. Timers copied from an earlier pass (``hash_pass.read``) count once."""
    stats = unit_stats(out)
    by_timer: dict[str, float] = {}
    for s in stats:
        for k, v in s.get("timings_s", {}).items():
            if "." not in k:
                by_timer[k] = by_timer.get(k, 0.0) + v
    work = sum(by_timer.values())
    wall = sum(s.get("wall_s", 0.0) for s in stats)
    return {"work_us": 1e6 * work / inputs, "unit_wall_us": 1e6 * wall / inputs,
            "bookkeeping_us": 1e6 * (wall - work) / inputs, "bookkeeping_share": (wall - work) / max(work, 1e-9),
            "by_timer_us": {k: round(1e6 * v / inputs, 1) for k, v in sorted(by_timer.items())}}


def run_job(head: RayHead, job: str, src: Path, out: Path, n: int) -> dict:
    settings = CURATE_SETTINGS if job == "curate" else SHARD_SETTINGS
    env = dict(os.environ, RAY_ADDRESS=head.address, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    head.take_peaks()
    proc = subprocess.run([sys.executable, "-c", DRIVER, job, str(src), str(out), json.dumps(settings)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=6 * 3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("__result__")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    r = json.loads(line[len("__result__"):])
    r["worker_peak_rss_mb"] = head.take_peaks()
    r["files"] = sum(1 for p in out.rglob("*") if p.is_file())
    r["files_per_1000"] = 1000 * r["files"] / n
    r.update(work_and_bookkeeping(out, n))
    return r


def run(work: Path, n: int, small: int) -> dict:
    import shutil

    src = work / "inputs"
    made = make_inputs(src, n)
    floor = decode_floor(src)
    head = RayHead(Path("/tmp") / f"rs{os.getpid()}")
    results: dict = {"inputs": n, "small": small, "make_s": made, "decode_floor_us": floor, "jobs": {}}
    try:
        small_src = work / "inputs_small"
        if small:
            make_inputs(small_src, small)
        for job in ("shard", "curate"):
            for size, folder in ((n, src), (small, small_src)):
                if not size:
                    continue
                out = work / f"{job}-{size}"
                shutil.rmtree(out, ignore_errors=True)
                results["jobs"][f"{job} {size}"] = run_job(head, job, folder, out, size)
                print(f"[bench_scale] {job} {size}: {results['jobs'][f'{job} {size}']['job_s']:.0f} s", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        head.stop()
    return results


def report(r: dict) -> str:
    lines = [f"A million inputs: {r['inputs']:,} distinct 32x32 JPEGs (and {r['small']:,} for the RSS slope); "
             f"read + decode floor {r['decode_floor_us']:.0f} us per input", "",
             "| job | inputs | wall s | listing | planning | per-input passes | global steps | writing | "
             "driver peak RSS MB | worker peak RSS MB | files per 1,000 inputs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, j in r["jobs"].items():
        ph = j["phases"]
        plan = ph.get("listing+planning", 0.0) - j["listing_s"]
        per_input = sum(v for k, v in ph.items() if k.endswith(("score", "hash")))
        write = sum(v for k, v in ph.items() if k.endswith("write"))
        glob = sum(v for k, v in ph.items() if k.startswith("global"))
        workers = ", ".join(f"{x:.0f}" for x in j["worker_peak_rss_mb"][:4])
        lines.append(f"| {name.split()[0]} | {j['inputs']:,} | {j['job_s']:.0f} | {j['listing_s']:.0f} | "
                     f"{max(plan, 0):.0f} | {per_input:.0f} | {glob:.0f} | {write:.0f} | "
                     f"{j['driver_peak_rss_mb']:.0f} | {workers} | {j['files_per_1000']:.1f} |")
    lines += ["", "| job | inputs | per-input work us | units' wall us | bookkeeping us | bookkeeping / work | "
              "work by timer (us per input) |", "|---|---|---|---|---|---|---|"]
    for name, j in r["jobs"].items():
        timers = ", ".join(f"{k} {v:.0f}" for k, v in j["by_timer_us"].items() if v >= 1)
        lines.append(f"| {name.split()[0]} | {j['inputs']:,} | {j['work_us']:.0f} | {j['unit_wall_us']:.0f} | "
                     f"{j['bookkeeping_us']:.0f} | {100 * j['bookkeeping_share']:.1f} % | {timers} |")
    lines += ["", "Driver peak RSS (MB) when each phase ended (the high-water mark so far):", "",
              "| job | inputs | planning | per-input passes | global steps | whole job |", "|---|---|---|---|---|---|"]
    for name, j in r["jobs"].items():
        after = j.get("driver_peak_after_mb", {})
        per_input = max((v for k, v in after.items() if k.endswith(("score", "hash"))), default=0.0)
        glob = max((v for k, v in after.items() if k.startswith("global")), default=0.0)
        lines.append(f"| {name.split()[0]} | {j['inputs']:,} | {after.get('listing+planning', 0.0):.0f} | "
                     f"{per_input:.0f} | {glob:.0f} | {j['driver_peak_rss_mb']:.0f} |")
    return "\n".join(lines)
