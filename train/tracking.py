"""Metrics and pictures of a run: the accelerate trackers (TensorBoard, wandb) and ``train_log.jsonl``."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from supirkit.train.config import TrainConfig

log = logging.getLogger("supirkit.train")


class RunLog:
    """Metrics to the accelerate trackers and to ``train_log.jsonl`` (main process)."""

    def __init__(self, accelerator, out: Path, backend: str):
        self.accelerator, self.backend = accelerator, backend
        self.path = out / "train_log.jsonl"
        self.main = accelerator.is_main_process

    def metrics(self, values: dict, step: int) -> None:
        if self.backend != "none":
            self.accelerator.log(values, step=step)
        if self.main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")

    def image(self, tag: str, image, step: int) -> None:
        if not self.main or self.backend == "none":
            return
        try:
            if self.backend == "tensorboard":
                self.accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, image, step, dataformats="HWC")
            elif self.backend == "wandb":
                import wandb

                self.accelerator.get_tracker("wandb", unwrap=True).log({tag: wandb.Image(image)}, step=step)
        except Exception as exc:  # a tracker problem must not stop training
            log.warning("could not log image %s: %s", tag, exc)


def flat_config(cfg: TrainConfig) -> dict:
    """The config as ``section.key -> scalar`` (what trackers show as hyper-parameters)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = json.dumps(value)

    walk("", cfg.model_dump(mode="json"))
    return out


def param_digest(params) -> str:
    """A short hash of parameter values (the determinism trace compares runs with it)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class StepWindow:
    """Losses, data-wait time and throughput since the last log line."""

    def __init__(self) -> None:
        import time

        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.steps = 0
        self.losses: list = []


__all__ = ["RunLog", "flat_config", "param_digest", "StepWindow"]
