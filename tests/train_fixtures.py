"""Helpers for the training tests: small shard sets written with datapipe's ShardSink, and configs."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def textured_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients plus a few rectangles: compresses well, has edges to restore."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * rng.uniform(80, 200, size=3)
    img = base + rng.uniform(0, 50, size=3)
    for _ in range(4):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0:y0 + rng.integers(4, h // 2), x0:x0 + rng.integers(4, w // 2)] = rng.uniform(0, 255, size=3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_shard_set(folder: Path, prefix: str, n_shards: int, per_shard: int, size=(96, 128), seed: int = 0,
                    caption: str = "a photo of a cat") -> list[str]:
    """``n_shards`` shards of ``per_shard`` JPEG samples each (with .json and .txt); returns all keys."""
    from supirkit.datapipe.decode import encode_image
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    rng = np.random.default_rng(seed)
    keys = []
    for s in range(n_shards):
        sink = ShardSink(folder, prefix, s)
        for i in range(per_shard):
            h, w = size
            img = textured_image(rng, h, w)
            key = f"{prefix}{s:02d}x{i:03d}"
            sink.write({"__key__": key, "jpg": encode_image(img, "jpg", 95),
                        "json": {"width": w, "height": h, "caption": caption}, "txt": f"{caption} {i}"})
            keys.append(key)
        sink.commit(UnitStats())
    return keys


def tiny_train_config(tmp: Path, sdxl: str, mixture: list[dict], **sections) -> dict:
    """A tiny training config dict (CPU, 64 px crops), overridable per section."""
    cfg = {
        "stage": "adaptor",
        "output_dir": str(tmp / "run"),
        "model": {"pretrained": str(sdxl), "config": "model/supir.yaml", "lq_encoder": "dr"},
        "data": {"mixture": mixture, "crop": {"size": 64, "hflip_prob": 0.5}, "degrade": "supir",
                 "degrade_overrides": ["hq_size=null", "output.size=hq"], "caption_drop_prob": 0.1,
                 "num_workers": 0},
        "optim": {"lr": 1e-3, "max_grad_norm": 1.0},
        "schedule": {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "lr_scheduler": "constant_with_warmup",
                     "warmup_steps": 1, "seed": 0, "mixed_precision": "no", "gradient_checkpointing": False},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "logging": {"backend": "none", "every_steps": 1},
        "validation": {"every_steps": 0, "loss_batches": 0},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def data_section(mixture: list[dict], **over):
    """A validated TrainDataConfig for stream tests (64 px crops, the supir profile at crop size)."""
    from supirkit.train.config import TrainDataConfig

    values = {"mixture": mixture, "crop": {"size": 64, "hflip_prob": 0.5}, "degrade": "supir",
              "degrade_overrides": ["hq_size=null", "output.size=hq"], "caption_drop_prob": 0.1,
              "num_workers": 0}
    values.update(over)
    return TrainDataConfig.model_validate(values)


def read_trace(run: Path) -> dict[int, list[dict]]:
    """rank -> the per-step records of ``logging.trace`` (last record per step wins: a resumed run
    rewrites the steps after its checkpoint)."""
    import json

    out = {}
    for f in sorted((Path(run) / "trace").glob("rank-*.jsonl")):
        by_step = {}
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
        out[int(f.stem.split("-")[1])] = [by_step[s] for s in sorted(by_step)]
    return out


def reset_accelerate() -> None:
    """In-process runs share accelerate's singleton state: reset it between runs."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
