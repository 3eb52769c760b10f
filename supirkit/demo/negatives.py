"""Demo step: a few negative-quality samples with the tiny SDXL (img2img from the curated shards, local Ray)."""
from __future__ import annotations

import json

from supirkit.datapipe.shard_format import ShardSetLayout


def step(ctx) -> dict:
    from supirkit.demo.caption import input_shards

    source = input_shards(ctx, "negatives_input")
    out = ctx.out / "negatives"
    ctx.cli(["negatives", source, "--out", out, "--fresh", "--count", 8, "--model", ctx.models["sdxl"],
             "--config", "negatives/demo.yaml"])
    summary = json.loads(ShardSetLayout(out).summary_file.read_text())
    return {"shards": str(out), "samples": summary["samples"], "mode": summary["mode"], "input": str(source)}
