"""Benchmark of the SUPIR model: one training forward+backward per trunk layout, against a plain SDXL UNet step.

Anchor (issue 8): a forward+backward of the bare diffusers ``UNet2DConditionModel`` with every UNet weight
trainable (an ordinary SDXL fine-tuning step), same inputs, same precision and gradient checkpointing, measured
in the same run. The ratio SUPIR / anchor is what SUPIR's training step costs relative to fine-tuning SDXL
itself: the trunk is about half a UNet encoder+middle, the decoder keeps grad-enabled activations, the frozen
encoder runs under no_grad and the frozen weights get no gradient.

* GPU (when CUDA is available): full-size SDXL (configs/model/sdxl_unet.json, random weights) at 512 px
  (latent 64), batch 4, UNet weights in bf16, adaptor in fp32 (master weights) under bf16 autocast, gradient
  checkpointing on; both trunk layouts of configs/model/supir.yaml. Time per step and peak allocated memory.
* CPU (always): the tiny SDXL (supirkit.tiny) at 128 px (latent 16), batch 4, fp32, gradient checkpointing,
  one torch thread; the tiny "released" layout copies the whole encoder, the tiny "trimmed" layout keeps one
  transformer block per level and in the middle (the tiny UNet has [., 2, 3], middle 3). Also prints the
  full-size parameter counts, built on the meta device.

Usage: .venv/bin/python benchmarks/bench_model.py [--steps 5] [--warmup 2] [--batch 4] [--px 512]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))


def make_inputs(unet_config, batch, latent, device, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    c = unet_config
    pooled = c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"]

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return dict(sample=r(batch, 4, latent, latent), t=torch.randint(0, 1000, (batch,), generator=g).to(device),
                ctx=r(batch, 77, c["cross_attention_dim"]),
                added={"text_embeds": r(batch, pooled),
                       "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device=device)},
                lq=r(batch, 4, latent, latent), target=r(batch, 4, latent, latent).float())


def time_steps(step, steps, warmup, device):
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    return {"median_s": times[len(times) // 2], "min_s": times[0], "peak_gib": peak}


def _release(device):
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def anchor_case(unet_factory, x, device, steps, warmup, ctx):
    """The bare UNet with every weight trainable: an ordinary SDXL fine-tuning step."""
    import torch.nn.functional as F

    unet = unet_factory()
    unet.requires_grad_(True).train()
    unet.enable_gradient_checkpointing()

    def step():
        with ctx():
            out = unet(x["sample"], x["t"], x["ctx"], added_cond_kwargs=x["added"]).sample
        F.mse_loss(out.float(), x["target"]).backward()
        unet.zero_grad(set_to_none=True)

    result = time_steps(step, steps, warmup, device)
    result["trainable"] = sum(p.numel() for p in unet.parameters())
    return result


def supir_case(unet_factory, layout, x, device, steps, warmup, ctx):
    import torch
    import torch.nn.functional as F

    from supirkit.model.supir import SUPIRModel, move_to

    model = SUPIRModel.from_unet(unet_factory(), layout)
    move_to(model.adaptor, device, torch.float32).train()  # fp32 master weights, as the training loop keeps them
    model.enable_gradient_checkpointing()

    def step():
        with ctx():
            out = model(x["sample"], x["t"], x["ctx"], x["added"], x["lq"])
        F.mse_loss(out.float(), x["target"]).backward()
        model.adaptor.zero_grad(set_to_none=True)

    result = time_steps(step, steps, warmup, device)
    result["trainable"] = sum(p.numel() for p in model.trainable_parameters())
    return result


def bench(unet_factory, unet_config, layouts, batch, latent, device, steps, warmup, autocast_bf16, dtype):
    """Anchor step and one SUPIR step per layout, each on a freshly built model (peak memory per case)."""
    import torch

    def ctx():
        if autocast_bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    x = make_inputs(unet_config, batch, latent, device, dtype)
    results = {"anchor: SDXL UNet fine-tune step": anchor_case(unet_factory, x, device, steps, warmup, ctx)}
    _release(device)
    for name, layout in layouts.items():
        results[f"SUPIR step, {name} trunk"] = supir_case(unet_factory, layout, x, device, steps, warmup, ctx)
        _release(device)
    return results


def table(title, results):
    anchor = next(v for k, v in results.items() if k.startswith("anchor"))
    lines = [f"**{title}**", "", "| case | trainable params | median s/step | ratio to anchor | peak GiB |",
             "|---|---:|---:|---:|---:|"]
    for k, v in results.items():
        peak = "n/a" if v["peak_gib"] is None else f"{v['peak_gib']:.2f}"
        lines.append(f"| {k} | {v['trainable']:,} | {v['median_s']:.4f} | {v['median_s'] / anchor['median_s']:.2f} "
                     f"| {peak} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--px", type=int, default=512, help="GPU image size (latent = px / 8)")
    p.add_argument("--cpu-px", type=int, default=128)
    args = p.parse_args(argv)

    import torch

    from supirkit.model.config import load_model_config, read_json_config
    from supirkit.model.counts import describe

    report = {"machine": platform.platform(), "torch": torch.__version__, "batch": args.batch,
              "load_average": os.getloadavg()}
    blocks = []

    # ---- full-size counts (meta device)
    mcfg = load_model_config()
    counts = {name: {r.part: r.parameters for r in describe(mcfg, name)} for name in mcfg.trunk.layouts}
    report["full_size_counts"] = counts
    blocks.append("**Full-size parameter counts (meta device)**\n\n| layout | trunk | connectors | trainable |\n"
                  "|---|---:|---:|---:|\n" + "\n".join(
                      f"| {n} | {c['trunk']:,} | {c['connectors']:,} | {c['trunk'] + c['connectors']:,} |"
                      for n, c in counts.items()))

    # ---- CPU, tiny SDXL
    from diffusers import UNet2DConditionModel

    from supirkit.tiny.sdxl import build_tiny_sdxl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_sdxl(Path(tmp) / "sdxl")
        tiny_cfg = json.loads((folder / "unet" / "config.json").read_text())
        cpu = bench(lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), tiny_cfg,
                    {"released": None, "trimmed": {"transformer_depth": [1, 1, 1], "mid_transformer_depth": 1}},
                    args.batch, args.cpu_px // 8, torch.device("cpu"), args.steps, args.warmup,
                    autocast_bf16=False, dtype=torch.float32)
    torch.set_num_threads(threads)
    report["cpu_tiny"] = cpu
    blocks.append(table(f"CPU, tiny SDXL, {args.cpu_px} px, batch {args.batch}, fp32, gradient checkpointing, "
                        "1 thread", cpu))

    # ---- GPU, full size
    if torch.cuda.is_available():
        device = torch.device("cuda")
        unet_cfg = read_json_config(mcfg.sdxl.unet_config)

        def full_unet():
            torch.manual_seed(0)
            with torch.device(device):
                return UNet2DConditionModel.from_config(unet_cfg).to(torch.bfloat16)

        layouts = {n: mcfg.trunk.layouts[n] for n in mcfg.trunk.layouts}
        gpu = bench(full_unet, unet_cfg, layouts, args.batch, args.px // 8, device, args.steps, args.warmup,
                    autocast_bf16=True, dtype=torch.bfloat16)
        report["gpu_full"] = gpu
        report["gpu_name"] = torch.cuda.get_device_name()
        blocks.append(table(f"GPU ({torch.cuda.get_device_name()}), full-size SDXL (random weights), {args.px} px, "
                            f"batch {args.batch}, bf16, gradient checkpointing", gpu))
    else:
        blocks.append("**GPU, full size**: pending (no CUDA device on this machine)")

    blocks.append(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("\n\n".join(blocks))
    out = ROOT / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "model.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nJSON: {out / 'model.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
