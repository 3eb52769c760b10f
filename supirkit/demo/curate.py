"""Demo step: curate the generated samples on local Ray (configs/curate/demo.yaml: small images, 256-px
crops): cheap signals as Ray tasks, LAION-style aesthetics from the tiny open_clip + head as a Ray actor."""
from __future__ import annotations

import json

from supirkit.datapipe.shard_format import ShardSetLayout


def step(ctx) -> dict:
    out = ctx.out / "curated"
    argv = ["curate", str(ctx.samples), "--out", str(out), "--config", "curate/demo.yaml", "--fresh"]
    if "clip" in ctx.models and "aesthetic" in ctx.models:
        argv += ["--set", "signals.aesthetic.enabled=true",
                 "--set", f"signals.aesthetic.clip_model={ctx.models['clip']}",
                 "--set", f"signals.aesthetic.head_weights={ctx.models['aesthetic']}"]
    ctx.cli(argv)
    summary = json.loads(ShardSetLayout(out).summary_file.read_text())
    funnel = summary.get("funnel", {})
    return {"shards": str(out), "inputs": funnel.get("inputs"), "accepted": funnel.get("accepted"),
            "samples": summary.get("samples"), "rejected": funnel.get("rejected_by_reason"),
            "scores": summary.get("scores"), "report": summary.get("report")}
