"""gpu_check part ``restore``: ``model.restore.SUPIRRestorer`` on full-size SDXL + the released SUPIR adaptor
(random weights, fp16 UNet and adaptor, bf16 VAE, as ``configs/restore/default.yaml`` runs on CUDA): one 1024-px
image and one 2048-px image (tiled sampling), 50 steps; seconds and peak memory. Then the options of
``model/runtime.py`` at 1024 px (each attention kernel, channels-last, regional ``torch.compile``) and VAE tiling
at 2048 px (encode + decode of the VAE, where tiling acts)."""
from __future__ import annotations

from _gpu_common import Recorder, Sizes, Timed, device_of

ATTENTION_CASES = ("flash", "efficient", "cudnn", "math")


def build_restorer(sizes: Sizes, work):
    """The restorer on models built from configs (no files): what ``SUPIRRestorer.load`` would hold."""
    import torch
    from _full_size import SDXLConfigs, build_sdxl, tokenizer_ids
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig, load_model_config
    from supirkit.model.dr_encoder import DegradationRobustEncoder
    from supirkit.model.restore import SUPIRRestorer
    from supirkit.model.sampler import SigmaSchedule
    from supirkit.model.supir import SUPIRModel
    from supirkit.model.text import SDXLTextEncoders
    from supirkit.tiny.sdxl import build_tiny_sdxl

    device = device_of(sizes)
    cfg = load_config(RestoreConfig, "restore/default.yaml",
                      [f"sampler.num_steps={sizes.restore_steps}", *sizes.restore_overrides])
    dtype = torch.float32 if sizes.dry else torch.float16  # runtime.dtype auto
    vae_dtype = torch.float32 if sizes.dry else torch.bfloat16  # runtime.vae_dtype auto
    tiny = build_tiny_sdxl(work / "tiny_sdxl")  # tokenizers and scheduler config
    configs = SDXLConfigs.from_folder(tiny) if sizes.dry else SDXLConfigs.full()
    parts = build_sdxl(device, configs, token_ids=tokenizer_ids(tiny))
    vae = parts.vae.to(vae_dtype).eval().requires_grad_(False)
    mcfg = load_model_config()
    dr = DegradationRobustEncoder.from_vae(vae)
    model = SUPIRModel.from_unet(parts.unet.to(dtype).eval(), mcfg.trunk.layouts["released"], dr_encoder=dr,
                                 sft_hidden_channels=mcfg.connectors.sft_hidden_channels,
                                 cross_attn_head_dim=mcfg.connectors.cross_attn_head_dim).eval()
    text = SDXLTextEncoders(CLIPTokenizer.from_pretrained(str(tiny / "tokenizer")),
                            CLIPTokenizer.from_pretrained(str(tiny / "tokenizer_2")),
                            parts.text_encoder.to(dtype).eval(), parts.text_encoder_2.to(dtype).eval())
    schedule = SigmaSchedule.from_scheduler_config(EulerDiscreteScheduler.load_config(str(tiny), subfolder="scheduler"))
    return SUPIRRestorer(vae, text, model, schedule, cfg, device=device), cfg


def _image(side: int):
    import _images
    from PIL import Image

    return Image.fromarray(_images.photo_like(side, side, shapes=True))


def restore_case(rec, restorer, image, name: str, estimate_s: float, **extra):
    if not rec.fits(name, estimate_s):
        return None
    with Timed(restorer.device) as timed:
        result = restorer.restore(image, prompt="")
    return rec.case(name, side=image.size[0], tiled=result.tiled, seconds=round(timed.s, 2), peak_gib=timed.peak_gib,
                    **extra)


def vae_case(rec, restorer, side: int, name: str):
    """Encode + decode of the VAE at ``side`` (the guidance re-encode and the final decode of a restore)."""
    import torch

    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side)).to(restorer.device) * 2 - 1
    try:
        with Timed(restorer.device) as timed:
            z = restorer._guidance_latent(None, x, torch.Generator("cpu").manual_seed(0))
            restorer._decode(z)
    except torch.OutOfMemoryError:
        return rec.case(name, side=side, error="out of memory")
    return rec.case(name, side=side, seconds=round(timed.s, 2), peak_gib=timed.peak_gib)


def run(rec: Recorder, sizes: Sizes, work) -> None:
    import torch

    from supirkit.model.runtime import RuntimeOptions, apply_runtime_options

    restorer, cfg = build_restorer(sizes, work)
    small, large = sizes.restore_sides
    rec.info(layout="released", steps=cfg.sampler.num_steps, tile=[cfg.tiling.tile_size, cfg.tiling.tile_stride],
             precision="UNet + adaptor fp16, VAE bf16" if not sizes.dry else "fp32 (CPU)")
    img_small, img_large = _image(small), _image(large)
    warm = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"num_steps": 2})})
    restorer.config = warm
    restorer.restore(img_small, prompt="")  # warm-up: kernel selection, allocator
    restorer.config = cfg
    base = restore_case(rec, restorer, img_small, f"{small} px, defaults", 60)
    if base is None:
        return
    tiles = (large // small * 2 - 1) ** 2  # tile stride is half a tile
    # tiled on purpose (the default samples untiled, as the official CLI, and tiles only when memory runs out)
    restorer.config = cfg.model_copy(update={"tiling": cfg.tiling.model_copy(update={"mode": "always"})})
    restore_case(rec, restorer, img_large, f"{large} px, tiled (tiling.mode=always)", 1.3 * tiles * base["seconds"] + 5)
    restorer.config = cfg

    def options_case(options, label: str, estimate: float, image=img_small):
        if options is not None:
            apply_runtime_options(options, restorer.model, restorer.vae, restorer.device)
        try:
            row = restore_case(rec, restorer, image, label, estimate)
        except RuntimeError as exc:  # a pinned kernel that cannot run these shapes says so
            return rec.case(label, error=str(exc).splitlines()[0][:200])
        if row is not None:
            row["x_defaults"] = round(base["seconds"] / row["seconds"], 3)
            rec.flush()
        return row

    device = restorer.device
    for kernel in ATTENTION_CASES:
        if device.type != "cuda" and kernel in ("efficient", "cudnn"):
            continue
        options_case(RuntimeOptions(attention=kernel), f"{small} px, attention={kernel}", 2 * base["seconds"] + 5)
    options_case(RuntimeOptions(), f"{small} px, defaults again", 1.5 * base["seconds"] + 5)
    options_case(RuntimeOptions(channels_last=True), f"{small} px, channels_last", 1.5 * base["seconds"] + 5)
    for module in (restorer.model, restorer.vae):  # back to the default layout for the cases below
        module.to(memory_format=torch.contiguous_format)
    vae_case(rec, restorer, large, f"VAE encode + decode {large} px, untiled")
    apply_runtime_options(RuntimeOptions(vae_tiling=True), restorer.model, restorer.vae, device)
    vae_case(rec, restorer, large, f"VAE encode + decode {large} px, vae_tiling")
    restorer.vae.disable_tiling()
    compile_options = RuntimeOptions(compile_unet=True, compile_backend="eager" if sizes.dry else "inductor")
    first = options_case(compile_options, f"{small} px, compile_unet (first image: compiles)",
                         90 if not sizes.dry else 10)
    if first is not None and "seconds" in first:
        options_case(None, f"{small} px, compile_unet (compiled)", 1.5 * base["seconds"] + 5)
