"""Benchmark: how far the degradation's output is from the reference's (BasicSR 1.4.2 + Real-ESRGAN's batch
steps, ``bench_degrade.Reference``), by default and with each parity switch of ``quirks``.

    .venv/bin/pip install -c constraints/cpu-ci.txt --no-deps basicsr==1.4.2   # the reference (bench extra)
    .venv/bin/python benchmarks/bench_degrade_parity.py          # --draws 40 per photo (default), 8 photos

Real-ESRGAN x4plus (``realesrgan_x4``: HQ 256 -> LQ 64, kept at LQ size), the same 8 photos, ``--draws`` draws
of each: the reference with its own random draws, ours with its own (the parameters are identically
distributed: tests/test_degrade_pipeline.py). Two statistics per LQ, compared between the reference and each
variant of ours with a two-sample Kolmogorov-Smirnov test, plus the mean difference:

* PSNR of the LQ (bicubic back to 256) against the HQ crop: how strong the degradation is;
* chroma blockiness: on the LQ's Cb and Cr planes, with ``a`` the mean absolute step across pixel pairs
  (1|2, 3|4, ...) and ``i`` the mean step inside them (0|1, 2|3, ...), ``(a - i) / (a + i)`` in [-1, 1].
  DiffJPEG upsamples chroma by repeating each sample 2x2, so steps inside pairs vanish (towards 1) when its
  JPEG is the last step; libjpeg interpolates (near 0).

Variants: ``default`` (libjpeg, 256 Poisson levels, aligned first resize), each switch alone, and ``all`` (the
three switches: ``jpeg_codec: diffjpeg``, ``poisson_levels: count``, ``first_resize_coords: scale_factor``).
Last, the cost of the two codecs on one 512 x 512 crop (one thread, the same run): libjpeg (the anchor) and
DiffJPEG, milliseconds per call.

Prints markdown tables and writes bench_out/degrade_parity.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_degrade  # noqa: E402  (the reference implementation, one thread)

VARIANTS = {
    "default": [],
    "jpeg_codec=diffjpeg": ["quirks.jpeg_codec=diffjpeg"],
    "poisson_levels=count": ["quirks.poisson_levels=count"],
    "first_resize_coords=scale_factor": ["quirks.first_resize_coords=scale_factor"],
    "all three": ["quirks.jpeg_codec=diffjpeg", "quirks.poisson_levels=count",
                  "quirks.first_resize_coords=scale_factor"],
}


def psnr_up(lq: np.ndarray, hq: np.ndarray) -> float:
    import cv2

    up = cv2.resize(lq, (hq.shape[1], hq.shape[0]), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    mse = np.mean((up - hq.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def chroma_blockiness(lq: np.ndarray) -> float:
    x = lq.astype(np.float64)
    cb = -0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    cr = 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
    inside = across = 0.0
    for c in (cb, cr):
        for d in (np.abs(np.diff(c, axis=1)), np.abs(np.diff(c, axis=0)).T):
            inside += d[:, 0::2].mean()
            across += d[:, 1::2].mean()
    return float((across - inside) / max(across + inside, 1e-9))


def _stats(pairs) -> dict:
    return {"psnr": [psnr_up(lq, hq) for hq, lq in pairs], "chroma": [chroma_blockiness(lq) for _, lq in pairs]}


def compare(ref: dict, ours: dict) -> dict:
    from scipy.stats import ks_2samp

    out = {}
    for name in ("psnr", "chroma"):
        a, b = np.asarray(ref[name]), np.asarray(ours[name])
        ks = ks_2samp(a, b)
        se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
        out[name] = {"mean_ref": float(a.mean()), "mean_ours": float(b.mean()), "diff": float(b.mean() - a.mean()),
                     "diff_se": se, "ks": float(ks.statistic), "p": float(ks.pvalue)}
    return out


def codec_cost(side: int = 512, calls: int = 40) -> dict:
    """Milliseconds per call of each codec on one crop, alternating in rounds (load hits both alike)."""
    from supirkit.degrade.diffjpeg import diffjpeg_roundtrip
    from supirkit.degrade.jpeg import jpeg_roundtrip

    img = bench_degrade.photo_like(99, side).astype(np.float32) / 255.0
    fns = {"libjpeg (jpeg_codec: libjpeg)": lambda: jpeg_roundtrip(img, 60),
           "DiffJPEG (jpeg_codec: diffjpeg)": lambda: diffjpeg_roundtrip(img, 60.0)}
    spent = {name: 0.0 for name in fns}
    for _ in range(4):
        for name, fn in fns.items():
            t = time.process_time()
            for _ in range(calls // 4):
                fn()
            spent[name] += time.process_time() - t
    return {name: 1000 * s / calls for name, s in spent.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--draws", type=int, default=40, help="draws per photo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import random

    import torch

    from supirkit.degrade import Degrader

    reference = bench_degrade.Reference(None)
    np.random.seed(args.seed)  # the reference draws from the global generators, as it does in training
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    crops = [bench_degrade.photo_like(i, 256) for i in range(args.photos)]
    t0 = time.time()
    ref_pairs = [reference(hq) for hq in crops for _ in range(args.draws)]
    ref = _stats(ref_pairs)
    results = {"n": len(ref_pairs), "reference_s": round(time.time() - t0, 1), "variants": {}}
    for name, overrides in VARIANTS.items():
        degrader = Degrader.from_profile("realesrgan_x4", overrides)
        pairs = []
        for i, hq in enumerate(crops):
            for d in range(args.draws):
                target, lq, _ = degrader(hq, seed=args.seed, epoch=0, key=f"{i}/{d}")
                pairs.append((hq, lq))
        results["variants"][name] = compare(ref, _stats(pairs))
    print(f"{results['n']} LQs per variant ({args.photos} photos x {args.draws} draws), realesrgan_x4 (256 -> 64)")
    print("| ours | PSNR mean - ref (dB) | KS (PSNR) | p | chroma blockiness mean - ref | KS (chroma) | p |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["variants"].items():
        a, c = r["psnr"], r["chroma"]
        print(f"| {name} | {a['diff']:+.2f} ± {a['diff_se']:.2f} | {a['ks']:.2f} | {a['p']:.2g} | "
              f"{c['diff']:+.3f} ± {c['diff_se']:.3f} | {c['ks']:.2f} | {c['p']:.2g} |")
    results["codec_ms"] = codec_cost()
    print("| codec, 512 x 512, one thread | ms per call |\n|---|---:|")
    for name, ms in results["codec_ms"].items():
        print(f"| {name} | {ms:.2f} |")
    out = Path("bench_out")
    out.mkdir(exist_ok=True)
    (out / "degrade_parity.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
