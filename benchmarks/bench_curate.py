"""Benchmark: ``supirkit curate`` default CPU path against decode-only throughput of the same files, same run.

    .venv/bin/python benchmarks/bench_curate.py                 # 24 JPEGs of 2048x1536, 2 rounds
    .venv/bin/python benchmarks/bench_curate.py --images 8 --rounds 1   # quick

Inputs: generated photo-like 2048x1536 JPEGs (quality 95, 4:4:4), or ``--photos DIR`` for real ones.
One core: OpenCV, BLAS and torch limited to one thread, the job on the local executor (one process),
so images/s is per core. Each round runs, one after the other on the same files:

  * anchor: read + decode of every file with the fastest decoder on this machine (``_floor.fastest``,
    libjpeg-turbo through simplejpeg: the floor any curation must pay), and, for continuity with the
    earlier tables, read + ``decode_rgb`` on its Pillow route (``_floor.pillow``, the anchor before);
  * the scoring pass every input goes through (``curation.stages.ScoreStage`` as the runner calls it,
    configs/curate/default.yaml): header prefilter, decode, content hash, cheap signals;
  * the whole ``run_curate_job`` (executor=local, report off, --fresh): the scoring pass, duplicate
    grouping, rules, the scores parquet, and the write pass (re-read, decode, 1024 crop, JPEG encode)
    for the accepted images (all of them here: the worst case for the write pass).

Reported: images/s per wall second and per CPU second of this process (the latter is less sensitive to
other load on a shared machine), megapixels per CPU second, each path's ratio to both anchors, and where the
scoring pass spends its time (the stage's own timers). Goals: scoring pass >= 50% of the decode-only rate
(issue 4, against the Pillow anchor); scoring pass >= 1.4x its images per CPU-second before the decode
routes (issue 20: run this script at the older commit with ``run_at.py`` and compare). Prints a markdown
block and writes bench_out/curate.json.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def decode_only(files: list[Path], decode=None) -> int:
    import _floor

    decode = decode or _floor.fastest
    n = 0
    for p in files:
        n += decode(p.read_bytes()).shape[0] > 0
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


def decode_once(files: list[Path], rounds: int) -> dict | None:
    """ms per image (CPU, best round) of the ways to get the native pixels and the downscaled copy: one full
    decode and the copy area-averaged from it (what the scoring pass does), or a second, DCT-reduced decode
    for the copy; and, for scorer sets that read only the copy, the reduced decode alone plus its copy."""
    from supirkit.curation.signals import ImageView, ViewOptions
    from supirkit.datapipe import decode

    if not hasattr(decode, "decode_rgb_reduced"):
        return None  # code from before the decode routes
    opt, datas = ViewOptions(), [p.read_bytes() for p in files]

    def full_and_copy(d):
        rgb, header = decode.decode_rgb(d)
        return ImageView(rgb, header, d, opt).small

    def reduced_and_copy(d):
        rgb, header = decode.decode_rgb_reduced(d, opt.small_side)
        return ImageView(rgb, header, d, opt).small

    ways = {"full decode": lambda d: decode.decode_rgb(d),
            "full decode + copy from it (scoring pass)": full_and_copy,
            "full decode + a reduced decode for the copy": lambda d: (decode.decode_rgb(d),
                                                                      reduced_and_copy(d)),
            "reduced decode + copy (scorers reading only the copy)": reduced_and_copy}
    best = {k: float("inf") for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            c = time.process_time()
            for d in datas:
                fn(d)
            best[name] = min(best[name], time.process_time() - c)
    return {k: round(1000 * v / len(datas), 2) for k, v in best.items()}


def report(res: dict, n: int, rounds: int, out: Path) -> None:
    print(f"\n### curate: default CPU path vs decode-only, {n} JPEGs {res['size']}, one core, best of {rounds}\n")
    print("| path | images/s (wall) | images/s (CPU s) | MP per CPU-s | vs decode-only (wall) | vs decode-only (CPU) "
          "| vs old Pillow anchor (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for what, label in (("decode", "decode only, fastest decoder (anchor)"),
                        ("pillow", "decode only, decode_rgb Pillow route (old anchor)"),
                        ("score", "scoring pass: read, header prefilter, decode, hash, cheap signals"),
                        ("job", f"whole job: scoring, dedup, rules, scores parquet, write "
                                f"{res['training_samples']} 1024 crops (re-read, decode, resize, JPEG q95)")):
        print(f"| {label} | {res[what + '_ips_wall']:.2f} | {res[what + '_ips_cpu']:.2f} | "
              f"{res[what + '_mp_per_cpu_s']:.0f} | {res[what + '_vs_decode_wall']:.2f} | "
              f"{res[what + '_vs_decode_cpu']:.2f} | {res[what + '_vs_pillow_cpu']:.2f} |")
    print("\nScoring pass, ms per image (stage timers): "
          + ", ".join(f"{k} {v}" for k, v in res["ms_per_image"].items()))
    if res.get("decode_once"):
        print("Decoding once, ms per image (CPU): " + ", ".join(f"{k} {v}" for k, v in res["decode_once"].items()))
    print(f"Accepted {res['accepted']} of {n}. Load average {res['load_average'][0]:.1f}. "
          f"Goal: scoring pass >= 0.50 of the Pillow decode-only rate. JSON: {out}")


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
    import _floor

    decode_only(files[:2])  # warm the file cache and imports alike for every side
    decode_only(files[:2], _floor.pillow)
    megapixels = sum(a.shape[0] * a.shape[1] for a in (_floor.fastest(p.read_bytes()) for p in files)) / 1e6
    rows = []
    for r in range(args.rounds):
        _, dw, dc = timed(lambda: decode_only(files))
        _, pw, pc = timed(lambda: decode_only(files, _floor.pillow))
        timers, sw, sc = timed(lambda: scoring_pass(files, work / "score"))
        result, jw, jc = timed(lambda: curate(src, work / "out"))
        rows.append({"round": r, "decode_wall": dw, "decode_cpu": dc, "pillow_wall": pw, "pillow_cpu": pc,
                     "score_wall": sw, "score_cpu": sc, "job_wall": jw, "job_cpu": jc, "timers": timers,
                     "accepted": result.funnel.get("accepted"), "samples": result.funnel.get("training_samples")})
    best = lambda key: min(x[key] for x in rows)  # noqa: E731  (least disturbed round)
    res = {
        "images": n, "size": f"{args.width}x{args.height}" if not args.photos else "real photos",
        "accepted": rows[-1]["accepted"], "training_samples": rows[-1]["samples"],
        "ms_per_image": {k: round(1000 * v / n, 1) for k, v in sorted(rows[-1]["timers"].items())},
        "rounds": rows, "machine": f"{platform.machine()}, {os.cpu_count()} cores visible",
        "load_average": os.getloadavg(), "megapixels": megapixels,
    }
    for what in ("decode", "pillow", "score", "job"):
        for clock in ("wall", "cpu"):
            res[f"{what}_ips_{clock}"] = n / best(f"{what}_{clock}")
        res[f"{what}_mp_per_cpu_s"] = megapixels / best(f"{what}_cpu")
    for what in ("decode", "pillow", "score", "job"):
        for clock in ("wall", "cpu"):
            res[f"{what}_vs_decode_{clock}"] = res[f"{what}_ips_{clock}"] / res[f"decode_ips_{clock}"]
        res[f"{what}_vs_pillow_cpu"] = res[f"{what}_ips_cpu"] / res["pillow_ips_cpu"]
    res["decode_once"] = decode_once(files, args.rounds)
    out = ROOT / "bench_out" / "curate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    report(res, n, len(rows), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
