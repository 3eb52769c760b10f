"""Demo step: caption the curated shards with the tiny LLaVA, one model replica in a local Ray actor. The
captions go to a caption set (a table per shard, keyed by sample key), which inspect and train read with the
curated shards."""
from __future__ import annotations

import json
from pathlib import Path

from supirkit.datapipe.shard_format import ShardSetLayout


def input_shards(ctx, fallback_name: str) -> Path:
    """The curate step's shards (``ctx.outputs['curate']['shards']``), else ``ctx.out/curated`` when an earlier
    run left shards there, else the sample folder packed into shards as it is."""
    shards = (ctx.outputs.get("curate") or {}).get("shards")
    if shards and any(Path(shards).glob("*.tar")):
        return Path(shards)
    curated = ctx.out / "curated"
    if any(curated.glob("*.tar")):
        return curated
    packed = ctx.out / fallback_name
    ctx.cli(["shard", ctx.samples, "--out", packed, "--fresh", "--set", "runner.executor=local"])
    return packed


def step(ctx) -> dict:
    import pyarrow.parquet as pq

    shards = input_shards(ctx, "caption_input")
    out = ctx.out / "captioned"
    argv = ["caption", shards, "--out", out, "--fresh", "--model", ctx.models["llava"],
            "--config", "caption/demo.yaml"]
    if "sdxl" in ctx.models:  # count tokens with the (tiny) SDXL pipeline's own CLIP tokenizer
        argv += ["--set", f"tokens.tokenizer={ctx.models['sdxl']}"]
    ctx.cli(argv)
    layout = ShardSetLayout(out)
    summary = json.loads(layout.summary_file.read_text())
    report = summary.get("caption", {})
    example = ""
    # a caption set: one caption table per curated shard, keyed by sample key (the images stay where they are)
    for table in sorted(layout.captions_dir.glob("*.parquet")):
        column = pq.read_table(table, columns=["txt"]).column(0).to_pylist()
        if column:
            example = (column[0] or "")[:48]
            break
    return {"shards": str(out), "input": str(shards), "captions": report.get("captions"),
            "skipped": sum(summary["rejected"].values()), "clip_tokens_mean": report.get("clip_tokens_mean"),
            "token_count": report.get("clip_tokens_method"), "example": example}
