"""bench_scale, twenty million rows: curation's global steps on synthetic score tables.

The tables are what a curate job's scoring pass leaves in ``work/signals`` (one part per 1,000 inputs: order,
source, key, perceptual hash, status, the default rules' signals) plus CLIP-size embeddings (768 floats) for
the first ``embedded`` rows, with planted duplicates: exact copies (same content key), near copies (hashes
1-4 bits apart) and semantic copies (embeddings at cosine ~0.999). Each step runs in a process of its own
(its peak RSS): the grouping (exact buckets, near tables, semantic buckets, components) on the driver alone
and with its per-bucket work as Ray tasks on a Ray of 2 CPUs started here (``runner.executor=ray``, the
workers' peak RSS watched), then the selection (rules, best member per group, the scores table, the write
plan). Reported: wall time per step, peak RSS, recall of every planted pair (both members in one group).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRIDE = 1 << 24
PER_PART = 1000
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex(values: np.ndarray, digits: int) -> list:
    """Lower-case hex strings of ``digits`` digits for uint64 values, without a Python format per value."""
    import pyarrow as pa

    shifts = np.uint64(4) * np.arange(digits - 1, -1, -1, dtype=np.uint64)
    nibbles = ((values[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    raw = _HEX[nibbles].tobytes()
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(digits), len(values), [None, pa.py_buffer(raw)]).cast(
        pa.string())


def make_tables(work: Path, rows: int, embedded: int, dim: int, planted: int, seed: int = 0) -> dict:
    """Write the signal parts (and embedding parts) under ``work``; returns the planted pairs (orders)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    signals, models = work / "signals", work / "models"
    truth_file = work / "planted.json"
    if truth_file.is_file():
        return json.loads(truth_file.read_text())
    signals.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_parts = -(-rows // PER_PART)
    # planted pairs (row a, row b = a + 1) in distinct places: exact, near, semantic
    starts = rng.choice(rows // 2, size=3 * planted, replace=False) * 2
    exact_a, near_a = np.sort(starts[:planted]), np.sort(starts[planted:2 * planted])
    sem_a = np.sort(rng.choice(embedded // 2, size=planted, replace=False) * 2)
    exact, near, sem = set(exact_a.tolist()), set(near_a.tolist()), set(sem_a.tolist())
    t = time.perf_counter()
    for p in range(n_parts):
        lo, hi = p * PER_PART, min(rows, (p + 1) * PER_PART)
        idx = np.arange(lo, hi)
        key = rng.integers(0, 2**63, hi - lo, dtype=np.int64).astype(np.uint64)
        phash = rng.integers(0, 2**63, hi - lo, dtype=np.int64).astype(np.uint64) << np.uint64(1)
        for a in range(lo - lo % 2, hi, 2):
            if a in exact and a + 1 < hi:
                key[a + 1 - lo] = key[a - lo]
            if a in near and a + 1 < hi:
                flips = rng.choice(64, size=rng.integers(1, 5), replace=False)
                phash[a + 1 - lo] = phash[a - lo] ^ np.uint64(sum(1 << int(f) for f in flips))
        n = hi - lo
        sources = [f"/data/raw/{i // 1000:05d}/{i:08d}.jpg" for i in idx]
        table = pa.table({
            "order": pa.array(idx * STRIDE, pa.int64()), "partition": pa.array(np.full(n, p), pa.int64()),
            "source": pa.array(sources, pa.string()),
            "source_uri": pa.array([s.encode() for s in sources], pa.binary()),
            "bytes": pa.array(rng.integers(2_000_000, 9_000_000, n), pa.int64()),
            "width": pa.array(np.full(n, 4000), pa.int64()), "height": pa.array(np.full(n, 3000), pa.int64()),
            "short_side": pa.array(np.full(n, 3000), pa.int64()), "format": pa.array(["JPEG"] * n, pa.string()),
            "key": _hex(key, 20), "phash": _hex(phash, 16), "status": pa.array(["scored"] * n, pa.string()),
            "sharpness": pa.array(rng.uniform(0, 0.4, n)), "effective_scale": pa.array(rng.uniform(0.5, 1.1, n)),
            "noise_sigma": pa.array(rng.uniform(0, 4, n)), "jpeg_quality": pa.array(rng.integers(50, 100, n)),
            "blockiness": pa.array(rng.uniform(0, 1, n)), "flat_fraction": pa.array(rng.uniform(0, 0.3, n)),
            "texture_fraction": pa.array(rng.uniform(0, 0.3, n)), "texture": pa.array(rng.uniform(0, 4, n)),
            "border_fraction": pa.array(rng.uniform(0, 0.05, n)),
        })
        pq.write_table(table, signals / f"signals-{p:06d}.parquet", compression="zstd")
        if lo < embedded:
            e = rng.standard_normal((min(hi, embedded) - lo, dim), dtype=np.float32)
            for a in range(lo - lo % 2, min(hi, embedded), 2):
                if a in sem and a + 1 < min(hi, embedded):
                    e[a + 1 - lo] = e[a - lo] + 0.02 * rng.standard_normal(dim, dtype=np.float32)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            emb = pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), dim).cast(pa.list_(pa.float32()))
            pq.write_table(pa.table({"order": pa.array(idx[:len(e)] * STRIDE, pa.int64()), "clip_embedding": emb}),
                           models / f"models-{p:06d}.parquet")
    truth = {"rows": rows, "embedded": embedded, "make_s": time.perf_counter() - t,
             "exact": [int(a) * STRIDE for a in exact_a], "near": [int(a) * STRIDE for a in near_a],
             "semantic": [int(a) * STRIDE for a in sem_a]}
    truth_file.write_text(json.dumps(truth))
    return truth


STEP = r"""
import json, os, sys, time
from pathlib import Path
work, step, executor = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
from supirkit.curation.config import CurateConfig
from supirkit.datapipe.config import load_config
cfg = load_config(CurateConfig, "curate/default.yaml",
                  ["dedup.semantic.enabled=true", f"runner.executor={executor}", "runner.num_cpus_per_task=1",
                   "runner.max_in_flight=2"])
sys.path.insert(0, "benchmarks")  # the step runs in the repository root
import _phases
phases = {}
def timed(mod, name):
    setattr(mod, name, _phases.timed(phases, name, getattr(mod, name)))
parts = sorted((work / "signals").glob("signals-*.parquet"))
t = time.perf_counter()
if step == "group":
    import supirkit.curation.dedup as d
    import supirkit.curation.near as near
    for name in ("scored_hashes", "exact_edges", "semantic_edges", "components"):
        timed(d, name)
    timed(near, "near_edges")
    out = work / f"dedup-{executor}"
    models = sorted((work / "models").glob("models-*.parquet"))
    done = d.group_duplicates(parts, models, out, cfg.dedup, f"bench-{time.time()}", cfg.runner)
    result = {"done": done}
else:
    from supirkit.curation.select import select
    from supirkit.curation.stages import CurateFolders
    from supirkit.datapipe.shard_format import ShardSetLayout
    import shutil
    folders = CurateFolders(ShardSetLayout(work / "set"))
    folders.signals.folder = work / "signals"
    folders.models.folder = work / "nomodels"
    folders.dedup = work / "dedup-local"
    folders.scores = work / "set" / "scores"
    folders.select = work / "set" / "select"
    done = select(folders, cfg, len(parts))
    result = {"funnel": done["funnel"], "write_partitions": done["write_partitions"]}
    shutil.rmtree(work / "set")
total = time.perf_counter() - t
hwm = _phases.peak_rss_mb()
print("__result__" + json.dumps({"step": step, "executor": executor, "wall_s": total, "phases": phases,
                                 "peak_rss_mb": hwm, **result}), flush=True)
os._exit(0)
"""


def _step(work: Path, step: str, executor: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", STEP, str(work), step, executor], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=6 * 3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("__result__")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-4000:])
    return json.loads(line[len("__result__"):])


def recall(work: Path, executor: str, truth: dict) -> dict:
    import pyarrow.parquet as pq

    t = pq.read_table(work / f"dedup-{executor}" / "groups.parquet").to_pydict()
    group = dict(zip(t["order"], t["group"]))
    out = {}
    for kind in ("exact", "near", "semantic"):
        found = sum(1 for a in truth[kind] if group.get(a) is not None and group.get(a) == group.get(a + STRIDE))
        out[kind] = found / max(1, len(truth[kind]))
    out["in_groups"] = len(group)
    return out


def run(work: Path, rows: int, embedded: int, dim: int, planted: int) -> dict:
    import os
    import shutil

    from _scale_inputs import RayHead

    truth = make_tables(work, rows, embedded, dim, planted)
    base = dict(os.environ, OMP_NUM_THREADS="2", RAY_AUTH_MODE="disabled")
    result = {"rows": rows, "embedded": embedded, "dim": dim, "planted": planted, "make_s": truth["make_s"],
              "steps": {}}
    result["steps"]["group driver"] = _step(work, "group", "local", base)
    result["steps"]["group driver"]["recall"] = recall(work, "local", truth)
    head = RayHead(Path("/tmp") / f"rr{os.getpid()}")
    try:
        ray = _step(work, "group", "ray", dict(base, RAY_ADDRESS=head.address, OMP_NUM_THREADS="1"))
        ray["worker_peak_rss_mb"] = head.take_peaks()
    finally:
        head.stop()
    ray["recall"] = recall(work, "ray", truth)
    result["steps"]["group ray (2 workers)"] = ray
    result["steps"]["selection"] = _step(work, "select", "local", base)
    shutil.rmtree(work / "dedup-ray", ignore_errors=True)
    return result


def report(r: dict) -> str:
    lines = [f"Twenty million rows: {r['rows']:,} score rows, {r['embedded']:,} embeddings of {r['dim']} floats, "
             f"{r['planted']:,} planted pairs of each kind (tables made in {r['make_s']:.0f} s)", "",
             "| step | wall s | exact s | near s | semantic s | components s | driver peak RSS MB | "
             "worker peak RSS MB | recall exact / near / semantic |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in r["steps"].items():
        ph = s.get("phases", {})
        rec = s.get("recall")
        rec_txt = f"{rec['exact']:.4f} / {rec['near']:.4f} / {rec['semantic']:.4f}" if rec else ""
        workers = ", ".join(f"{x:.0f}" for x in s.get("worker_peak_rss_mb", [])[:2])
        lines.append(f"| {name} | {s['wall_s']:.0f} | {ph.get('exact_edges', 0):.0f} | {ph.get('near_edges', 0):.0f} | "
                     f"{ph.get('semantic_edges', 0):.0f} | {ph.get('components', 0):.1f} | {s['peak_rss_mb']:.0f} | "
                     f"{workers} | {rec_txt} |")
    return "\n".join(lines)
