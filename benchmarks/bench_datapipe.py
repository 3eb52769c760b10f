"""Benchmark: datapipe shard writing and training-style reading against the floor, in the same run.

    .venv/bin/python benchmarks/bench_datapipe.py            # --quick for a short run, --ray to add Ray

The floor (issue 3) is what any tool must do at least: read the same bytes and decode the images.
- writing: ``supirkit shard`` (hash pass: read + header + full decode + sha256; dedup; write pass: read
  again + sha256 + tar/parquet/stats) against reading each input file and decoding it;
- reading: iterating the written shards the way a training loader does (plain ``webdataset``, and
  ``datapipe.tario.read_shard``) and decoding every image, against reading the same tar bytes with
  ``tarfile`` and decoding;
- planning: the driver's peak RSS while cutting a listing of 1,000,000 entries (a parquet path list)
  into partitions, next to the RSS of just importing the modules and of holding the listing in a list.
Two floors are measured in every round (``_floor.py``): the fastest decoder on this machine (libjpeg-turbo
through simplejpeg, the floor since the decode routes) and ``decode_rgb`` on its Pillow route (the floor
before, kept for continuity). Candidates decode the way the stages do (``datapipe.decode.decode_rgb``). One
process, one thread; rounds alternate floors and candidates so that load from other processes hits all
alike; medians are reported, of wall-clock rates and of rates per CPU-second of the process (immune to CPU
stolen by other processes), with megapixels decoded per CPU-second beside each ratio.

Prints a markdown table and writes bench_out/datapipe.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench_out"
WORK = OUT / "datapipe"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _floor  # noqa: E402

from supirkit.datapipe.decode import decode_rgb  # noqa: E402


# ------------------------------------------------------------------------------------------------ inputs
def photo_like(seed: int, h: int, w: int) -> np.ndarray:
    """Textured, colourful RGB with edges and detail up to Nyquist: JPEG-decodes like a photo."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    amp = 60.0
    for cells in (4, 8, 16, 32, 64, 128, 256, 512):
        layer = rng.standard_normal((max(2, cells * h // w), cells, 3)).astype(np.float32)
        img += amp * cv2.resize(layer, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.62
    for _ in range(10):
        c = tuple(int(v) for v in (rng.integers(0, w), rng.integers(0, h)))
        cv2.circle(img, c, int(rng.integers(h // 16, h // 4)), tuple(float(v) for v in rng.uniform(-70, 70, 3)), -1)
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(img + 128, 0, 255).astype(np.uint8)


def make_inputs(folder: Path, n: int, h: int, w: int) -> list[Path]:
    """``n`` distinct JPEGs (q92): crops of a few large textured images, cached between runs."""
    from PIL import Image

    stamp = folder / f"_made_{n}_{h}x{w}"
    if stamp.exists():
        return sorted(folder.glob("*.jpg"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    bases = [photo_like(s, h + 256, w + 256) for s in range(8)]
    rng = np.random.default_rng(0)
    for i in range(n):
        base = bases[i % len(bases)]
        y, x = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        Image.fromarray(base[y:y + h, x:x + w]).save(folder / f"photo_{i:05d}.jpg", quality=92)
    stamp.touch()
    return sorted(folder.glob("*.jpg"))


# ------------------------------------------------------------------------------------------------ timing
class Clock:
    """Wall and CPU seconds of one measured span. On a shared machine other processes steal the CPU
    from floor and candidate at random; CPU time (this process only: the local executor and every floor
    run in-process) is nearly immune to that, wall time is what a user waits. Both are reported."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c

    def rates(self, n: int) -> tuple[float, float]:
        return n / self.wall, n / self.cpu


# ------------------------------------------------------------------------------------------------ writing
def floor_write(files: list[Path], decode=_floor.fastest) -> tuple[float, float]:
    with Clock() as clock:
        for f in files:
            decode(f.read_bytes())
    return clock.rates(len(files))


def job_write(src: Path, out: Path, n: int, executor: str, per_shard: int) -> tuple[tuple[float, float], dict]:
    from supirkit.datapipe.config import load_config
    from supirkit.datapipe.pack import ShardConfig, run_shard_job

    cfg = load_config(ShardConfig, None, [f"runner.executor={executor}", "runner.progress=none",
                                              f"sharding.samples_per_shard={per_shard}"],
                      default="shard/default.yaml")
    if out.exists():
        shutil.rmtree(out)
    with Clock() as clock:
        result = run_shard_job([str(src)], str(out), cfg)
    assert result.ok and result.samples == n, result
    timings: dict[str, float] = {}
    for p in (out / "__supirkit__" / "stats").glob("shard-*.json"):
        for k, v in json.loads(p.read_text())["timings_s"].items():
            timings[k] = timings.get(k, 0.0) + v
    return clock.rates(n), timings


def floor_write_parallel(files: list[Path], procs: int) -> float:
    from multiprocessing import get_context

    with get_context("spawn").Pool(procs) as pool:
        pool.map(_decode_file, files[:procs])  # warm the workers
        t = time.perf_counter()
        pool.map(_decode_file, files, chunksize=4)
        return len(files) / (time.perf_counter() - t)


def _decode_file(path: Path) -> int:
    return decode_rgb(Path(path).read_bytes())[0].shape[0]


# ------------------------------------------------------------------------------------------------ reading
def floor_read(urls: list[str], decode=_floor.fastest) -> tuple[float, float]:
    n = 0
    with Clock() as clock:
        for url in urls:
            with open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for info in tar:
                    data = tar.extractfile(info).read()
                    if info.name.endswith(".jpg"):
                        decode(data)
                        n += 1
    return clock.rates(n)


def wds_read(urls: list[str], own_decoder: bool) -> tuple[float, float]:
    import webdataset as wds

    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if own_decoder:
        ds = ds.decode("rgb8")
    n = 0
    with Clock() as clock:
        for sample in ds:
            if not own_decoder:
                decode_rgb(sample["jpg"])
            json.loads(sample["json"]) if isinstance(sample["json"], bytes) else sample["json"]
            n += 1
    return clock.rates(n)


def datapipe_read(urls: list[str]) -> tuple[float, float]:
    from supirkit.datapipe.tario import read_shard, sample_image, sample_meta

    n = 0
    with Clock() as clock:
        for url in urls:
            for sample in read_shard(url):
                decode_rgb(sample_image(sample)[1])
                sample_meta(sample)
                n += 1
    return clock.rates(n)


# ------------------------------------------------------------------------------------------------ planning
PLAN_CHILD = r"""
import json, resource, sys, time, tempfile
mode, listing = sys.argv[1], sys.argv[2]
from supirkit.datapipe.config import ShardingConfig
from supirkit.datapipe.plan import plan_partitions
from supirkit.datapipe.sources import list_inputs
import pyarrow.parquet, pyarrow.dataset  # what planning imports, for the import-only baseline
out = {"mode": mode}
t = time.perf_counter()
if mode == "plan":
    with tempfile.TemporaryDirectory() as work:
        out["partitions"] = plan_partitions(list_inputs([listing]), work, ShardingConfig(samples_per_shard=1000))
elif mode == "list_in_memory":
    refs = list(list_inputs([listing]))
    out["entries"] = len(refs)
out["wall_s"] = time.perf_counter() - t
# VmHWM: the peak RSS of this process's own address space. (getrusage's ru_maxrss is not: Linux carries
# the parent's peak over into a child across fork/exec, so every child would report the parent's size.)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
out["peak_rss_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def planning_rss(n_entries: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    listing = WORK / f"list_{n_entries}.parquet"
    if not listing.exists():
        paths = pa.array([f"/data/corpus/{i // 10000:04d}/img_{i:08d}.jpg" for i in range(n_entries)])
        pq.write_table(pa.table({"path": paths}), listing, row_group_size=65536)
    res = {}
    for mode in ("import_only", "plan", "list_in_memory"):
        proc = subprocess.run([sys.executable, "-c", PLAN_CHILD, mode, str(listing)], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    res["entries"] = n_entries
    return res


# ------------------------------------------------------------------------------------------------ main
def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio_rows(mp, floor_w, pil_w, job_w, floor_r, pil_r, wds_r, dp_r, wds_own_r) -> list[tuple]:
    """Table rows: medians, ratios to the fastest-decoder floor (wall, paired, CPU) and to the old Pillow floor."""
    def row(case, xs, floor, pillow):
        wall, cpu = median([x[0] for x in xs]), median([x[1] for x in xs])
        fwall, fcpu = median([x[0] for x in floor]), median([x[1] for x in floor])
        # per-round ratios too: each pairs a candidate with the floor measured next to it
        paired = median([x[0] / f[0] for x, f in zip(xs, floor)])
        return (case, wall, wall / fwall, paired, cpu, cpu / fcpu, cpu * mp, cpu / median([x[1] for x in pillow]))

    return [
        row("write: floor (read file + fastest decoder)", floor_w, floor_w, pil_w),
        row("write: old floor (read file + decode_rgb, Pillow route)", pil_w, floor_w, pil_w),
        row("write: supirkit shard, local executor", job_w, floor_w, pil_w),
        row("read: floor (tarfile + fastest decoder)", floor_r, floor_r, pil_r),
        row("read: old floor (tarfile + decode_rgb, Pillow route)", pil_r, floor_r, pil_r),
        row("read: webdataset + decode_rgb", wds_r, floor_r, pil_r),
        row("read: datapipe.read_shard + decode_rgb", dp_r, floor_r, pil_r),
        row("read: webdataset .decode('rgb8')", wds_own_r, floor_r, pil_r),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, smaller images and one round")
    ap.add_argument("--n", type=int, default=None, help="number of input images")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--ray", action="store_true", help="also time the job on a local Ray (2 CPUs) vs a 2-process floor")
    ap.add_argument("--plan-entries", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.n or (48 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 5)
    h, w = (480, 640) if args.quick else (960, 1280)
    WORK.mkdir(parents=True, exist_ok=True)
    files = make_inputs(WORK / f"src_{h}x{w}", n, h, w)
    src = files[0].parent
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    # shards of n/4 images: several shards per run, each large enough that a shard's fixed costs (five
    # fsyncs, parquet and stats files) weigh about as much against its images as they would in a
    # production shard (1000 images, ~1 GB)... within a few percent; they are counted in full
    per_shard = max(8, n // 4)
    print(f"inputs: {n} JPEGs {w}x{h}, mean {mean_kb:.0f} KB, {per_shard} per shard; {rounds} round(s)", flush=True)

    floor_w, pil_w, job_w, timings = [], [], [], {}
    floor_write(files[:8])  # warm the page cache and imports
    floor_write(files[:8], _floor.pillow)
    job_write(src, WORK / "out_local", n, "local", per_shard)
    for _ in range(rounds):  # floors and candidate alternate, so that load from elsewhere hits all alike
        floor_w.append(floor_write(files))
        pil_w.append(floor_write(files, _floor.pillow))
        rate, timings = job_write(src, WORK / "out_local", n, "local", per_shard)
        job_w.append(rate)
    urls = sorted(str(p) for p in (WORK / "out_local").glob("shard-*.tar"))
    floor_r, pil_r, wds_r, wds_own_r, dp_r = [], [], [], [], []
    wds_read(urls[:1], False)  # import webdataset (and torch) outside the timings
    for _ in range(rounds):
        floor_r.append(floor_read(urls))
        pil_r.append(floor_read(urls, _floor.pillow))
        wds_r.append(wds_read(urls, False))
        dp_r.append(datapipe_read(urls))
        wds_own_r.append(wds_read(urls, True))
    rows = ratio_rows(h * w / 1e6, floor_w, pil_w, job_w, floor_r, pil_r, wds_r, dp_r, wds_own_r)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_at_end": os.getloadavg()},
              "inputs": {"n": n, "height": h, "width": w, "mean_kb": round(mean_kb, 1), "samples_per_shard": per_shard},
              "rounds": rounds,
              "write_images_per_s_wall_cpu": {"floor": floor_w, "pillow_floor": pil_w, "job_local": job_w},
              "read_images_per_s_wall_cpu": {"floor": floor_r, "pillow_floor": pil_r, "webdataset": wds_r,
                                             "datapipe": dp_r,
                                             "webdataset_rgb8": wds_own_r},
              "job_stage_timings_s_last_round": {k: round(v, 3) for k, v in sorted(timings.items())}}

    ray_rows = []
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        job_write(src, WORK / "out_ray", n, "ray", per_shard)  # warm the workers
        floor2, ray_w = [], []
        for _ in range(rounds):
            floor2.append(floor_write_parallel(files, 2))
            ray_w.append(job_write(src, WORK / "out_ray", n, "ray", per_shard)[0][0])
        ray.shutdown()
        ray_rows = [("write: floor, 2 processes", median(floor2), 1.0),
                    ("write: supirkit shard, Ray (2 CPUs)", median(ray_w), median(ray_w) / median(floor2))]
        result["write_images_per_s_wall"] = {"floor_2proc": floor2, "job_ray_2cpu": ray_w}

    plan = planning_rss(args.plan_entries)
    result["planning"] = plan
    result["rows"] = [{"case": c, "images_per_s_wall": round(r, 2), "wall_ratio_to_floor": round(q, 3),
                       "paired_wall_ratio": round(pq, 3), "images_per_s_cpu": round(rc, 2),
                       "cpu_ratio_to_floor": round(qc, 3), "mp_per_cpu_s": round(m, 1),
                       "cpu_ratio_to_pillow_floor": round(qp, 3)} for c, r, q, pq, rc, qc, m, qp in rows]

    print()
    print("| case | images/s (wall) | vs floor (wall) | vs floor, paired rounds | images per CPU-s | MP per CPU-s "
          "| vs floor (CPU) | vs old Pillow floor (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, r, q, pq, rc, qc, m, qp in rows:
        print(f"| {c} | {r:.1f} | {100 * q:.0f}% | {100 * pq:.0f}% | {rc:.1f} | {m:.0f} | {100 * qc:.0f}% | "
              f"{100 * qp:.0f}% |")
    for c, r, q in ray_rows:
        print(f"| {c} | {r:.1f} | {100 * q:.0f}% | | | | | |")
    print()
    print(f"| planning {plan['entries']:,} listed paths (parquet list) | peak RSS (VmHWM) | wall |")
    print("|---|---:|---:|")
    print(f"| import modules only | {plan['import_only']['peak_rss_mb']:.0f} MB | - |")
    print(f"| plan_partitions ({plan['plan']['partitions']} partitions) | {plan['plan']['peak_rss_mb']:.0f} MB | "
          f"{plan['plan']['wall_s']:.1f} s |")
    print(f"| for contrast: the listing held in a Python list | {plan['list_in_memory']['peak_rss_mb']:.0f} MB | "
          f"{plan['list_in_memory']['wall_s']:.1f} s |")
    print(f"\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    OUT.mkdir(exist_ok=True)
    (OUT / "datapipe.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT / 'datapipe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
