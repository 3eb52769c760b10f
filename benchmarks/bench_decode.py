"""Benchmark: the JPEG decoders and the encoders available on this machine, one thread, CPU time.

    .venv/bin/python benchmarks/bench_decode.py                    # generated inputs only
    .venv/bin/python benchmarks/bench_decode.py --photos DIR       # and the JPEGs of DIR (real photographs)

This is where the decode routes of ``datapipe.decode`` were chosen, and where the floor of the other
benchmarks comes from (``_floor.fastest``: the fastest full decoder here). Decoders, all to HxWx3 RGB:
Pillow (``Image.open`` + ``convert`` + ``np.asarray``), ``decode_rgb`` on its Pillow route (the floor before),
OpenCV ``imdecode``, ``simplejpeg`` (libjpeg-turbo into NumPy), PyTurboJPEG when it imports and finds its
library, and ``decode_rgb`` / ``decode_rgb_reduced`` as the stages call them. Each candidate's pixels are
compared with the Pillow route's (max absolute difference over the set). PNG: the negatives' 1024-px RGB PNGs
through the Pillow route, OpenCV and ``decode_rgb``. Encoders: the curated 1024-px JPEG (q95, 4:4:4) and the
negatives' 1024-px PNG (zlib levels 1 and 6) through Pillow, OpenCV and simplejpeg.

Rounds alternate the candidates; the least disturbed round (lowest CPU time) counts. Rates are megapixels of
the image (native size, also for reduced decodes) per CPU-second of this process. Prints markdown, writes
bench_out/decode.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _floor  # noqa: E402

cv2.setNumThreads(1)
#: generated sets: (label, width, height, quality, Pillow subsampling, count) as the stages see them
SETS = (("curation input 2048x1536 q95 4:4:4", 2048, 1536, 95, 0, 6),
        ("curated 1024x1024 q95 4:4:4", 1024, 1024, 95, 0, 10),
        ("shard input 1280x960 q92 4:2:0", 1280, 960, 92, 2, 8))


def generated(w: int, h: int, quality: int, subsampling: int, n: int) -> list[bytes]:
    from PIL import Image

    from supirkit.demo.samples import textured_photo

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(textured_photo(1000 + i, h, w)).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        out.append(buf.getvalue())
    return out


def _pyturbojpeg():
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()
    except Exception:  # not installed, or its TurboJPEG library is missing or too old
        return None
    return lambda d: jpeg.decode(d, pixel_format=turbojpeg.TJPF_RGB)


def decoders() -> dict:
    from PIL import Image

    from supirkit.datapipe.decode import decode_rgb, decode_rgb_reduced

    out = {
        "Pillow (open, convert, asarray)": lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB")),
        "decode_rgb, Pillow route (floor before)": _floor.pillow,
        "OpenCV imdecode (RGB)": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR_RGB),
        "simplejpeg / libjpeg-turbo (floor)": _floor.fastest,
        "decode_rgb (stages)": lambda d: decode_rgb(d)[0],
        "decode_rgb_reduced, short side >= 512": lambda d: decode_rgb_reduced(d, 512)[0],
        "decode_rgb_reduced, short side >= 224": lambda d: decode_rgb_reduced(d, 224)[0],
    }
    tj = _pyturbojpeg()
    if tj is not None:
        out["PyTurboJPEG (system TurboJPEG)"] = tj
    return out


def _best_cpu_s(cands: dict, datas: list[bytes], rounds: int) -> tuple[list, float, dict]:
    """Pillow's decodes of ``datas`` (the reference), their megapixels, and each candidate's best CPU seconds
    to decode them all over ``rounds``."""
    ref = [_floor.pillow(d) for d in datas]
    mp = sum(r.shape[0] * r.shape[1] for r in ref) / 1e6
    cpu = {k: [] for k in cands}
    for _ in range(rounds):
        for name, fn in cands.items():
            cpu[name].append(_floor.decode_all(fn, datas)[0])
    return ref, mp, {name: min(seconds) for name, seconds in cpu.items()}


def measure_decoders(datas: list[bytes], rounds: int) -> list[dict]:
    cands = decoders()
    ref, mp, best_s = _best_cpu_s(cands, datas, rounds)
    rows = []
    for name, fn in cands.items():
        diff = None
        outs = [fn(d) for d in datas]
        if all(o.shape == r.shape for o, r in zip(outs, ref)):
            diff = max(int(np.abs(o.astype(np.int16) - r).max()) for o, r in zip(outs, ref))
        best = best_s[name]
        rows.append({"decoder": name, "mp_per_cpu_s": mp / best, "images_per_cpu_s": len(datas) / best,
                     "max_diff_vs_pillow_route": diff})
    floor = next(r for r in rows if r["decoder"].endswith("(floor)"))["mp_per_cpu_s"]
    for r in rows:
        r["vs_floor"] = r["mp_per_cpu_s"] / floor
    return rows


def measure_pngs(pngs: list[bytes], rounds: int) -> list[dict]:
    """8-bit RGB PNGs (the negatives' output): the Pillow route against OpenCV, and decode_rgb's choice."""
    from supirkit.datapipe.decode import decode_rgb

    cands = {"decode_rgb, Pillow route (before)": _floor.pillow,
             "OpenCV imdecode (RGB)": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR_RGB),
             "decode_rgb (stages)": lambda d: decode_rgb(d)[0]}
    ref, mp, best_s = _best_cpu_s(cands, pngs, rounds)
    return [{"decoder": name, "mp_per_cpu_s": mp / best_s[name], "images_per_cpu_s": len(pngs) / best_s[name],
             "vs_pillow_route": best_s["decode_rgb, Pillow route (before)"] / best_s[name],
             "max_diff_vs_pillow_route": max(int(np.abs(fn(d).astype(np.int16) - r).max())
                                             for d, r in zip(pngs, ref))} for name, fn in cands.items()]


def encoders() -> dict:
    import simplejpeg
    from PIL import Image

    def pil(a, **kw):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, **kw)
        return buf.getvalue()

    def cv(ext, a, params):
        return cv2.imencode(ext, cv2.cvtColor(a, cv2.COLOR_RGB2BGR), params)[1].tobytes()

    q444 = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    out = {"JPEG q95 4:4:4": {
        "Pillow": lambda a: pil(a, format="JPEG", quality=95, subsampling=0),
        "OpenCV": lambda a: cv(".jpg", a, q444),
        "simplejpeg": lambda a: simplejpeg.encode_jpeg(a, 95, "RGB", "444")}}
    for level in (1, 6):
        out[f"PNG level {level}"] = {
            "Pillow": lambda a, level=level: pil(a, format="PNG", compress_level=level),
            "OpenCV": lambda a, level=level: cv(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, level])}
    return out


def measure_encoders(images: list[np.ndarray], rounds: int) -> list[dict]:
    rows = []
    mp = sum(a.shape[0] * a.shape[1] for a in images) / 1e6
    for what, cands in encoders().items():
        ref = [cands["Pillow"](a) for a in images]
        cpu = {k: [] for k in cands}
        for _ in range(rounds):
            for name, fn in cands.items():
                c = time.process_time()
                for a in images:
                    fn(a)
                cpu[name].append(time.process_time() - c)
        for name, fn in cands.items():
            outs = [fn(a) for a in images]
            decoded = [_floor.pillow(o) for o in outs]
            truth = [_floor.pillow(r) for r in ref] if what.startswith("JPEG") else images
            rows.append({"what": what, "encoder": name, "mp_per_cpu_s": mp / min(cpu[name]),
                         "ms_per_image": 1000 * min(cpu[name]) / len(images),
                         "kb_per_image": sum(map(len, outs)) / len(outs) / 1024,
                         "bytes_identical_to_pillow": all(o == r for o, r in zip(outs, ref)),
                         "max_pixel_diff": max(int(np.abs(d.astype(np.int16) - t).max())
                                               for d, t in zip(decoded, truth))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", default=None, help="folder of real JPEGs to add as a set")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, fewer images")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    sets = []
    if args.photos:
        files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        sets.append((f"{len(files)} JPEGs of {args.photos}", [p.read_bytes() for p in files]))
    for label, w, h, q, sub, n in SETS:
        sets.append((label, generated(w, h, q, sub, 2 if args.quick else n)))
    res = {"decode": {}, "encode": None, "load_average": os.getloadavg()}
    for label, datas in sets:
        res["decode"][label] = measure_decoders(datas, rounds)
    curated = [_floor.fastest(d) for d in sets[0][1]]
    curated = [np.ascontiguousarray(cv2.resize(a[: min(a.shape[:2]), : min(a.shape[:2])], (1024, 1024),
                                               interpolation=cv2.INTER_AREA)) for a in curated][:6]
    res["encode"] = measure_encoders(curated, rounds)
    pngs = [cv2.imencode(".png", cv2.cvtColor(a, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 6])[1].tobytes()
            for a in curated]
    res["png"] = measure_pngs(pngs, rounds)
    out = ROOT / "bench_out" / "decode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    for label, rows in res["decode"].items():
        print(f"\n### decode: {label}, one thread, best of {rounds} rounds\n")
        print("| decoder | MP per CPU-s | images per CPU-s | vs floor | max diff vs Pillow route |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            diff = "-" if r["max_diff_vs_pillow_route"] is None else r["max_diff_vs_pillow_route"]
            print(f"| {r['decoder']} | {r['mp_per_cpu_s']:.0f} | {r['images_per_cpu_s']:.1f} | "
                  f"{r['vs_floor']:.2f} | {diff} |")
    print("\n### decode: 1024x1024 RGB PNGs (zlib level 6, as the negatives write them)\n")
    print("| decoder | MP per CPU-s | images per CPU-s | vs Pillow route | max diff vs Pillow route |")
    print("|---|---:|---:|---:|---:|")
    for r in res["png"]:
        print(f"| {r['decoder']} | {r['mp_per_cpu_s']:.0f} | {r['images_per_cpu_s']:.1f} | "
              f"{r['vs_pillow_route']:.2f} | {r['max_diff_vs_pillow_route']} |")
    print("\n### encode: 1024x1024 crops of the first set\n")
    print("| format | encoder | ms per image (CPU) | MP per CPU-s | KB per image | bytes = Pillow's | max pixel diff |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in res["encode"]:
        print(f"| {r['what']} | {r['encoder']} | {r['ms_per_image']:.2f} | {r['mp_per_cpu_s']:.0f} | "
              f"{r['kb_per_image']:.0f} | {r['bytes_identical_to_pillow']} | {r['max_pixel_diff']} |")
    print(f"\nLoad average {res['load_average'][0]:.1f}. JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
