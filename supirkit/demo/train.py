"""Demo step: a short two-process CPU training run (accelerate on gloo) of the adaptor on the tiny SDXL,
fed by the curated shards (with their captions, when the caption step ran) and the negatives, mixed by weight
(configs/train/demo.yaml). Rerunning the demo continues the run (``--resume latest``)."""
from __future__ import annotations

import json

from supirkit.datapipe.captions import is_shard_set


def _shards(ctx, name: str):
    shards = (ctx.outputs.get(name) or {}).get("shards")
    return shards if shards and is_shard_set(shards) else None


def step(ctx) -> dict:
    import yaml

    from supirkit.datapipe.config import CONFIG_ROOT

    # the captioned shards are the curated ones plus LLaVA captions: train on those when they exist
    hq = _shards(ctx, "caption") or _shards(ctx, "curate")
    if hq is None:
        from supirkit.demo.caption import input_shards

        hq = str(input_shards(ctx, "train_input"))
    cfg = yaml.safe_load((CONFIG_ROOT / "train" / "demo.yaml").read_text(encoding="utf-8"))
    mixture = [{**cfg["data"]["mixture"][0], "shards": hq}]
    negatives = _shards(ctx, "negatives")
    if negatives:
        mixture.append({**cfg["data"]["mixture"][1], "shards": negatives})
    cfg["data"]["mixture"] = mixture
    cfg["model"]["pretrained"] = str(ctx.models["sdxl"])
    out = ctx.out / "train"
    cfg["output_dir"] = str(out)
    path = ctx.out / "train.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    ctx.cli(["train", "--config", path, "--accelerate-config", "cpu_2proc", "--resume", "latest"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in log if "train/loss" in r]
    val = [r for r in log if "val/loss" in r]
    training = json.loads((out / "adaptor" / "training.json").read_text())
    return {
        "adaptor": str(out / "adaptor"),
        "processes": 2,
        "steps": training["step"],
        "mixture": "+".join(m["name"] for m in mixture),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "val_psnr": round(val[-1].get("val/psnr", float("nan")), 2) if val else None,
        "checkpoints": len(list((out / "checkpoints").glob("step-*"))),
        "logs": str(out / "logs"),
    }
