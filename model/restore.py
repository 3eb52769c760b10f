"""Restore images with SDXL + a SUPIR adaptor (the library behind ``supirkit restore``).

Per image (official ``SUPIR_model.batchify_sample`` and ``test.py``):

1. resize by ``upscale`` (bicubic), raise the short side to ``min_size``, round to ``size_multiple``;
2. LQ latent ``z = scaling * mode(quant_conv(E_dr(x)))`` with the adaptor's DR encoder (the SDXL encoder
   when the adaptor folder has none, with a warning); stage-1 image ``x1 = D(z)``; guidance target
   ``x_center`` per ``sampler.guidance_latent`` (official: SDXL-encoder *sample* of ``x1``);
3. caption: ``--prompt`` text, else LLaVA on the official caption input (the LQ resized to short side 512,
   rounded to the size multiple, through the DR encoder and the decoder, resized back: ``test.py``'s
   ``PIL2Tensor(fix_resize=512)``, ``batchify_denoise`` and ``Tensor2PIL``; ``captioner.input: stage1``
   captions ``x1`` resized instead), else empty; tags (``prompt.source`` tags/both): ``--tags``, else the
   tagger (``--tagger``) on ``x1``; the shared prompt rule (``model.prompts``) joins them and appends the
   positive prompt; the negative prompt is the unconditional branch;
4. restoration-guided EDM sampling over the whole latent, as the official CLI (``tiling.mode: auto`` falls
   back to tiles when the device runs out of memory; ``always`` tiles any latent larger than one tile),
   decode, colour fix against ``x1``, resize to the upscaled input size, write ``<stem>.png`` (+ a JSON
   sidecar with the caption, prompt and settings).

Where this still differs from the official code, by how much, and which option removes it: docs/restore.md.

One ``torch.Generator`` seeded with ``runtime.seed`` per image drives every random draw (re-encode sample,
initial latent, churn noise), in that order, so a result depends only on the image, the weights and the config.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)



@dataclass
class RestoreResult:
    image: object  # PIL.Image
    caption: str
    prompt: str
    prompt_truncated: bool
    working_size: tuple[int, int]  # (w, h) sampled
    tiled: bool
    tags: tuple = ()  # tag prompts used (prompt.source tags/both)


def working_size(w: int, h: int, upscale: float, min_size: int, multiple: int,
                 fix_short_side: Optional[int] = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """((w0, h0) output size, (w, h) sampling size), as the official ``PIL2Tensor``; with ``fix_short_side``
    (its ``fix_resize``) the short side is then brought to that size and the output size follows it."""
    w, h = w * upscale, h * upscale
    w0, h0 = int(round(w)), int(round(h))
    if min(w, h) < min_size:
        s = min_size / min(w, h)
        w, h = w * s, h * s
    if fix_short_side is not None:
        s = fix_short_side / min(w, h)
        w, h = w * s, h * s
        w0, h0 = int(round(w)), int(round(h))
    ws = max(multiple, int(round(w / multiple)) * multiple)
    hs = max(multiple, int(round(h / multiple)) * multiple)
    return (w0, h0), (ws, hs)


class Captioner:
    """Captions the stage-1 image with captioning's LLaVA backend (the one captioner of the code base), with
    restore's prompt and sampling settings and the run's seed."""

    def __init__(self, model_id: str, config, device, seed: int = 0):
        from supirkit.captioning.backends import TransformersCaptioner
        from supirkit.captioning.config import CaptionModelConfig, CaptionPromptConfig, GenerationConfig

        self.seed = seed
        self.backend = TransformersCaptioner(
            CaptionModelConfig(name=model_id, dtype=config.dtype, device=str(device)),
            CaptionPromptConfig(instruction=config.instruction),
            GenerationConfig(do_sample=config.do_sample, temperature=config.temperature, top_p=config.top_p,
                             max_new_tokens=config.max_new_tokens, seed=seed))

    def __call__(self, image) -> str:
        text = self.backend.caption([image], self.seed)[0].raw
        return " ".join(text.replace("</s>", "").split()).strip()


class SUPIRRestorer:
    """Holds the loaded SDXL parts and the SUPIR model; ``restore(image)`` runs one image."""

    def __init__(self, vae, text_encoders, model, schedule, config, captioner=None, device=None, tagger=None):
        import torch

        from .runtime import apply_runtime_options

        self.vae, self.text, self.model, self.schedule = vae, text_encoders, model, schedule
        self.config = config
        self.captioner = captioner
        self.tagger = tagger  # captioning.tags tagger (prompt.source tags/both), on the stage-1 image
        self.device = device or torch.device("cpu")
        apply_runtime_options(config.runtime, model, vae, self.device)
        from supirkit.model.prompts import PromptAssembler

        self.assembler = PromptAssembler.from_config(config.prompt, text_encoders.tokenizer, logger=log)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, sdxl: str, adaptor_dir, config, captioner: Optional[str] = None) -> "SUPIRRestorer":
        from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

        from supirkit.model.sampler import SigmaSchedule
        from supirkit.model.supir import SUPIRModel, move_to
        from supirkit.model.text import SDXLTextEncoders

        from .runtime import check_runtime_options

        rt = config.runtime
        import torch

        from supirkit.datapipe.devices import resolve_device, resolve_dtype

        device = torch.device(resolve_device(rt.device))
        check_runtime_options(rt, device)  # before loading gigabytes of weights
        dtype = resolve_dtype(rt.dtype, device.type, "float16")  # the official code's precisions
        vae_dtype = resolve_dtype(rt.vae_dtype, device.type, "bfloat16")
        unet = UNet2DConditionModel.from_pretrained(sdxl, subfolder="unet", torch_dtype=dtype).to(device).eval()
        vae = AutoencoderKL.from_pretrained(sdxl, subfolder="vae", torch_dtype=vae_dtype).to(device).eval()
        vae.requires_grad_(False)
        text = SDXLTextEncoders.from_pretrained(sdxl, dtype=dtype, device=device)
        schedule = SigmaSchedule.from_scheduler_config(EulerDiscreteScheduler.load_config(sdxl, subfolder="scheduler"))
        model = SUPIRModel.from_adaptor(unet, adaptor_dir, control_scale=config.sampler.control_scale).eval()
        if model.dr_encoder is not None:
            move_to(model.dr_encoder, device, vae_dtype)
        else:
            log.warning("%s has no dr_encoder/: the LQ latent comes from the plain SDXL VAE encoder", adaptor_dir)
        cap = Captioner(captioner, config.captioner, device, seed=rt.seed) if captioner else None
        from supirkit.captioning.tags import load_tagger

        tagger = load_tagger(config.tagger) if config.prompt.source != "caption" else None
        return cls(vae, text, model, schedule, config, captioner=cap, device=device, tagger=tagger)

    # ------------------------------------------------------------------ steps
    def _to_tensor(self, image, size):
        import numpy as np
        import torch
        from PIL import Image

        img = image.convert("RGB").resize(size, Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device)

    def _encode_lq(self, x):
        import torch

        vae, sf = self.vae, self.vae.config.scaling_factor
        with torch.no_grad():
            if self.model.dr_encoder is not None:
                return self.model.dr_encoder.latent(x.to(vae.dtype), vae).float()
            return vae.encode(x.to(vae.dtype)).latent_dist.mode().float() * sf

    def _decode(self, latent):
        import torch

        with torch.no_grad():
            return self.vae.decode((latent / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float()

    def _guidance_latent(self, z_dr, x_stage1, generator):
        import torch

        kind = self.config.sampler.guidance_latent
        if kind == "dr_latent":
            return z_dr
        with torch.no_grad():
            dist = self.vae.encode(x_stage1.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator=generator) if kind == "reencode_sample" else dist.mode()
        return z.float() * self.vae.config.scaling_factor

    def caption_input(self, image, x_stage1):
        """The image the captioner reads (``captioner.input``): official, the LQ at short side
        ``image_short_side`` through the DR encoder and the decoder, resized back to its rounded size and
        truncated to 8 bits (``Tensor2PIL``); stage1, the stage-1 image resized to that short side."""
        from PIL import Image

        cfg = self.config
        short = cfg.captioner.image_short_side
        if cfg.captioner.input == "official":
            (w1, h1), size = working_size(*image.size, cfg.image.upscale, cfg.image.min_size,
                                          cfg.image.size_multiple, fix_short_side=short)
            clean = self._decode(self._encode_lq(self._to_tensor(image, size)))
            return tensor_to_pil_truncated(clean, (w1, h1))
        img = tensor_to_pil(x_stage1)
        s = short / min(img.size)
        return img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.BICUBIC)

    def caption(self, image, x_stage1) -> str:
        if self.captioner is None:
            return ""
        return self.captioner(self.caption_input(image, x_stage1))

    def tag(self, x_stage1) -> list[str]:
        return self.tagger([tensor_to_pil(x_stage1)])[0] if self.tagger is not None else []

    def restore(self, image, prompt: Optional[str] = None, seed: Optional[int] = None,
                tags: Optional[list[str]] = None, on_progress=None) -> RestoreResult:
        import torch
        import torch.nn.functional as F

        from supirkit.model.colorfix import color_fix
        from supirkit.model.prompts import prompt_text
        from supirkit.model.sampler import Conditioning, RestoreEDMSampler, SamplerSettings
        from supirkit.model.text import time_ids

        cfg = self.config
        (w0, h0), (w, h) = working_size(*image.size, cfg.image.upscale, cfg.image.min_size, cfg.image.size_multiple)
        generator = torch.Generator("cpu").manual_seed(cfg.runtime.seed if seed is None else seed)
        x = self._to_tensor(image, (w, h))
        z_dr = self._encode_lq(x)
        x_stage1 = self._decode(z_dr)
        x_center = self._guidance_latent(z_dr, x_stage1, generator)

        source = cfg.prompt.source
        caption = prompt if prompt is not None else (self.caption(image, x_stage1) if source != "tags" else "")
        if tags is None:
            tags = self.tag(x_stage1) if source != "caption" else []
        assembled = self.assembler(prompt_text(caption, tags, source, cfg.prompt.separator))
        embeds, pooled = self.text.encode([assembled.text, cfg.prompt.negative])
        ids = time_ids(cfg.micro_conditioning.time_ids(), 1, device=self.device)
        cond = Conditioning(embeds[:1], pooled[:1], ids, z_dr)
        uncond = Conditioning(embeds[1:], pooled[1:], ids, z_dr)

        settings = SamplerSettings.from_config(cfg.sampler)
        sampler = RestoreEDMSampler(self.schedule, settings)
        latent = sampler.initial_latent(z_dr.shape, generator).to(self.device)
        latent, tiled = self._sample(sampler, latent, cond, uncond, x_center, generator, on_progress)
        out = color_fix(self._decode(latent), x_stage1, cfg.image.color_fix)
        if (w, h) != (w0, h0):
            out = F.interpolate(out, size=(h0, w0), mode="bicubic", align_corners=False)
        return RestoreResult(tensor_to_pil(out), caption, assembled.text, assembled.truncated, (w, h), tiled,
                             tuple(tags))

    def _sample(self, sampler, latent, cond, uncond, x_center, generator, on_progress=None):
        """(latent, tiled): the whole latent at once (``tiling.mode`` auto/never; the official CLI never tiles),
        or in tiles (``always``, when it exceeds one tile; ``auto``, when the device runs out of memory: then
        sampling starts again from the same generator state, so the result is the tiled one exactly)."""
        import torch

        from supirkit.model.sampler import supir_eps_fn

        t = self.config.tiling
        eps_fn = supir_eps_fn(self.model)

        def tiles():
            return sampler.sample_tiled(eps_fn, latent, cond, uncond, x_center, generator, t.tile_size,
                                        t.tile_stride, weights=t.weights, on_progress=on_progress)

        fits_one_tile = max(latent.shape[-2:]) <= t.tile_size
        if t.mode == "always" and not fits_one_tile:
            return tiles(), True
        state = generator.get_state()
        try:
            return sampler.sample(eps_fn, latent, cond, uncond, x_center, generator, on_progress=on_progress), False
        except torch.OutOfMemoryError:
            if t.mode == "never" or fits_one_tile:
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("restore: out of memory for the %dx%d latent in one piece; sampling in %d-px tiles",
                    latent.shape[-1], latent.shape[-2], t.tile_size)
        generator.set_state(state)
        return tiles(), True


def tensor_to_pil_truncated(x, size):
    """The official ``Tensor2PIL``: bicubic to ``size`` (w, h), then ``x * 127.5 + 127.5`` clipped and
    *truncated* to 8 bits (``astype(np.uint8)``, not rounded)."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    w, h = size
    x = F.interpolate(x.float(), size=(h, w), mode="bicubic")
    arr = (x[0].permute(1, 2, 0) * 127.5 + 127.5).cpu().numpy().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def tensor_to_pil(x):
    import numpy as np
    from PIL import Image

    arr = (x[0].float().permute(1, 2, 0).cpu().numpy() * 127.5 + 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def restore_images(images, out_dir, sdxl: str, adaptor, config, captioner: Optional[str] = None,
                   prompt: Optional[str] = None, restorer: Optional[SUPIRRestorer] = None,
                   tags: Optional[list[str]] = None) -> list[Path]:
    """Restore each image file into ``out_dir/<stem>.png`` (+ ``<stem>.json``); returns the PNG paths."""
    from PIL import Image

    images = [Path(p) for p in images]
    seen: dict[str, Path] = {}
    for path in images:  # outputs are named by stem: a second image of the same stem would overwrite the first
        if path.stem in seen:
            raise ValueError(f"{seen[path.stem]} and {path} would both be written as {path.stem}.png: "
                             "restore them into separate --out folders")
        seen[path.stem] = path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    restorer = restorer or SUPIRRestorer.load(sdxl, adaptor, config, captioner=captioner)
    written = []
    progress = ImageStepProgress(len(images), config.sampler.num_steps)
    for path in images:
        path = Path(path)
        with Image.open(path) as im:
            im.load()
            with progress.image(path.name) as on_step:
                result = restorer.restore(im, prompt=prompt, tags=tags, on_progress=on_step)
        target = out / f"{path.stem}.png"
        result.image.save(target)
        meta = {"source": str(path), "caption": result.caption, "tags": list(result.tags), "prompt": result.prompt,
                "prompt_truncated": result.prompt_truncated, "working_size": list(result.working_size),
                "output_size": list(result.image.size), "tiled": result.tiled,
                "config": config.model_dump(mode="json")}
        target.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        log.info("%s -> %s (%dx%d)", path, target, *result.image.size)
        written.append(target)
    progress.close()
    return written


class ImageStepProgress:
    """Images done and the sampler's steps of the current one: two bars on a terminal, else a line per image
    and a line every few seconds within one."""

    def __init__(self, images: int, steps: int, log_every_s: float = 5.0) -> None:
        import sys

        self.images, self.steps, self.every = images, steps, log_every_s
        self.done = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=images, desc="restore", unit="image", file=sys.stderr)

    @contextmanager
    def image(self, name: str):
        import sys
        import time

        step_bar = None
        if self.bar is not None:
            from tqdm import tqdm

            step_bar = tqdm(total=self.steps, desc=name, unit="step", leave=False, file=sys.stderr)
        t0 = last = time.monotonic()

        def on_step(done: int, total: int) -> None:
            nonlocal last
            if step_bar is not None:
                step_bar.update(1)
            elif time.monotonic() - last >= self.every:
                last = time.monotonic()
                print(f"[restore] {name}: step {done}/{total}", file=sys.stderr, flush=True)

        try:
            yield on_step
        finally:
            self.done += 1
            if step_bar is not None:
                step_bar.close()
                self.bar.update(1)
            else:
                print(f"[restore] {self.done}/{self.images} images, {name} in {time.monotonic() - t0:.1f}s",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
