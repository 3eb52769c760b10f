"""Benchmark: degrade (OpenCV/NumPy, per sample) against the reference (BasicSR 1.4.2 + Real-ESRGAN's batch
steps on CPU torch), in the same run, one thread, batch size 1.

    .venv/bin/pip install -c constraints/cpu-ci.txt --no-deps basicsr==1.4.2   # the reference (bench extra)
    .venv/bin/python benchmarks/bench_degrade.py            # add --quick for a short run

Cases: the ``supir`` profile (HQ 512 -> LQ 128 -> bicubic 512) and HQ 1024 -> LQ 256 -> 512 (``supir`` with
hq_size=1024). Pairs per second per core are measured on one thread (cv2, torch and BLAS limited to one);
reference and ours alternate in rounds so that load from other processes hits both alike. Throughput is
reported per wall second and per CPU second of the process (the latter is less sensitive to a busy machine).
Then the supir profile runs in a torch DataLoader with 1 and 2 worker processes (one thread each): pairs/s
per wall second and per worker-CPU-second.

Prints a markdown table and writes bench_out/degrade.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supirkit.degrade import Degrader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared inputs beside this script
import _images  # noqa: E402

cv2.setNumThreads(1)


# ------------------------------------------------------------------------------------------------ inputs
def photo_like(seed: int, side: int) -> np.ndarray:
    return _images.photo_like(seed, side, shapes=True)


# ------------------------------------------------------------------------------------------------ reference
class Reference:
    """Real-ESRGAN x4plus degradation as the reference runs it: kernels drawn as in
    ``realesrgan_dataset.py`` (L128-181) with BasicSR's functions, pixels as in ``realesrgan_model.py::feed_data``
    (L72-166) on CPU torch with batch size 1, then DiffBIR v2.1's bicubic resize to ``out_size`` before rounding
    (``batch_transform.py`` L267-271). Global numpy/random/torch RNGs, as the reference uses them."""

    opt = {
        "scale": 4,
        "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
        "noise_range": [1, 30], "poisson_scale_range": [0.05, 3], "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
        "second_blur_prob": 0.8, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
        "gaussian_noise_prob2": 0.5, "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5],
        "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95],
        "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
        "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob": 0.1, "blur_sigma": [0.2, 3],
        "betag_range": [0.5, 4], "betap_range": [1, 2], "sinc_prob2": 0.1, "blur_sigma2": [0.2, 1.5],
        "betag_range2": [0.5, 4], "betap_range2": [1, 2], "final_sinc_prob": 0.8,
    }

    def __init__(self, out_size: int | None):
        import torch
        import torchvision.transforms._functional_tensor as ft

        sys.modules.setdefault("torchvision.transforms.functional_tensor", ft)  # basicsr 1.4.2's old import
        from basicsr.data import degradations as D
        from basicsr.utils import DiffJPEG, USMSharp
        from basicsr.utils.img_process_util import filter2D

        self.torch, self.D, self.filter2D = torch, D, filter2D
        self.F = torch.nn.functional
        self.usm = USMSharp()
        self.jpeger = DiffJPEG(differentiable=False)
        self.out_size = out_size
        self.kernel_range = [2 * v + 1 for v in range(3, 11)]
        self.pulse = torch.zeros(21, 21)
        self.pulse[10, 10] = 1

    def _kernel(self, sinc_prob, sigma, betag, betap):
        D, ks = self.D, random.choice(self.kernel_range)
        if np.random.uniform() < sinc_prob:
            omega_c = np.random.uniform(np.pi / 3, np.pi) if ks < 13 else np.random.uniform(np.pi / 5, np.pi)
            k = D.circular_lowpass_kernel(omega_c, ks, pad_to=False)
        else:
            k = D.random_mixed_kernels(self.opt["kernel_list"], self.opt["kernel_prob"], ks, sigma, sigma,
                                       [-math.pi, math.pi], betag, betap, noise_range=None)
        pad = (21 - ks) // 2
        return np.pad(k, ((pad, pad), (pad, pad)))

    def kernels(self):
        o, torch = self.opt, self.torch
        k1 = self._kernel(o["sinc_prob"], o["blur_sigma"], o["betag_range"], o["betap_range"])
        k2 = self._kernel(o["sinc_prob2"], o["blur_sigma2"], o["betag_range2"], o["betap_range2"])
        if np.random.uniform() < o["final_sinc_prob"]:
            ks = random.choice(self.kernel_range)
            sinc = torch.FloatTensor(self.D.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), ks, pad_to=21))
        else:
            sinc = self.pulse
        return torch.FloatTensor(k1)[None], torch.FloatTensor(k2)[None], sinc[None]

    def _noise(self, out, gaussian_prob, sigma_range, poisson_range, gray_prob):
        D = self.D
        if np.random.uniform() < gaussian_prob:
            return D.random_add_gaussian_noise_pt(out, sigma_range=sigma_range, clip=True, rounds=False,
                                                  gray_prob=gray_prob)
        return D.random_add_poisson_noise_pt(out, scale_range=poisson_range, gray_prob=gray_prob, clip=True,
                                             rounds=False)

    def _resize(self, prob, rng, out, size_fn):
        updown = random.choices(["up", "down", "keep"], prob)[0]
        scale = np.random.uniform(1, rng[1]) if updown == "up" else (
            np.random.uniform(rng[0], 1) if updown == "down" else 1)
        mode = random.choice(["area", "bilinear", "bicubic"])
        return size_fn(out, scale, mode)

    def __call__(self, hq: np.ndarray):
        torch, F, o, filter2D = self.torch, self.F, self.opt, self.filter2D
        with torch.no_grad():
            gt = torch.from_numpy(hq).permute(2, 0, 1)[None].float() / 255.0
            k1, k2, sinc = self.kernels()
            gt_usm = self.usm(gt)
            ori_h, ori_w = gt.shape[2:4]
            out = filter2D(gt_usm, k1)
            out = self._resize(o["resize_prob"], o["resize_range"], out,
                               lambda x, s, m: F.interpolate(x, scale_factor=s, mode=m))
            out = self._noise(out, o["gaussian_noise_prob"], o["noise_range"], o["poisson_scale_range"],
                              o["gray_noise_prob"])
            q = out.new_zeros(out.size(0)).uniform_(*o["jpeg_range"])
            out = self.jpeger(torch.clamp(out, 0, 1), quality=q).contiguous()
            if np.random.uniform() < o["second_blur_prob"]:
                out = filter2D(out, k2)
            sc = o["scale"]
            out = self._resize(o["resize_prob2"], o["resize_range2"], out, lambda x, s, m: F.interpolate(
                x, size=(int(ori_h / sc * s), int(ori_w / sc * s)), mode=m))
            out = self._noise(out, o["gaussian_noise_prob2"], o["noise_range2"], o["poisson_scale_range2"],
                              o["gray_noise_prob2"])
            if np.random.uniform() < 0.5:
                out = F.interpolate(
                    out, size=(ori_h // sc, ori_w // sc), mode=random.choice(["area", "bilinear", "bicubic"])
                )
                out = filter2D(out, sinc)
                q = out.new_zeros(out.size(0)).uniform_(*o["jpeg_range2"])
                out = self.jpeger(torch.clamp(out, 0, 1), quality=q).contiguous()
            else:
                q = out.new_zeros(out.size(0)).uniform_(*o["jpeg_range2"])
                out = self.jpeger(torch.clamp(out, 0, 1), quality=q).contiguous()
                out = F.interpolate(
                    out, size=(ori_h // sc, ori_w // sc), mode=random.choice(["area", "bilinear", "bicubic"])
                )
                out = filter2D(out, sinc)
            if self.out_size is not None:
                out = F.interpolate(out, size=(self.out_size, self.out_size), mode="bicubic")
            lq = torch.clamp((out * 255.0).round(), 0, 255)
            return hq, lq[0].permute(1, 2, 0).to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------------ timing
def _time(fn, items) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for i, item in enumerate(items):
        fn(item, i)
    return time.perf_counter() - w0, time.process_time() - c0


def compare(name: str, hq_side: int, out_size: int, n_ours: int, n_ref: int, rounds: int, crops) -> dict:
    import torch

    torch.set_num_threads(1)
    degrader = Degrader.from_profile("supir", [f"hq_size={hq_side}", f"output.size={out_size}"])
    reference = Reference(out_size)
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    ours_fn = lambda hq, i: degrader(hq, seed=0, epoch=0, key=f"{name}-{i}")  # noqa: E731
    ref_fn = lambda hq, i: reference(hq)  # noqa: E731
    ours_fn(crops[0], -1), ref_fn(crops[0], -1)  # warm-up: imports, tables, caches
    totals = {"ours": [0.0, 0.0, 0], "ref": [0.0, 0.0, 0]}
    for r in range(rounds):
        for label, fn, n in (("ref", ref_fn, n_ref), ("ours", ours_fn, n_ours)):
            items = [crops[(r * n + j) % len(crops)] for j in range(n)]
            wall, cpu = _time(fn, items)
            totals[label][0] += wall
            totals[label][1] += cpu
            totals[label][2] += n
    res = {"case": name}
    for label, (wall, cpu, n) in totals.items():
        res[f"{label}_pairs"] = n
        res[f"{label}_pairs_per_s_wall"] = n / wall
        res[f"{label}_pairs_per_cpu_s"] = n / cpu
    res["speedup_wall"] = res["ours_pairs_per_s_wall"] / res["ref_pairs_per_s_wall"]
    res["speedup_cpu"] = res["ours_pairs_per_cpu_s"] / res["ref_pairs_per_cpu_s"]
    return res


class _CropSet:
    """Map-style dataset: HQ crops through the degrader's transform (as a training Dataset would)."""

    def __init__(self, crops, transform, n):
        self.crops, self.transform, self.n = crops, transform, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        out = self.transform({"__key__": str(i), "jpg": self.crops[i % len(self.crops)]})
        return out["target"], out["lq"]


def _one_thread(_worker_id):
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def loader_scaling(crops, n: int, workers_list=(1, 2)) -> list[dict]:
    """Pairs/s through a torch DataLoader with 1 and 2 worker processes. Wall rates suffer from any other load
    on the machine, so the workers' own CPU time is reported too (``RUSAGE_CHILDREN`` once they have exited):
    pairs per worker-CPU-second is what one more core would add."""
    import gc
    import resource

    import torch
    from torch.utils.data import DataLoader

    transform = Degrader.from_profile("supir").as_transform(seed=0, epoch=0)
    rows = []
    for workers in workers_list:
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        loader = DataLoader(_CropSet(crops, transform, n), batch_size=8, num_workers=workers,
                            worker_init_fn=_one_thread, prefetch_factor=4, persistent_workers=False)
        it = iter(loader)
        count = next(it)[1].shape[0]  # worker start-up and first batch excluded from the wall rate
        t0 = time.perf_counter()
        timed = 0
        for _target, lq in it:
            timed += lq.shape[0]
        wall = time.perf_counter() - t0
        count += timed
        del it, loader  # the iterator joins its workers when it is collected
        gc.collect()
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        rows.append({"workers": workers, "pairs": count, "pairs_per_s": timed / wall,
                     "worker_cpu_s": child_cpu, "pairs_per_worker_cpu_s": count / child_cpu if child_cpu else None})
    torch.set_num_threads(1)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs (a smoke run, noisy figures)")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "degrade.json"))
    args = ap.parse_args(argv)
    quick = args.quick
    crops512 = [photo_like(s, 512) for s in range(6)]
    crops1024 = [photo_like(100 + s, 1024) for s in range(3)]
    cases = [
        compare("supir 512->128->512", 512, 512, n_ours=8 if quick else 40, n_ref=1 if quick else 2,
                rounds=2 if quick else 4, crops=crops512),
        compare("1024->256->512", 1024, 512, n_ours=3 if quick else 10, n_ref=1, rounds=1 if quick else 3,
                crops=crops1024),
    ]
    scaling = loader_scaling(crops512, 64 if quick else 400)
    import torch

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "opencv": cv2.__version__, "torch": torch.__version__},
        "threads": 1, "batch_size_reference": 1, "cases": cases, "loader": scaling,
        "command": "python benchmarks/bench_degrade.py" + (" --quick" if quick else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| case | reference pairs/s/core (wall / CPU) | degrade pairs/s/core (wall / CPU) | speed-up (wall / CPU) |")
    print("|---|---:|---:|---:|")
    for c in cases:
        print(f"| {c['case']} | {c['ref_pairs_per_s_wall']:.3f} / {c['ref_pairs_per_cpu_s']:.3f} "
              f"| {c['ours_pairs_per_s_wall']:.1f} / {c['ours_pairs_per_cpu_s']:.1f} "
              f"| {c['speedup_wall']:.0f}x / {c['speedup_cpu']:.0f}x |")
    print()
    print("| DataLoader workers (1 thread each), supir profile | pairs/s (wall) | per worker (wall) "
          "| pairs per worker-CPU-s |")
    print("|---|---:|---:|---:|")
    for row in scaling:
        per_cpu = row["pairs_per_worker_cpu_s"]
        per_cpu = f"{per_cpu:.1f}" if per_cpu else "n/a"
        print(
            f"| {row['workers']} | {row['pairs_per_s']:.1f} | {row['pairs_per_s'] / row['workers']:.1f} | {per_cpu} |"
        )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
