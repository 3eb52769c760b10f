"""bench_scale, 25,000 shards: the training loader's index over 25,000 index-only shards of 800 rows (20M rows).

The shards are what a supirkit shard set holds but the images: an (empty) tar, its parquet index with the
columns ``ShardSink`` writes (key, bytes, sizes, source, member offsets), its stats marker. Measured, each in
a fresh process (its own peak RSS): the startup of a rank's loader index (``ShardSetIndex.open``) reading
every footer, the consolidated table a job writes at its end (``shard_table.write_shard_table``), the startup
reading that one table, a loader worker's RSS once its caches are full, and the per-sample bookkeeping of
drawing from 25,000 shards (the draw, the shard's keys, the member offsets of the drawn key) against the
loader's whole per-sample time on real images, measured in the same run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def make_index_only_set(root: Path, shards: int, rows: int, threads: int = 2) -> float:
    """``shards`` index-only shards of ``rows`` rows each under ``root``; returns seconds taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from supirkit.datapipe.shard_format import ShardSetLayout

    layout = ShardSetLayout(root)
    for d in (layout.index_dir, layout.stats_dir, layout.work):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    members_type = pa.list_(pa.struct([("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]))
    offsets = [1536 * 1024 * r for r in range(rows)]
    template = {
        "bytes": pa.array([1_300_000] * rows, pa.int64()),
        "width": pa.array([1024] * rows, pa.int64()), "height": pa.array([1024] * rows, pa.int64()),
        "has_caption": pa.array([False] * rows),
        "members": pa.array([[{"ext": "jpg", "offset": o + 512, "size": 1_299_000},
                              {"ext": "json", "offset": o + 1_300_224, "size": 800}] for o in offsets], members_type),
    }

    def one(s: int) -> None:
        keys = pa.array([f"{s:08x}{r:012x}" for r in range(rows)], pa.string())
        sources = pa.array([f"/data/raw/{s:06d}/{r:04d}.jpg" for r in range(rows)], pa.string())
        table = pa.table({"key": keys, "source": sources, **template})
        pq.write_table(table, layout.index("shard", s), compression="zstd")
        layout.tar("shard", s).write_bytes(b"")
        layout.stats("shard", s).write_text(json.dumps({"shard": f"shard-{s:06d}", "counts": {"samples": rows}}))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(shards)))
    layout.job_file.write_text(json.dumps({"stage": "shard", "config_hash": "bench"}))
    return time.perf_counter() - t0


CHILD = r"""
import json, os, sys, time
root, mode, draws = sys.argv[1], sys.argv[2], int(sys.argv[3])
def rss_mb():
    with open("/proc/self/status") as f:
        out = {l.split(":")[0]: int(l.split()[1]) / 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
    with open("/proc/self/smaps_rollup") as f:  # private pages: what a forked worker does not share
        out["Private"] = sum(int(l.split()[1]) for l in f if l.startswith(("Private_Clean", "Private_Dirty"))) / 1024
    return out
import numpy as np, torch  # what a loader worker holds anyway
from supirkit.train.data import ShardSetIndex, RankView
base = rss_mb()
t = time.perf_counter()
index = ShardSetIndex.open(root)
startup = time.perf_counter() - t
after_open = rss_mb()
out = {"mode": mode, "startup_s": startup, "shards": len(index.urls), "rows": index.total,
       "rss_base_mb": base["VmRSS"], "private_base_mb": base["Private"], "rss_after_open_mb": after_open["VmRSS"]}
if draws:
    view = RankView(index, 0, 1)
    rng = np.random.default_rng(0)
    t = time.perf_counter(); c = time.process_time()
    for i in range(draws):  # what MixtureStream does per sample before it reads the image
        shard, row = view.locate(int(rng.integers(view.count)))
        key, members = index.entry(shard, row)
        assert key is not None and "jpg" in members
    out["per_sample_ms_wall"] = 1000 * (time.perf_counter() - t) / draws
    out["per_sample_ms_cpu"] = 1000 * (time.process_time() - c) / draws
    now = rss_mb()
    out["rss_after_draws_mb"], out["private_after_draws_mb"] = now["VmRSS"], now["Private"]
out["peak_rss_mb"] = rss_mb()["VmHWM"]
print(json.dumps(out), flush=True)
os._exit(0)
"""


def _child(root: Path, mode: str, draws: int = 0) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), mode, str(draws)], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loader_per_sample_ms(work: Path) -> dict:
    """The loader's whole per-sample time on real 1024-px JPEGs (read, decode, 512 crop, supir degradation),
    one thread, in this run: the figure the bookkeeping is compared with."""
    sys.path.insert(0, str(HERE))
    import bench_train

    folder = work / "loader_set"
    if not (folder / "neg").is_dir():  # bench_train's mixture: hq, faces, negatives
        bench_train.write_set(folder / "hq", "hq", 2, 12, 1024, seed=0)
        bench_train.write_set(folder / "faces", "fc", 1, 4, 1024, seed=1)
        bench_train.write_set(folder / "neg", "ng", 1, 4, 1024, seed=2)
    rates = bench_train.loader_per_core(folder, rounds=6, batch=4)
    return {"per_sample_ms_cpu": 1000 / rates["per_cpu_s"], "per_sample_ms_wall": 1000 / rates["per_s_wall"]}


def run(work: Path, shards: int, rows: int, draws: int) -> dict:
    from supirkit.datapipe.shard_format import ShardSetLayout
    from supirkit.datapipe.shard_table import drop_shard_table, write_shard_table

    root = work / "index_only"
    layout = ShardSetLayout(root)
    made = None
    if not (root / f"shard-{shards - 1:06d}.tar").exists():
        made = make_index_only_set(root, shards, rows)
    drop_shard_table(layout)
    footers = _child(root, "footers", draws)
    t = time.perf_counter()
    write_shard_table(layout)
    table_write_s = time.perf_counter() - t
    table = _child(root, "consolidated table", draws)
    loader = loader_per_sample_ms(work)
    return {"shards": shards, "rows_per_shard": rows, "make_s": made, "footers": footers,
            "table_write_s": table_write_s, "table_bytes": layout.shard_table.stat().st_size,
            "table": table, "loader": loader}


def report(r: dict) -> str:
    f, t, lo = r["footers"], r["table"], r["loader"]
    lines = [f"25,000 shards: {r['shards']:,} index-only shards x {r['rows_per_shard']} rows = "
             f"{r['shards'] * r['rows_per_shard'] / 1e6:.0f}M rows",
             "",
             "| counts from | startup s | RSS after imports (torch, numpy) MB | RSS with the index MB | RSS after "
             "draws MB | private MB: imports -> after draws | bookkeeping per sample ms (CPU) |",
             "|---|---|---|---|---|---|---|"]
    for x in (f, t):
        lines.append(f"| {x['mode']} | {x['startup_s']:.2f} | {x['rss_base_mb']:.0f} | "
                     f"{x['rss_after_open_mb']:.0f} | {x.get('rss_after_draws_mb', 0):.0f} | "
                     f"{x['private_base_mb']:.0f} -> {x.get('private_after_draws_mb', 0):.0f} | "
                     f"{x.get('per_sample_ms_cpu', float('nan')):.2f} |")
    lines += ["", f"consolidated table written in {r['table_write_s']:.1f} s ({r['table_bytes'] / 1e3:.0f} kB); "
              f"the loader's whole per-sample time on 1024-px JPEGs in this run: {lo['per_sample_ms_cpu']:.1f} ms CPU "
              f"({1000 / lo['per_sample_ms_cpu']:.1f} samples per CPU-s); bookkeeping at 25,000 shards: "
              f"{100 * t.get('per_sample_ms_cpu', 0) / lo['per_sample_ms_cpu']:.1f} % of it"]
    return "\n".join(lines)
