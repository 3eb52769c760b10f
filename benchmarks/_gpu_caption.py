"""gpu_check part ``caption``: the whole ``supirkit caption`` job (local executor) with LLaVA-1.5-13B shapes
and random bf16 weights, SDPA attention, a fixed number of new tokens per caption, at two batch sizes;
captions/s and new tokens/s per GPU against ShareGPT4V's 0.32 images/s (``bench_caption.py``'s measurement)."""
from __future__ import annotations

import time

from _gpu_common import Recorder, Sizes, Timed, device_of


def run(rec: Recorder, sizes: Sizes, work) -> None:
    import _full_size
    import torch
    from bench_caption import ANCHOR_IMAGES_PER_S, measure_transformers

    device = device_of(sizes)
    dtype = torch.float32 if sizes.dry else torch.bfloat16
    folder = work / "llava"
    config, processor = _full_size.llava_folder(folder, getattr(_full_size, sizes.llava))
    t = time.perf_counter()
    model = _full_size.build_llava(config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    rec.info(model=f"LLaVA-1.5 layout ({sizes.llava}), random weights, {str(dtype).replace('torch.', '')}, SDPA",
             parameters=params, build_s=round(time.perf_counter() - t, 1), new_tokens=sizes.caption_tokens,
             image_side=sizes.caption_image, anchor_images_per_s=ANCHOR_IMAGES_PER_S)
    previous = None
    for batch in sizes.caption_batches:
        name = f"transformers generate, batch {batch}"
        if previous is not None and not rec.fits(name, 2.5 * previous):
            continue
        with Timed(device) as timed:
            row = measure_transformers(model, processor, folder, batch, sizes.caption_rounds, sizes.caption_image,
                                       sizes.caption_tokens, work, device=str(device), dtype=str(dtype).split(".")[-1])
        previous = timed.s
        rec.case(name, batch=batch, captions=row["captions"], captions_per_s=row["captions_per_s"],
                 new_tokens_per_s=row["tokens_per_s"], x_sharegpt4v=row["ratio_vs_sharegpt4v"],
                 share_generate=row["share_generate"], peak_gib=timed.peak_gib, wall_s=round(timed.s, 1))
