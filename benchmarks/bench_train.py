"""Benchmark: the training data loader (shard read, decode, 512 crop + flip, supir degradation, collate) in
samples per second per CPU core, against the anchor in the same run: a plain webdataset pipeline doing the
same work (sequential tar read, ``decode("rgb8")``, the same crop/flip, the same degrader, batching). Then the
loader's rate at the step's own size against what the training step consumes (tiny SDXL on CPU), and from
the per-core rate the loader cores each GPU needs at the full-size model's samples/s per GPU.

    .venv/bin/python benchmarks/bench_train.py            # add --quick for a short run

One thread per process (cv2, torch, BLAS). Ours and the anchor alternate in rounds so that load from other
processes hits both alike; rates are given per wall second and per CPU second of the process (the latter is
the per-core figure and is less sensitive to a busy machine).

On a machine with CUDA the script also measures the full-size training step (``full_size_step``): SDXL base
1.0 shapes (``configs/model``: UNet, VAE; the two CLIP text encoders' published sizes) with random weights,
UNet/VAE/text encoders frozen in bf16, the adaptor of the config's selected trunk layout in fp32 under bf16
autocast, gradient checkpointing, 512 px, batch 4: VAE encode of the HQ, DR-encoder latent of the LQ, both
text encoders, the controlled UNet forward + backward, gradient clipping, AdamW and the EMA update, as
the trainer does. Its samples/s and peak memory are reported, and the cores-per-GPU figure uses that
measured rate. Without CUDA the figure uses an estimated GPU rate (``ESTIMATED_GPU_SAMPLES_PER_S``) and is
labelled as an estimate.

Prints a markdown block and writes bench_out/train.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared inputs beside this script
import _images  # noqa: E402
from _full_size import SDXL_TEXT_ENCODERS, SDXLConfigs, TrainingStep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
cv2.setNumThreads(1)

#: Estimated full-size samples/s per GPU at 512 px (bf16, gradient checkpointing, VAE + DR encoder + text
#: encoders + trunk + frozen UNet) when no GPU is measured: [I] about 10 on one H100 (SDXL UNet training at
#: 512 px is ~20 samples/s there; SUPIR adds the trunk, a second VAE-encoder pass and backward through the
#: decoder half). To be replaced by a measurement on a GPU machine.
ESTIMATED_GPU_SAMPLES_PER_S = 10.0
GOAL_CORES_PER_GPU = 4.0


def curated_crops(folder: str, side: int) -> list[np.ndarray]:
    """Curated-style training images from real photographs: short side to ``side`` (area), centre crop."""
    import _floor

    out = []
    for p in sorted(q for q in Path(folder).iterdir() if q.suffix.lower() in (".jpg", ".jpeg")):
        rgb = _floor.fastest(p.read_bytes())
        k = side / min(rgb.shape[:2])
        h, w = max(side, round(rgb.shape[0] * k)), max(side, round(rgb.shape[1] * k))
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        top, left = (h - side) // 2, (w - side) // 2
        out.append(np.ascontiguousarray(rgb[top:top + side, left:left + side]))
    return out


def write_set(folder: Path, prefix: str, shards: int, per_shard: int, side: int, seed: int,
              photos: list | None = None) -> None:
    from supirkit.datapipe.decode import encode_image
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    for s in range(shards):
        sink = ShardSink(folder, prefix, s)
        for i in range(per_shard):
            j = seed * 1000 + s * 100 + i
            img = photos[j % len(photos)] if photos else _images.photo_like(j, side)
            sink.write({"__key__": f"{prefix}{s:02d}x{i:03d}", "jpg": encode_image(img, "jpg", 95),
                        "json": {"width": side, "height": side}, "txt": f"a detailed photo number {i}"})
        sink.commit(UnitStats())


def data_section(root: Path, crop: int, overrides=()):
    from supirkit.train.config import TrainDataConfig

    return TrainDataConfig.model_validate({
        "mixture": [{"name": "hq", "shards": str(root / "hq"), "weight": 0.92},
                    {"name": "faces", "shards": str(root / "faces"), "weight": 0.04},
                    {"name": "negatives", "shards": str(root / "neg"), "weight": 0.04, "prompt": "caption"}],
        "crop": {"size": crop}, "degrade": "supir", "degrade_overrides": list(overrides),
        "caption_drop_prob": 0.05, "num_workers": 0})


class Clock:
    def __init__(self):
        self.wall = self.cpu = 0.0
        self.n = 0

    def run(self, fn, n):
        w, c = time.perf_counter(), time.process_time()
        fn()
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        self.n += n

    def rates(self):
        return {
            "samples": self.n,
            "per_s_wall": self.n / max(self.wall, 1e-9),
            "per_cpu_s": self.n / max(self.cpu, 1e-9),
        }


def anchor_pipeline(root: Path, crop: int, batch: int, seed: int):
    """The field's usual loader: webdataset, sequential reads, shuffle buffer, decode, crop/flip, degrade."""
    import torch
    import webdataset as wds

    from supirkit.datapipe.tario import list_shards
    from supirkit.degrade import Degrader

    degrader = Degrader.from_profile("supir")
    rng = np.random.default_rng(seed)
    urls = list_shards(str(root / "hq"))

    def crop_degrade(sample):
        img = sample["jpg"]
        h, w = img.shape[:2]
        top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        hq = img[top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            hq = hq[:, ::-1]
        target, lq, _ = degrader(np.ascontiguousarray(hq), seed=seed, epoch=0, key=sample["__key__"])
        return target, lq, sample["txt"]

    def collate(samples):
        hq = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
        lq = torch.from_numpy(np.stack([s[1] for s in samples])).permute(0, 3, 1, 2).contiguous()
        return {"hq": hq, "lq": lq, "prompt": [s[2] for s in samples]}

    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
          .repeat().shuffle(8, rng=None).decode("rgb8").map(crop_degrade).batched(batch, collation_fn=collate))
    return iter(ds)


def loader_rates(root: Path, rounds: int, batch: int) -> dict:
    from supirkit.datapipe.decode import decode_rgb
    from supirkit.datapipe.tario import sample_image
    from supirkit.train.data import MixtureStream

    ours = MixtureStream(data_section(root, 512), seed=0, batch_size=batch)
    anchor = anchor_pipeline(root, 512, batch, seed=0)
    next(anchor), ours.micro_batch(10_000)  # warm-up: imports, tar header scans, profile load
    c_ours, c_anchor = Clock(), Clock()
    m = 0
    for _ in range(rounds):
        c_anchor.run(lambda: next(anchor), batch)
        c_ours.run(lambda m=m: ours.micro_batch(m), batch)
        m += 1
    # where our loader's time goes, per sample (one core); the decode floors (``_floor``) on the same bytes
    import _floor

    parts = {"read": 0.0, "decode": 0.0, "crop": 0.0, "degrade": 0.0, "collate": 0.0}
    floors = {"fastest": 0.0, "pillow": 0.0}
    n = rounds * batch
    samples = []
    megapixels = 0.0
    for i in range(n):
        d = ours.plan(i)
        ix = ours.indexes[d.member]
        t = time.process_time()
        raw = ours.reader.read(ix.urls[d.shard], ix.keys(d.shard)[d.row])
        t1 = time.process_time()
        img, _ = decode_rgb(sample_image(raw)[1], 10 ** 9)
        t2 = time.process_time()
        megapixels += img.shape[0] * img.shape[1] / 1e6
        for name, fn in _floor.FLOORS.items():
            floors[name] += _floor.decode_all(fn, [sample_image(raw)[1]])[0]
        t2c = time.process_time()  # the floors are not the loader's time
        top = int(d.u_top * (img.shape[0] - 511))
        left = int(d.u_left * (img.shape[1] - 511))
        hq = np.ascontiguousarray(
            img[top : top + 512, left : left + 512][:, ::-1] if d.flip else img[top : top + 512, left : left + 512]
        )
        t3 = time.process_time()
        target, lq, _ = ours.degrader()(hq, seed=0, epoch=0, key=raw["__key__"])
        t4 = time.process_time()
        samples.append({"hq": target, "lq": lq, "prompt": "", "caption": "", "time_ids": [0.0] * 6, "key": "",
                        "member": 0, "index": i})
        parts["read"] += t1 - t
        parts["decode"] += t2 - t1
        parts["crop"] += t3 - t2c
        parts["degrade"] += t4 - t3
    from supirkit.train.data import collate

    t = time.process_time()
    for k in range(0, n, batch):
        collate(samples[k:k + batch])
    parts["collate"] = time.process_time() - t
    total = sum(parts.values())
    return {"ours": c_ours.rates(), "anchor": c_anchor.rates(),
            "ratio_wall": c_ours.rates()["per_s_wall"] / c_anchor.rates()["per_s_wall"],
            "ratio_cpu": c_ours.rates()["per_cpu_s"] / c_anchor.rates()["per_cpu_s"],
            "parts_ms_per_sample": {k: 1000 * v / n for k, v in parts.items()},
            "parts_share": {k: v / total for k, v in parts.items()},
            "decode_mp_per_cpu_s": megapixels / parts["decode"],
            "floor_ms_per_sample": {k: 1000 * v / n for k, v in floors.items()},
            "floor_mp_per_cpu_s": {k: megapixels / v for k, v in floors.items()}}


def loader_per_core(root: Path, rounds: int, batch: int) -> dict:
    """Our loader alone (no anchor), samples per wall second and per CPU second of this process (one thread)."""
    from supirkit.train.data import MixtureStream

    ours = MixtureStream(data_section(root, 512), seed=0, batch_size=batch)
    ours.micro_batch(10_000)  # warm-up: imports, tar header scans, profile load
    clock = Clock()
    for m in range(rounds):
        clock.run(lambda m=m: ours.micro_batch(m), batch)
    return clock.rates()


def worker_rates(root: Path, batches: int, batch: int, workers: int) -> dict:
    from supirkit.train.data import MixtureStream, build_loader

    stream = MixtureStream(data_section(root, 512), seed=0, batch_size=batch)
    loader = build_loader(stream, num_workers=workers, prefetch_factor=2)
    it = iter(loader)
    next(it)  # worker start-up
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = time.perf_counter() - t
    del it, loader
    return {"workers": workers, "samples": batches * batch, "per_s_wall": batches * batch / wall}


def tiny_step_vs_loader(root: Path, steps: int) -> dict:
    """The tiny-SDXL training step on CPU (what the step consumes) against the loader at the step's size."""
    import torch

    from supirkit.tiny.sdxl import build_tiny_sdxl
    from supirkit.train.config import TrainConfig
    from supirkit.train.data import MixtureStream
    from supirkit.train.objectives import AdaptorObjective, FrozenSDXL
    from supirkit.train.setup import build_optimizer, seed_for

    torch.set_num_threads(1)
    sdxl = build_tiny_sdxl(root / "sdxl", seed=0)
    batch = 2
    cfg = TrainConfig.model_validate(
        {
            "model": {"pretrained": str(sdxl)},
            "data": data_section(root, 64, ["hq_size=null", "output.size=hq"]).model_dump(),
            "schedule": {
                "max_steps": steps,
                "batch_size": batch,
                "mixed_precision": "no",
                "gradient_checkpointing": False,
            },
        }
    )
    cpu = torch.device("cpu")
    frozen = FrozenSDXL(cfg.model.pretrained, cpu, torch.float32)
    objective = AdaptorObjective(cfg, frozen, cpu, torch.float32)
    model = objective.model
    optimizer = build_optimizer(cfg, objective.trainable(model), on_cuda=False)
    stream = MixtureStream(cfg.data, seed=0, batch_size=batch)
    batches = [stream.micro_batch(m) for m in range(steps + 1)]
    from contextlib import nullcontext

    def one(m):
        loss = objective.loss(model, model, batches[m], torch.Generator().manual_seed(seed_for(0, m)), nullcontext)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one(steps)  # warm-up
    clock = Clock()
    for m in range(steps):
        clock.run(lambda m=m: one(m), batch)
    step = clock.rates()
    c_loader = Clock()
    for m in range(steps):
        c_loader.run(lambda m=m: stream.micro_batch(1000 + m), batch)
    load = c_loader.rates()
    return {"step_samples_per_s_wall": step["per_s_wall"], "step_samples_per_cpu_s": step["per_cpu_s"],
            "steps_per_s_wall": step["per_s_wall"] / batch, "batch": batch,
            "loader_samples_per_s_wall": load["per_s_wall"], "loader_samples_per_cpu_s": load["per_cpu_s"],
            "loader_over_step_cpu": load["per_cpu_s"] / step["per_cpu_s"]}


def full_size_step(device, steps: int, warmup: int, batch: int = 4, px: int = 512, unet_config=None, vae_config=None,
                   text_configs=SDXL_TEXT_ENCODERS, layout="selected") -> dict:
    """Samples/s and peak memory of the adaptor training step at full size (random weights), as
    ``_full_size.TrainingStep`` runs it (frozen VAE, DR encoder and text encoders in bf16, the UNet in bf16 and
    the adaptor in fp32 under bf16 autocast, gradient checkpointing, AdamW, EMA). ``unet_config``/
    ``vae_config``/``text_configs`` default to the full-size ones (other sizes only to smoke-test this path)."""
    full = SDXLConfigs.full()
    configs = SDXLConfigs(unet_config or full.unet, vae_config or full.vae, text_configs)
    step = TrainingStep(device, layout, configs)
    result = step.measure(batch, steps, warmup, px)
    if result.get("oom"):
        raise RuntimeError(f"batch {batch} at {px} px does not fit on {device}")
    result.update(device=torch_device_name(device), layout=step.layout, trainable=step.trainable())
    step.close()
    return result


def torch_device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "train.json"))
    ap.add_argument("--gpu-steps", type=int, default=None, help="timed full-size steps on CUDA (default 10, --quick 4)")
    ap.add_argument("--photos", default=None,
                    help="make the shards' 1024-px images from the JPEGs of this folder (real photographs)")
    ap.add_argument("--loader-only", action="store_true",
                    help="only the loader against its anchor and the decode floors (no workers, no training step)")
    args = ap.parse_args()
    if args.gpu_steps is None:
        args.gpu_steps = 4 if args.quick else 10
    rounds = 6 if args.quick else 16
    batch = 4
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        photos = curated_crops(args.photos, 1024) if args.photos else None
        write_set(root / "hq", "hq", 2, 8, 1024, seed=1, photos=photos)
        write_set(root / "faces", "fc", 1, 4, 1024, seed=2, photos=photos)
        write_set(root / "neg", "ng", 1, 4, 1024, seed=3, photos=photos)
        loader = loader_rates(root, rounds, batch)
        if args.loader_only:
            parts = loader["parts_ms_per_sample"]
            print(json.dumps({k: loader[k] for k in ("ours", "anchor", "ratio_cpu", "decode_mp_per_cpu_s",
                                                     "floor_ms_per_sample", "floor_mp_per_cpu_s")}, indent=1))
            print("per sample: " + ", ".join(f"{k} {v:.2f} ms ({100 * loader['parts_share'][k]:.1f} %)"
                                             for k, v in parts.items()))
            return 0
        workers = [worker_rates(root, rounds, batch, w) for w in (1, 2)]
        tiny = tiny_step_vs_loader(root, 4 if args.quick else 8)
    per_core = loader["ours"]["per_cpu_s"]
    gpu = None
    gpu_rate, label = ESTIMATED_GPU_SAMPLES_PER_S, "estimated [I], not measured"
    if torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))  # the GPU step's host side is not the loader
        torch.backends.cuda.matmul.allow_tf32 = True  # as the training config (schedule.allow_tf32)
        torch.backends.cudnn.allow_tf32 = True
        gpu = full_size_step(torch.device("cuda"), steps=args.gpu_steps, warmup=2, batch=batch, px=512)
        gpu_rate, label = gpu["samples_per_s"], f"measured on {gpu['device']}"
    cores = gpu_rate / per_core
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average": os.getloadavg()},
              "batch": batch, "rounds": rounds, "loader": loader, "workers": workers, "tiny_step": tiny,
              "gpu": gpu, "gpu_samples_per_s": gpu_rate, "gpu_label": label, "cores_per_gpu": cores}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    o, a = loader["ours"], loader["anchor"]
    print(f"\n### train: loader (1 thread, 1024 px JPEG -> 512 crop -> supir degradation, batch {batch}; "
          f"load average {os.getloadavg()[0]:.1f})\n")
    print("| loader | samples/s (wall) | samples per CPU-s (= per core) | x vs anchor (wall / CPU) |")
    print("|---|---|---|---|")
    print(f"| webdataset anchor | {a['per_s_wall']:.2f} | {a['per_cpu_s']:.2f} | 1.00 / 1.00 |")
    print(f"| train.data MixtureStream | {o['per_s_wall']:.2f} | {o['per_cpu_s']:.2f} | "
          f"{loader['ratio_wall']:.2f} / {loader['ratio_cpu']:.2f} |")
    for w in workers:
        print(f"| DataLoader, {w['workers']} worker(s) | {w['per_s_wall']:.2f} | | |")
    parts = loader["parts_ms_per_sample"]
    print(
        "\nper sample: "
        + ", ".join(f"{k} {v:.1f} ms ({100 * loader['parts_share'][k]:.0f} %)" for k, v in parts.items())
    )
    fl, fmp = loader["floor_ms_per_sample"], loader["floor_mp_per_cpu_s"]
    print(f"decode: {parts['decode']:.2f} ms per sample, {loader['decode_mp_per_cpu_s']:.0f} MP per CPU-s; "
          f"floor (fastest decoder) {fl['fastest']:.2f} ms, {fmp['fastest']:.0f} MP per CPU-s (decode / floor "
          f"{parts['decode'] / fl['fastest']:.2f}); old Pillow floor {fl['pillow']:.2f} ms, {fmp['pillow']:.0f} "
          f"MP per CPU-s (decode / old floor {parts['decode'] / fl['pillow']:.2f})")
    print(f"\n| tiny SDXL step on CPU (64 px, batch {tiny['batch']}) | value |\n|---|---|")
    print(f"| step: steps/s (wall) | {tiny['steps_per_s_wall']:.2f} |")
    print(f"| step consumes: samples per CPU-s | {tiny['step_samples_per_cpu_s']:.2f} |")
    print(f"| loader at 64 px: samples per CPU-s | {tiny['loader_samples_per_cpu_s']:.2f} |")
    print(f"| loader / step | {tiny['loader_over_step_cpu']:.2f} |")
    if gpu is not None:
        print(f"\n| full-size SUPIR step on {gpu['device']} ({gpu['layout']} trunk, random weights, 512 px, batch "
              f"{gpu['batch']}, bf16, gradient checkpointing, AdamW + EMA) | value |\n|---|---|")
        print(f"| trainable parameters | {gpu['trainable']:,} |")
        print(f"| s/step (median of {gpu['steps']}) | {gpu['median_s_per_step']:.3f} |")
        print(f"| samples/s per GPU | {gpu['samples_per_s']:.2f} |")
        print(f"| peak memory (GiB allocated) | {gpu['peak_gib']:.1f} |")
    print(f"\nfull-size model: {gpu_rate:.1f} samples/s per GPU ({label}) / {per_core:.2f} samples per core-s "
          f"= **{cores:.2f} loader cores per GPU** (goal <= {GOAL_CORES_PER_GPU:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
