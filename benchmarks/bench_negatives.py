"""Benchmark of ``supirkit negatives``: images per second and the share of time inside the diffusion pipeline.

Anchor (issue 6): the bare diffusers pipeline call on the same batches, measured in the same run. The ratio
stage/anchor is the cost of everything the stage adds (reading and decoding sources from tars, cropping,
seeded per-sample generators, PNG encoding, shard writing).

* CPU (always): the tiny SDXL (supirkit.tiny) at 64 px with the default schedule (50 steps, strength 0.5).
* GPU (when CUDA is available): full-size SDXL built from its configs with random weights (UNet from
  configs/model/sdxl_unet.json, VAE from configs/model/sdxl_vae.json, CLIP-L and OpenCLIP-bigG-sized text
  encoders), saved in fp16 and loaded back through from_pretrained, at 1024 px: images/s per GPU.
  Without a GPU the full-size components are only built on the meta device, to check that they fit together.

Rates exclude model loading and the first shard (one batch: warm-up). Usage:
    .venv/bin/python benchmarks/bench_negatives.py [--count 16] [--batch 4] [--repeats 2]
                                                   [--gpu-count 24] [--gpu-batch 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared full-size builders beside this script
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402


def write_input_shard(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """One input shard of ``n`` textured RGB images (PNG), a little larger than the output and not square."""
    import cv2

    from supirkit.datapipe.decode import encode_image
    from supirkit.datapipe.keys import content_key
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    rng = np.random.default_rng(seed)
    sink = ShardSink(folder, "shard", 0)
    for _ in range(n):
        h, w = size + size // 4, size + size // 2
        low = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        data = encode_image(img, "png", 1)
        key = content_key(data)
        sink.write({"__key__": key, "png": data, "json": {"key": key, "orig_width": w, "orig_height": h}})
    sink.commit(UnitStats())


def run_stage_bench(model: str, inputs: Path, out: Path, count: int, batch: int, size: int, device: str,
                    dtype: str, threads, steps: int = 50) -> dict:
    from supirkit.negatives.config import NegativesConfig
    from supirkit.negatives.job import run_negatives_job

    cfg = NegativesConfig.model_validate({
        "model": {"id": model, "device": device, "dtype": dtype, "cpu_threads": threads},
        "generate": {"count": count, "batch_size": batch, "width": size, "height": size, "steps": steps},
        "output": {"samples_per_shard": batch},
        "runner": {"executor": "local", "progress": "none"},
    })
    t0 = time.perf_counter()
    result = run_negatives_job([str(inputs)], out, cfg, fresh=True)
    wall = time.perf_counter() - t0
    assert result.ok and result.samples == count, (result.failed, result.samples)
    shards = [json.loads(p.read_text()) for p in sorted((out / "__supirkit__" / "stats").glob("negatives-*.json"))]
    timed = shards[1:] or shards  # the first shard carries the warm-up
    n = sum(s["counts"]["samples"] for s in timed)
    shard_wall = sum(s["wall_s"] for s in timed)
    pipe_s = sum(s["timings_s"].get("pipeline", 0.0) for s in timed)
    return {"images": n, "images_per_s": n / shard_wall, "pipeline_share": pipe_s / shard_wall,
            "job_wall_s": wall, "setup_and_warmup_s": wall - shard_wall,
            "other_timings_s": {k: round(sum(s["timings_s"].get(k, 0.0) for s in timed), 4)
                                for k in ("read_index", "read", "decode", "resize", "encode", "write")}}


def run_anchor(model: str, inputs: Path, count: int, batch: int, size: int, device: str, dtype: str, threads) -> dict:
    """The bare diffusers img2img call on the same source images (already decoded and resized)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from supirkit.datapipe.decode import decode_rgb
    from supirkit.datapipe.devices import resolve_device, resolve_dtype
    from supirkit.datapipe.tario import list_shards, read_shard, sample_image
    from supirkit.negatives.job import PAPER_PROMPT

    dev = resolve_device(device)
    if dev == "cpu" and threads:
        torch.set_num_threads(threads)
    import diffusers.utils

    # newer diffusers name the argument `dtype` and deprecate `torch_dtype` (as SDXLGenerator does)
    dtype_arg = "dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype"
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(model, use_safetensors=True,
                                                            **{dtype_arg: resolve_dtype(dtype, dev)}).to(dev)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for s in read_shard(list_shards(inputs)[0]):
        rgb, _ = decode_rgb(sample_image(s)[1])
        images.append(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    batches = [images[i:i + batch] for i in range(0, count, batch)]

    def call(imgs, seed, pipe=pipe):
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(imgs))]
        return pipe(prompt=[PAPER_PROMPT] * len(imgs), image=imgs, strength=0.5, num_inference_steps=50,
                    guidance_scale=5.0, generator=gens, output_type="np").images

    call(batches[0], 0)  # warm-up, as the stage's first shard
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for j, imgs in enumerate(batches[1:] or batches):
        n += len(call(imgs, 1000 * (j + 1)))
    if dev == "cuda":
        torch.cuda.synchronize()
    el = time.perf_counter() - t0
    del pipe
    return {"images": n, "images_per_s": n / el}


def build_full_sdxl(out_dir: Path | None, tokenizers_from: Path, device: str) -> dict:
    """Full-size SDXL with random weights from its configs (``_full_size.build_sdxl``); saved in fp16 to
    ``out_dir`` unless on meta. Returns the parameter counts."""
    import torch
    from _full_size import build_sdxl, release, save_sdxl_pipeline, tokenizer_ids

    parts = build_sdxl(device, token_ids=tokenizer_ids(tokenizers_from))
    params = parts.parameters()
    if out_dir is not None:
        save_sdxl_pipeline(parts, tokenizers_from, out_dir, torch.float16)
    del parts
    release(torch.device(device))
    return params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=16, help="CPU: images (the first batch is warm-up)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="CPU torch threads (1 is fastest on 2 shared cores)")
    ap.add_argument("--repeats", type=int, default=2, help="CPU: stage/anchor pairs, order alternating; best kept")
    ap.add_argument("--gpu-count", type=int, default=24)
    ap.add_argument("--gpu-batch", type=int, default=8)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from supirkit.tiny.sdxl import build_tiny_sdxl

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_neg_"))
    work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_sdxl(work / "tiny_sdxl")
    report: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__}
    rows = []
    if not args.skip_cpu:
        write_input_shard(work / "in_cpu", args.count, 64)
        # The machine is shared: alternate the order of stage and anchor over repeats and keep the best of
        # each, so that a burst of load from elsewhere does not land on one side only.
        stages, anchors = [], []
        for r in range(args.repeats):
            pair = [lambda: stages.append(run_stage_bench(str(tiny), work / "in_cpu", work / "out_cpu", args.count,
                                                          args.batch, 64, "cpu", "float32", args.threads)),
                    lambda: anchors.append(run_anchor(str(tiny), work / "in_cpu", args.count, args.batch, 64,
                                                      "cpu", "float32", args.threads))]
            for run in (pair if r % 2 == 0 else pair[::-1]):
                run()
        stage = max(stages, key=lambda x: x["images_per_s"])
        anchor = max(anchors, key=lambda x: x["images_per_s"])
        report["cpu_tiny_64px"] = {"stage": stage, "anchor_bare_pipeline": anchor,
                                   "ratio_stage_over_anchor": stage["images_per_s"] / anchor["images_per_s"],
                                   "batch": args.batch, "threads": args.threads, "steps": 50, "strength": 0.5,
                                   "repeats": args.repeats,
                                   "all_images_per_s": {"stage": [x["images_per_s"] for x in stages],
                                                        "anchor": [x["images_per_s"] for x in anchors]}}
        rows.append(("CPU, tiny SDXL, 64 px, fp32", stage, anchor))
    if torch.cuda.is_available():
        full = work / "sdxl_full_random"
        params = build_full_sdxl(full, tiny, "cuda")
        write_input_shard(work / "in_gpu", args.gpu_count, 1024)
        stage = run_stage_bench(str(full), work / "in_gpu", work / "out_gpu", args.gpu_count, args.gpu_batch, 1024,
                                "cuda", "float16", None)
        anchor = run_anchor(str(full), work / "in_gpu", args.gpu_count, args.gpu_batch, 1024, "cuda", "float16", None)
        report["gpu_full_1024px"] = {"device": torch.cuda.get_device_name(0), "params": params, "stage": stage,
                                     "anchor_bare_pipeline": anchor, "batch": args.gpu_batch,
                                     "ratio_stage_over_anchor": stage["images_per_s"] / anchor["images_per_s"]}
        rows.append((f"GPU ({torch.cuda.get_device_name(0)}), full-size SDXL, 1024 px, fp16", stage, anchor))
    else:
        report["gpu_full_1024px"] = "pending: no CUDA device in this run"
        report["full_size_params_meta"] = build_full_sdxl(None, tiny, "meta")

    print("\n| setting | stage images/s | bare pipeline images/s | stage / bare | time inside pipeline |")
    print("|---|---|---|---|---|")
    for name, stage, anchor in rows:
        print(f"| {name} | {stage['images_per_s']:.3f} | {anchor['images_per_s']:.3f} | "
              f"{stage['images_per_s'] / anchor['images_per_s']:.2f} | {100 * stage['pipeline_share']:.1f} % |")
    if not torch.cuda.is_available():
        p = report["full_size_params_meta"]
        print(f"\nGPU: pending (no CUDA device). Full-size components built on the meta device: UNet "
              f"{p['unet'] / 1e9:.3f} B, text encoders {(p['text_encoder'] + p['text_encoder_2']) / 1e6:.0f} M, "
              f"VAE {p['vae'] / 1e6:.1f} M parameters.")
    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "negatives.json").write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {out / 'negatives.json'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
