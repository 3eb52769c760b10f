"""Benchmark: ``supirkit curate`` default CPU path against decode-only throughput of the same files, same run.

    .venv/bin/python benchmarks/bench_curate.py                 # 24 JPEGs of 2048x1536, 2 rounds
    .venv/bin/python benchmarks/bench_curate.py --images 8 --rounds 1   # quick

Inputs: generated photo-like 2048x1536 JPEGs (quality 95, 4:4:4), or ``--photos DIR`` for real ones.
One core: OpenCV, BLAS and torch limited to one thread, the job on the local executor (one process),
so images/s is per core. Each round runs, one after the other on the same files:

  * anchor: read + ``datapipe.decode.decode_rgb`` of every file (the floor any curation must pay);
  * the scoring pass every input goes through (``curation.stages.ScoreStage`` as the runner calls it,
    configs/curate/default.yaml): header prefilter, decode, content hash, cheap signals;
  * the whole ``run_curate_job`` (executor=local, report off, --fresh): the scoring pass, duplicate
    grouping, rules, the scores parquet, and the write pass (re-read, decode, 1024 crop, JPEG encode)
    for the accepted images (all of them here: the worst case for the write pass).

Reported: images/s per wall second and per CPU second of this process (the latter is less sensitive to
other load on a shared machine), each path's ratio to the anchor, and where the scoring pass spends its
time (the stage's own timers). Goal (issue 4): scoring pass >= 50% of the decode-only rate. Prints a
markdown block and writes bench_out/curate.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(folder: Path, n: int, width: int, height: int) -> list[Path]:
    from PIL import Image

    from supirkit.demo.samples import textured_photo

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        p = folder / f"photo_{width}x{height}_{i:03d}.jpg"
        if not p.is_file():
            Image.fromarray(textured_photo(1000 + i, height, width)).save(p, quality=95, subsampling=0)
        files.append(p)
    return files


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def decode_only(files: list[Path]) -> int:
    from supirkit.datapipe.decode import decode_rgb

    n = 0
    for p in files:
        rgb, _ = decode_rgb(p.read_bytes())
        n += rgb.shape[0] > 0
    return n


def default_config(overrides=()):
    from supirkit.curation import CurateConfig
    from supirkit.datapipe import load_config

    return load_config(CurateConfig, "curate/default.yaml",
                       ["runner.executor=local", "runner.progress=none", "report.enabled=false", *overrides])


def scoring_pass(files: list[Path], out: Path) -> dict:
    """The stage every input goes through (header, prefilter, decode, hash, cheap signals), called the
    way the runner calls it, on one partition holding all files; returns the stage's timers."""
    import shutil

    from supirkit.curation.stages import ScoreStage
    from supirkit.datapipe.plan import Partition
    from supirkit.datapipe.sinks import TableSink
    from supirkit.datapipe.sources import FILE, InputRef
    from supirkit.datapipe.stats import UnitStats

    if out.exists():
        shutil.rmtree(out)
    stage = ScoreStage(default_config())
    stage.setup()
    refs = [InputRef(str(p), FILE, p.stat().st_size, "") for p in files]
    sink, stats = TableSink(out, "signals", 0), UnitStats()
    stage.process(Partition(0, refs, 0), sink, stats)
    sink.commit(stats)
    assert stats.counts["scored"] == len(files), stats.to_dict()
    return dict(stats.timings)


def curate(src: Path, out: Path):
    from supirkit.curation import run_curate_job

    result = run_curate_job([str(src)], out, default_config(), fresh=True)
    assert result.ok, result.failed
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1536)
    ap.add_argument("--photos", default=None, help="folder of real JPEGs to use instead of generated ones")
    ap.add_argument("--work", default=str(ROOT / "bench_out" / "curate"))
    args = ap.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    work = Path(args.work)
    if args.photos:
        import shutil

        chosen = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        src = work / "photos"  # exactly the chosen files, so the job and the anchor see the same inputs
        if src.exists():
            shutil.rmtree(src)
        src.mkdir(parents=True)
        files = []
        for p in chosen[: args.images]:
            shutil.copyfile(p, src / p.name)
            files.append(src / p.name)
    else:
        src = work / "src"
        files = make_inputs(src, args.images, args.width, args.height)
    n = len(files)
    decode_only(files[:2])  # warm the file cache and imports alike for both sides
    rows = []
    for r in range(args.rounds):
        _, dw, dc = timed(lambda: decode_only(files))
        timers, sw, sc = timed(lambda: scoring_pass(files, work / "score"))
        result, jw, jc = timed(lambda: curate(src, work / "out"))
        rows.append({"round": r, "decode_wall": dw, "decode_cpu": dc, "score_wall": sw, "score_cpu": sc,
                     "job_wall": jw, "job_cpu": jc, "timers": timers, "accepted": result.funnel.get("accepted"),
                     "samples": result.funnel.get("training_samples")})
    best = lambda key: min(x[key] for x in rows)  # noqa: E731  (least disturbed round)
    res = {
        "images": n, "size": f"{args.width}x{args.height}" if not args.photos else "real photos",
        "accepted": rows[-1]["accepted"], "training_samples": rows[-1]["samples"],
        "ms_per_image": {k: round(1000 * v / n, 1) for k, v in sorted(rows[-1]["timers"].items())},
        "rounds": rows, "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
        "load_average": os.getloadavg(),
    }
    for what in ("decode", "score", "job"):
        for clock in ("wall", "cpu"):
            res[f"{what}_ips_{clock}"] = n / best(f"{what}_{clock}")
    for what in ("score", "job"):
        for clock in ("wall", "cpu"):
            res[f"{what}_vs_decode_{clock}"] = res[f"{what}_ips_{clock}"] / res[f"decode_ips_{clock}"]
    out = ROOT / "bench_out" / "curate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"\n### curate: default CPU path vs decode-only, {n} JPEGs {res['size']}, one core, best of {len(rows)}\n")
    print("| path | images/s (wall) | images/s (CPU s) | vs decode-only (wall) | vs decode-only (CPU) |")
    print("|---|---|---|---|---|")
    print(f"| decode only (anchor) | {res['decode_ips_wall']:.2f} | {res['decode_ips_cpu']:.2f} | 1.00 | 1.00 |")
    for what, label in (("score", "scoring pass: read, header prefilter, decode, hash, cheap signals"),
                        ("job", f"whole job: scoring, dedup, rules, scores parquet, write "
                                f"{res['training_samples']} 1024 crops (re-read, decode, resize, JPEG q95)")):
        print(f"| {label} | {res[what + '_ips_wall']:.2f} | {res[what + '_ips_cpu']:.2f} | "
              f"{res[what + '_vs_decode_wall']:.2f} | {res[what + '_vs_decode_cpu']:.2f} |")
    print("\nScoring pass, ms per image (stage timers): "
          + ", ".join(f"{k} {v}" for k, v in res["ms_per_image"].items()))
    print(f"Accepted {res['accepted']} of {n}. Load average {res['load_average'][0]:.1f}. "
          f"Goal: scoring pass >= 0.50 of decode-only. JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
