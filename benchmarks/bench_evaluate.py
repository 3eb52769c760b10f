"""Benchmark: ``supirkit evaluate`` per metric on CPU at 512 px, against pyiqa's own loop over the same files,
in the same run.

    .venv/bin/python benchmarks/bench_evaluate.py            # --quick for a short run

Inputs: pairs of 512x512 PNG files (a photo-like reference and a blurred, noisy, JPEG-compressed
"restoration" of it), written once. For each metric:

* pyiqa loop (the anchor): the metric built by ``pyiqa.create_metric`` and called on each pair of file paths,
  one image at a time, as pyiqa's README does (it reads and converts each file itself);
* ``evaluate``: ``run_evaluate`` on the two folders (matching by key, decoding, the metric on batches of
  same-size images, the per-image parquet, the summary tables and the best/worst crops page), the metric
  built beforehand as the CLI does; its own per-metric compute time is reported too.

Both use the same model: the learned metrics are built with random weights from their configs (no weights
can be downloaded here), which changes no shape and no cost; NIQE reads a parameter file of the published
format. PSNR/SSIM are pyiqa's ``psnr``/``ssim`` with ``test_y_channel=True, color_space='ycbcr'`` in the
anchor, supirkit's under the same convention in ``evaluate``. torch runs on 2 threads in both. Rounds
alternate anchor and candidate; medians are reported.

Prints a markdown table and writes bench_out/evaluate.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _images  # noqa: E402

OUT = ROOT / "bench_out"
SIDE = 512
# images per round for each metric (MANIQA keeps pyiqa's default 20 crops of 224 px per image)
METRICS = {"psnr": 16, "ssim": 16, "lpips": 8, "dists": 4, "musiq": 4, "clipiqa": 8, "niqe": 4, "maniqa": 1}


def make_pairs(folder: Path, n: int) -> tuple[Path, Path]:
    pred, ref = folder / "pred", folder / "ref"
    pred.mkdir(parents=True)
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        hq = _images.photo_like(i, SIDE, shapes=True)
        out = cv2.GaussianBlur(hq, (7, 7), 1.5).astype(np.float32) + rng.normal(0, 5, hq.shape)
        ok, buf = cv2.imencode(".jpg", np.clip(out, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 60])
        cv2.imwrite(str(pred / f"{i:04d}.png"), cv2.imdecode(buf, cv2.IMREAD_COLOR))
        cv2.imwrite(str(ref / f"{i:04d}.png"), hq)
    return pred, ref


def niqe_params(folder: Path) -> str:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    path = folder / "niqe_params.mat"
    savemat(path, {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T + 36 * np.eye(36)})
    return str(path)


def anchor_metric(name: str, options: dict):
    """The pyiqa metric the anchor loop calls (random weights through the same builder, same model)."""
    from supirkit.metrics import build_pyiqa

    if name in ("psnr", "ssim"):
        import pyiqa

        return pyiqa.create_metric(name, test_y_channel=True, color_space="ycbcr", device="cpu")
    return build_pyiqa(name, "cpu", pretrained=False, options=options.get(name))


def pyiqa_loop(metric, preds: list[Path], refs: list[Path], full_reference: bool) -> float:
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        for p, r in zip(preds, refs):
            metric(str(p), str(r)) if full_reference else metric(str(p))
    return time.perf_counter() - t


def evaluate_run(name: str, pred: Path, ref: Path, out: Path, options: dict, suite) -> tuple[float, float]:
    from supirkit.datapipe.config import load_config
    from supirkit.evaluation import EvaluateConfig, run_evaluate

    cfg = load_config(EvaluateConfig, None, [f"metrics.names=[{name}]", "metrics.pretrained=false",
                                             "metrics.device=cpu"], default="evaluate/default.yaml")
    cfg = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"options": options})})
    t = time.perf_counter()
    run_evaluate(str(pred), str(ref), out, cfg, fresh=True, suite=suite)
    wall = time.perf_counter() - t
    compute = json.loads((out / "summary.json").read_text())["throughput"][name]["seconds"]
    return wall, compute


def bench(names: list[str], rounds: int, scale: float, work: Path) -> list[dict]:
    import torch

    from supirkit.metrics import build_metrics, metric_info

    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    options = {"niqe": {"pretrained_model_path": niqe_params(work)}}
    results = []
    for name in names:
        n = max(1, int(METRICS[name] * scale))
        pred, ref = make_pairs(work / name, n)
        preds, refs = sorted(pred.iterdir()), sorted(ref.iterdir())
        fr = metric_info(name).mode == "FR"
        suite = build_metrics([name], device="cpu", pretrained=False, options=options)
        anchor = anchor_metric(name, options)
        pyiqa_loop(anchor, preds[:1], refs[:1], fr)  # warm-up both (first calls allocate)
        evaluate_run(name, pred, ref, work / f"ev-{name}", options, suite)
        a, w, c = [], [], []
        for _ in range(rounds):
            a.append(pyiqa_loop(anchor, preds, refs, fr))
            wall, compute = evaluate_run(name, pred, ref, work / f"ev-{name}", options, suite)
            w.append(wall)
            c.append(compute)
        ma, mw, mc = statistics.median(a), statistics.median(w), statistics.median(c)
        results.append({"metric": name, "images": n, "rounds": rounds, "pyiqa_loop_s": ma, "evaluate_s": mw,
                        "evaluate_metric_s": mc, "pyiqa_images_per_s": n / ma, "evaluate_images_per_s": n / mw,
                        "evaluate_metric_images_per_s": n / mc, "ratio": ma / mw,
                        "ratio_paired": statistics.median(x / y for x, y in zip(a, w))})
        print(f"{name}: pyiqa {n / ma:.2f} img/s, evaluate {n / mw:.2f} img/s ({ma / mw:.2f}x)", flush=True)
    return results


def table(results: list[dict]) -> str:
    lines = ["| metric | images | pyiqa loop (img/s) | `evaluate` whole job (img/s) | evaluate / pyiqa | "
             "paired rounds | `evaluate` metric compute only (img/s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['metric']} | {r['images']} | {r['pyiqa_images_per_s']:.2f} "
                     f"| {r['evaluate_images_per_s']:.2f} | {r['ratio']:.2f}x | {r['ratio_paired']:.2f}x "
                     f"| {r['evaluate_metric_images_per_s']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="half the images, one round")
    ap.add_argument("--metrics", default=",".join(METRICS), help="comma-separated subset")
    args = ap.parse_args()
    names = [m for m in args.metrics.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    try:
        t0 = time.time()
        results = bench(names, 1 if args.quick else 3, 0.5 if args.quick else 1.0, work)
        text = table(results)
        print()
        print(text)
        OUT.mkdir(exist_ok=True)
        (OUT / "evaluate.json").write_text(json.dumps({"results": results, "side": SIDE, "wall_s": time.time() - t0,
                                                       "machine": platform.platform()}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
