"""Periodic validation on the main process.

* ``val/loss``: the training loss on fixed batches with fixed noise and timesteps (comparable across steps,
  unlike the noisy training loss);
* restoration: a fixed set of LQ images (drawn and degraded once from the mixture, or read from
  ``validation.lq_folder``) restored with the model developer's restorer (``model.restore.SUPIRRestorer``:
  stage-1 image, restoration-guided EDM sampler, colour fix) using the weights being trained; a grid
  LQ | restored | HQ is logged and written to ``validation/step-N.png``;
* metrics from ``supirkit.metrics`` (the same code and conventions as ``supirkit evaluate``): full-reference
  (PSNR, SSIM, LPIPS) where HQ exists, no-reference (MUSIQ, CLIPIQA, ...) on the restored images. Metrics
  whose weights are not present (no download possible) are skipped with one log line.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from supirkit.train.config import TrainConfig
from supirkit.train.seeds import VAL_NOISE_STREAM, VALIDATION_STREAM, seed_for

log = logging.getLogger("supirkit.train")

class MetricSet:
    """The validation metrics, from ``supirkit.metrics`` (the implementation ``supirkit evaluate`` uses, with
    its default conventions): those whose weights are not on this machine are dropped with one log line."""

    def __init__(self, names: list[str], device):
        from supirkit.metrics import build_metrics

        self.suite = build_metrics(names, device=str(device), on_missing="skip") if names else None
        self.skipped: dict[str, str] = dict(self.suite.missing) if self.suite else {}
        if self.skipped:
            log.info("validation metrics skipped (weights not available): %s", "; ".join(self.skipped.values()))

    def __call__(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> dict[str, float]:
        return self.suite.score_pair(restored, reference) if self.suite else {}


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class Validator:
    def __init__(self, cfg: TrainConfig, device, out: Path, indexes=None):
        from supirkit.train.data import MixtureStream, load_restore_config

        self.cfg, self.device, self.out = cfg, device, Path(out)
        v = cfg.validation
        self.restore_cfg = load_restore_config(cfg.data.restore_config, v.restore_overrides)
        # Validation pairs and loss batches come from their own stream: never dropped captions.
        data = cfg.data.model_copy(update={"caption_drop_prob": 0.0})
        self.stream = MixtureStream(data, seed=cfg.schedule.seed, rank=0, world=1, stream=VALIDATION_STREAM,
                                    batch_size=cfg.schedule.batch_size, indexes=indexes)
        self.pairs = self._pairs() if cfg.stage == "adaptor" and v.num_images else []
        self._batches = None
        self._metrics = None

    def _pairs(self) -> list[dict]:
        v = self.cfg.validation
        if v.lq_folder:
            from supirkit.datapipe.shard_format import IMAGE_SUFFIXES

            files = sorted(p for p in Path(v.lq_folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:v.num_images]
            pairs = []
            for p in files:
                hq = None
                if v.hq_folder:
                    matches = sorted(Path(v.hq_folder).glob(p.stem + ".*"))
                    hq = _load_rgb(matches[0]) if matches else None
                pairs.append({"name": p.stem, "lq": _load_rgb(p), "hq": hq, "caption": ""})
            return pairs
        # fixed indices of the validation stream, after the loss batches' samples
        start = v.loss_batches * self.cfg.schedule.batch_size
        pairs = []
        for i in range(start, start + v.num_images):
            s = self.stream.sample(i)
            pairs.append({"name": s["key"], "lq": s["lq"], "hq": s["hq"], "caption": s["caption"]})
        return pairs

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, objective, module, unwrapped, autocast) -> dict[str, float]:
        import torch

        if self._batches is None:
            self._batches = [self.stream.micro_batch(m) for m in range(self.cfg.validation.loss_batches)]
        was_training = unwrapped.training
        unwrapped.eval()
        losses = []
        with torch.no_grad():
            for m, batch in enumerate(self._batches):
                g = torch.Generator().manual_seed(seed_for(self.cfg.schedule.seed, VAL_NOISE_STREAM, m))
                losses.append(float(objective.loss(unwrapped, unwrapped, batch, g, autocast)))
        unwrapped.train(was_training)
        return {"val/loss": float(np.mean(losses))}

    # ------------------------------------------------------------------------------------- restoring
    def restore(self, model, frozen, step: int):
        import torch
        from PIL import Image

        from supirkit.model.restore import SUPIRRestorer

        if self._metrics is None:
            self._metrics = MetricSet(self.cfg.validation.metrics, self.device)
        was_training = model.training
        model.eval()
        restorer = SUPIRRestorer(frozen.vae, frozen.text, model, frozen.schedule, self.restore_cfg, device=self.device)
        rows, per_image = [], []
        try:
            for pair in self.pairs:
                lq = pair["lq"]
                with torch.no_grad():
                    result = restorer.restore(Image.fromarray(lq), prompt=pair["caption"])
                restored = np.asarray(result.image.convert("RGB"), dtype=np.uint8)
                hq = pair["hq"]
                if hq is not None and hq.shape != restored.shape:
                    hq = np.asarray(Image.fromarray(hq).resize(restored.shape[1::-1], Image.BICUBIC))
                per_image.append(self._metrics(restored, hq))
                lq_shown = np.asarray(Image.fromarray(lq).resize(restored.shape[1::-1], Image.BICUBIC))
                rows.append(np.concatenate([lq_shown, restored] + ([hq] if hq is not None else []), axis=1))
        finally:
            model.train(was_training)
        metrics = {}
        for name in sorted({k for d in per_image for k in d}):
            metrics[f"val/{name}"] = float(np.mean([d[name] for d in per_image if name in d]))
        grid = _stack_rows(rows) if rows else None
        if grid is not None:
            folder = self.out / "validation"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(folder / f"step-{step:08d}.png")
        return metrics, grid


def run_validation(validator: Validator, cfg: TrainConfig, objective, module, unwrapped, autocast, step: int):
    """``(values, grid)`` of one validation: the loss on fixed batches and, for the adaptor, restorations
    of the fixed pairs with their metrics (``grid`` is None when nothing was restored)."""
    v = cfg.validation
    values: dict = {}
    grid = None
    if v.loss_batches:
        values.update(validator.loss(objective, module, unwrapped, autocast))
    if cfg.stage == "adaptor" and v.num_images:
        with autocast():
            metrics, grid = validator.restore(unwrapped, objective.frozen, step)
        values.update(metrics)
    return values, grid


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(padded, axis=0)


__all__ = ["Validator", "MetricSet", "run_validation"]
