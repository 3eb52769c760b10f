"""gpu_check part ``negatives``: ``supirkit negatives`` (SDXL img2img, strength 0.5, 50 scheduler steps, CFG 5,
local executor) on full-size SDXL built from its configs with random weights, saved in fp16 and loaded back
through ``from_pretrained``; images/s per GPU after a warm-up shard (``bench_negatives.py``'s measurement)."""
from __future__ import annotations

import time

from _gpu_common import Recorder, Sizes, Timed, device_of


def run(rec: Recorder, sizes: Sizes, work) -> None:
    import torch
    from _full_size import SDXLConfigs, build_sdxl, release, save_sdxl_pipeline, tokenizer_ids
    from bench_negatives import run_stage_bench, write_input_shard

    from supirkit.tiny.sdxl import build_tiny_sdxl

    device = device_of(sizes)
    tiny = build_tiny_sdxl(work / "tiny_sdxl")  # its tokenizers stand in for SDXL's (ids feed random weights)
    configs = SDXLConfigs.from_folder(tiny) if sizes.dry else SDXLConfigs.full()
    t = time.perf_counter()
    parts = build_sdxl(device, configs, token_ids=tokenizer_ids(tiny))
    params = parts.parameters()
    folder = save_sdxl_pipeline(parts, tiny, work / "sdxl", torch.float16)
    del parts
    release(device)
    rec.info(model="SDXL base 1.0 shapes, random weights, saved fp16" + (" (tiny)" if sizes.dry else ""),
             parameters=params, build_and_save_s=round(time.perf_counter() - t, 1), side=sizes.negatives_size,
             strength=0.5, scheduler_steps=sizes.negatives_steps, guidance_scale=5.0)
    write_input_shard(work / "neg_in", sizes.negatives_count, sizes.negatives_size)
    dtype = "float32" if sizes.dry else "float16"
    with Timed(device) as timed:
        stage = run_stage_bench(str(folder), work / "neg_in", work / "neg_out", sizes.negatives_count,
                                sizes.negatives_batch, sizes.negatives_size, str(device), dtype, None,
                                steps=sizes.negatives_steps)
    rec.case(f"img2img {sizes.negatives_size} px, batch {sizes.negatives_batch}, {dtype}",
             batch=sizes.negatives_batch, images_timed=stage["images"], images_per_s=round(stage["images_per_s"], 4),
             pipeline_share=round(stage["pipeline_share"], 4), setup_and_warmup_s=round(stage["setup_and_warmup_s"], 1),
             peak_gib=timed.peak_gib, wall_s=round(timed.s, 1))
