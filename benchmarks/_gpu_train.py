"""gpu_check part ``train``: the full SUPIR adaptor training step at 512 px (``_full_size.TrainingStep``: VAE
encode, DR-encoder latent, both text encoders, controlled UNet forward + backward, clipping, AdamW, EMA) for the
released and the trimmed trunk, at batch 4 and at the largest batch that fits, with gradient checkpointing on
and off; samples/s and peak memory. Then the attention and memory options (``model/runtime.py``) on the
trimmed layout, and the loader cores each GPU needs: measured samples/s per GPU / the training loader's
samples per CPU-second (``bench_train.py``'s loader, measured on this machine's CPU)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from _gpu_common import Recorder, Sizes, device_of, total_memory_gib

ATTENTION_CASES = ("flash", "efficient", "cudnn", "math")


def loader_rate(rec: Recorder, sizes: Sizes) -> dict:
    """Samples per CPU-second of ``train.data.MixtureStream`` (1024-px JPEG q95 shards, 512 crop, the supir
    degradation), one thread, as ``bench_train.py`` measures it."""
    import bench_train
    import cv2
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_loader_") as tmp:
            root = Path(tmp)
            side = 1024 if not sizes.dry else 640
            bench_train.write_set(root / "hq", "hq", 1, 8, side, seed=1)
            bench_train.write_set(root / "faces", "fc", 1, 2, side, seed=2)
            bench_train.write_set(root / "neg", "ng", 1, 2, side, seed=3)
            rates = bench_train.loader_per_core(root, sizes.loader_rounds, 4)
    finally:
        torch.set_num_threads(threads)
    return rec.case("training loader, 1 thread (bench_train.py)", samples=rates["samples"],
                    samples_per_cpu_s=round(rates["per_cpu_s"], 2), samples_per_s=round(rates["per_s_wall"], 2))


def largest_batch(rec, step, small: dict, large: dict, sizes: Sizes, label: str, total: float | None):
    """Plan the largest batch from a linear memory model (peak = fixed + per-sample x batch, from two measured
    batches) at ``memory_share`` of the GPU, run it, and back off 20 % after an out-of-memory. Without peak
    figures (CPU) the batch is twice the measured one."""
    if total is None or small.get("peak_gib") is None or large["batch"] == small["batch"]:
        batch = 2 * large["batch"]
    else:
        per = max((large["peak_gib"] - small["peak_gib"]) / (large["batch"] - small["batch"]), 1e-3)
        fixed = small["peak_gib"] - per * small["batch"]
        batch = max(large["batch"], int((sizes.memory_share * total - fixed) / per) // 4 * 4)
    for _ in range(3):
        name = f"{label}, batch {batch} (largest that fits)"
        steps, warmup = min(2, sizes.train_steps), min(1, sizes.train_warmup)
        # warm-up + timed steps at this batch, from the per-sample time of the larger measured batch
        if not rec.fits(name, 1.3 * (warmup + steps) * large["median_s_per_step"] * batch / large["batch"] + 10):
            return None
        r = step.measure(batch, steps=steps, warmup=warmup, px=sizes.train_px)
        if not r.get("oom"):
            return rec.case(name, **_row(r, step))
        rec.note(f"{label}: batch {batch} ran out of memory")
        batch = max(large["batch"], int(batch * 0.8) // 4 * 4)
    return None


def _row(r: dict, step) -> dict:
    return {"layout": step.layout, "batch": r["batch"], "checkpointing": r["checkpointing"],
            "s_per_step": round(r["median_s_per_step"], 4), "samples_per_s": round(r["samples_per_s"], 3),
            "peak_gib": None if r["peak_gib"] is None else round(r["peak_gib"], 2),
            "options": ", ".join(_options(step)) or "defaults"}


def _options(step) -> list[str]:
    o = step.options
    out = [f"attention={o.attention}"] if o.attention != "sdpa" else []
    out += [k for k in ("channels_last", "vae_slicing", "compile_unet") if getattr(o, k)]
    return out


def layout_cases(rec, step, sizes: Sizes) -> dict:
    """Batch `train_batch` and the largest batch, checkpointing on then off; returns the measured rows."""
    rows = {}
    b = sizes.train_batch
    for on in (True, False):
        step.checkpointing(on)
        label = f"{step.layout} trunk, checkpointing {'on' if on else 'off'}"
        small = step.measure(b, sizes.train_steps, sizes.train_warmup, sizes.train_px)
        if small.get("oom"):
            rec.note(f"{label}: batch {b} ran out of memory")
            continue
        rows[(on, b)] = rec.case(f"{label}, batch {b}", **_row(small, step))
        large = small
        if small["peak_gib"] is not None:  # a second point for the memory model (GPU only)
            if not rec.fits(f"{label}, batch {2 * b}", 4 * small["median_s_per_step"] * 2 + 5):
                continue
            large = step.measure(2 * b, max(2, sizes.train_steps // 2), 1, sizes.train_px)
            if large.get("oom"):
                continue
            rec.case(f"{label}, batch {2 * b}", **_row(large, step))
        top = largest_batch(rec, step, small, large, sizes, label, total_memory_gib(step.device))
        if top is not None:
            rows[(on, "max")] = top
    step.checkpointing(True)
    return rows


def option_cases(rec, step, sizes: Sizes, base: dict) -> None:
    """Each attention kernel, channels-last and VAE slicing against the defaults (checkpointing on)."""
    from supirkit.model.runtime import RuntimeOptions

    b = sizes.train_batch
    kernels = [k for k in ATTENTION_CASES if not (step.device.type != "cuda" and k in ("efficient", "cudnn"))]
    cases = [RuntimeOptions(attention=k) for k in kernels] + [RuntimeOptions(channels_last=True),
                                                              RuntimeOptions(channels_last=True, vae_slicing=True)]
    for options in cases:
        step.apply(options)
        name = f"{step.layout} trunk, checkpointing on, batch {b}, " + ", ".join(_options(step))
        if not rec.fits(name, (sizes.train_steps + sizes.train_warmup) * base["s_per_step"] * 1.5 + 5):
            break
        try:
            r = step.measure(b, sizes.train_steps, sizes.train_warmup, sizes.train_px)
        except RuntimeError as exc:  # a pinned kernel that cannot run these shapes says so
            step.optimizer.zero_grad(set_to_none=True)
            rec.case(name, error=str(exc).splitlines()[0][:200])
            continue
        if not r.get("oom"):
            rec.case(name, **_row(r, step), x_defaults=round(r["samples_per_s"] / base["samples_per_s"], 3))
    step.apply(RuntimeOptions())


def run(rec: Recorder, sizes: Sizes, work) -> None:
    import torch
    from _full_size import SDXLConfigs, TrainingStep

    from supirkit.tiny.sdxl import build_tiny_sdxl

    device = device_of(sizes)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the training config (schedule.allow_tf32)
        torch.backends.cudnn.allow_tf32 = True
    loader = loader_rate(rec, sizes)
    configs = SDXLConfigs.from_folder(build_tiny_sdxl(work / "tiny_sdxl")) if sizes.dry else SDXLConfigs.full()
    rec.info(px=sizes.train_px, precision="bf16 autocast (UNet, VAE, text encoders bf16; adaptor fp32 master)",
             optimizer="AdamW + EMA, clip 1.0", total_memory_gib=total_memory_gib(device))
    measured = {}
    for i, (name, layout) in enumerate(sizes.train_layouts):
        if not rec.fits(f"{name} trunk: build", 30 if not sizes.dry else 5):
            break
        step = TrainingStep(device, layout, configs, label=name)
        rec.info(**{f"trainable_{name}": step.trainable()})
        measured[name] = layout_cases(rec, step, sizes)
        if i == len(sizes.train_layouts) - 1 and (True, sizes.train_batch) in measured[name]:
            option_cases(rec, step, sizes, measured[name][(True, sizes.train_batch)])
        step.close()
        del step
    for layout, rows in measured.items():
        for key, label in (((True, sizes.train_batch), f"batch {sizes.train_batch}"), ((True, "max"), "largest batch")):
            if key in rows:
                rate = rows[key]["samples_per_s"]
                rec.case(f"loader cores per GPU, {layout} trunk, {label}", gpu_samples_per_s=rate,
                         loader_samples_per_cpu_s=loader["samples_per_cpu_s"],
                         cores_per_gpu=round(rate / loader["samples_per_cpu_s"], 2))
