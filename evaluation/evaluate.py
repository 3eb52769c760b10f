"""``supirkit evaluate PRED --ref REF --out DIR``: score restored images against references matched by key.

Every number comes from ``supirkit.metrics`` (one implementation per metric, the conventions stated in
every output). Metrics are built first, from local files only: weights that are missing are reported
(one line per metric, with where to get them) before any image is read. Outputs in DIR:

* ``per_image.parquet``: one row per evaluated image (key, sources, size, one column per metric, error);
* ``summary.csv``: one row per metric (mean, median, std, count, failures, better direction, convention);
* ``summary.md``: the table in the layout of the papers' tables (one row per method, one column per
  metric with its arrow) and the conventions under it;
* ``report.html``: the best and worst images of each metric as side-by-side crops;
* ``summary.json``: counts, unmatched keys, throughput per metric, the config.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from supirkit.datapipe.config import DecodingConfig, Schema, config_hash
from supirkit.evaluation.images import ImageReader, fit_to_reference, index_images
from supirkit.metrics.conventions import DEFAULT_PRESET, FidelityConvention, preset

STAGE = "evaluate"
DEFAULT_METRICS = ["psnr", "ssim", "lpips", "dists", "musiq", "maniqa", "clipiqa", "niqe"]


class MetricOptions(Schema):
    names: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1,
                             description="psnr, ssim (supirkit.metrics) and any pyiqa metric name")
    conventions: dict[Literal["psnr", "ssim"], FidelityConvention] = Field(
        default_factory=lambda: preset(DEFAULT_PRESET), description="how PSNR and SSIM are measured")
    options: dict[str, dict] = Field(default_factory=dict, description="constructor arguments per pyiqa metric, "
                                     "e.g. {niqe: {pretrained_model_path: /weights/niqe.mat}}")
    pretrained: bool = Field(True, description="false: random weights built from each architecture (tests, "
                                               "throughput checks); the scores then mean nothing")
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    batch_size: int = Field(8, ge=1, description="images per network call (same-size images are batched)")

    @field_validator("conventions")
    @classmethod
    def _both(cls, v):
        return {**preset(DEFAULT_PRESET), **v}


class MatchOptions(Schema):
    pred_suffix: str = Field("", description="removed from restored file stems before matching, e.g. _out")
    size_mismatch: Literal["error", "resize"] = Field(
        "error", description="restored and reference sizes differ: record the image as failed, or resize the "
                             "restored image to the reference (bicubic) first")


class ReportOptions(Schema):
    method: Optional[str] = Field(None, description="row name in the summary table; null: PRED's folder name")
    examples: int = Field(3, ge=0, le=20, description="best and worst images shown per metric in report.html")
    crop: int = Field(192, ge=16, description="side of the crops shown (where restored and reference differ most)")


class EvaluateConfig(DecodingConfig):
    metrics: MetricOptions = MetricOptions()
    match: MatchOptions = MatchOptions()
    report: ReportOptions = ReportOptions()


@dataclass
class EvaluateResult:
    out: Path
    evaluated: int
    failed: int
    summary: list[dict]
    missing_pred: list[str] = field(default_factory=list)
    missing_ref: list[str] = field(default_factory=list)
    dropped_metrics: list[str] = field(default_factory=list)


def _prepare(pred: str, ref: Optional[str], cfg: EvaluateConfig):

    preds = index_images(pred, cfg.match.pred_suffix)
    refs = index_images(ref) if ref else None
    if refs is None:
        keys = sorted(preds.by_key)
        return preds, refs, keys, [], []
    keys = sorted(set(preds.by_key) & set(refs.by_key))
    missing_pred = sorted(set(refs.by_key) - set(preds.by_key))  # references nobody restored
    missing_ref = sorted(set(preds.by_key) - set(refs.by_key))  # restorations without a reference
    return preds, refs, keys, missing_pred, missing_ref


class _Scorer:
    """Reads pairs in batches and scores each batch with every metric, timing each metric."""

    def __init__(self, suite, readers, cfg: EvaluateConfig):
        self.suite, self.cfg = suite, cfg
        self.pred_reader, self.ref_reader = readers  # one each: a tar on either side is read once
        self.seconds = {n: 0.0 for n in suite.names}
        self.images = {n: 0 for n in suite.names}

    def batch(self, keys, preds, refs) -> list[dict]:
        rows, restored, references, live = [], [], [], []
        for key in keys:
            p = preds.by_key[key]
            r = refs.by_key[key] if refs is not None else None
            row = {"key": key, "pred": p.source, "ref": r.source if r else None, "error": ""}
            try:
                img = self.pred_reader.read(p)
                ref_img = self.ref_reader.read(r) if r is not None else None
                img, row["error"] = fit_to_reference(img, ref_img, self.cfg.match.size_mismatch)
            except Exception as exc:  # noqa: BLE001 - an unreadable image fails alone, recorded with its reason
                row["error"] = f"unreadable: {type(exc).__name__}: {exc}"[:300]
            row["width"], row["height"] = (int(img.shape[1]), int(img.shape[0])) if not row["error"] else (None, None)
            rows.append(row)
            if not row["error"]:
                live.append(row)
                restored.append(img)
                references.append(ref_img)
        for name in self.suite.names:
            for row in rows:
                row[name] = float("nan")
            if not live:
                continue
            fr = self.suite.info(name).mode == "FR"
            t = time.perf_counter()
            values, errors = self.suite.score(name, restored, references if fr else None)
            self.seconds[name] += time.perf_counter() - t
            self.images[name] += len(live)
            for row, v, e in zip(live, values, errors):
                row[name] = v
                if e:
                    row["error"] = (row["error"] + "; " if row["error"] else "") + f"{name}: {e}"
        return rows


def run_evaluate(pred: str, ref: Optional[str], out: str | Path, cfg: EvaluateConfig, fresh: bool = False,
                 suite=None) -> EvaluateResult:
    """The whole ``supirkit evaluate`` job. ``suite``: metrics already built (else built here, first)."""
    from supirkit.datapipe.runner import prepare_output
    from supirkit.evaluation.report import write_outputs
    from supirkit.metrics import build_metrics, metric_info

    m = cfg.metrics
    names = list(m.names)
    dropped = [n for n in names if ref is None and metric_info(n).mode == "FR"]
    names = [n for n in names if n not in dropped]
    if suite is None:
        suite = build_metrics(names, device=m.device, pretrained=m.pretrained, conventions=m.conventions,
                              options=m.options, batch_size=m.batch_size)
    preds, refs, keys, missing_pred, missing_ref = _prepare(pred, ref, cfg)
    out_dir = prepare_output(out, STAGE, config_hash(cfg), fresh,
                             sources=[str(pred)] + ([str(ref)] if ref else [])).root

    def readers():
        return tuple(ImageReader(cfg.decode.max_pixels, cfg.decode.max_file_bytes) for _ in range(2))

    scorer = _Scorer(suite, readers(), cfg)
    rows: list[dict] = []
    order = sorted(keys, key=lambda k: (refs.by_key[k].uri if refs else "", preds.by_key[k].uri, k))
    for s in range(0, len(order), m.batch_size):
        rows.extend(scorer.batch(order[s:s + m.batch_size], preds, refs))
    rows.sort(key=lambda r: r["key"])
    throughput = {n: {"images": scorer.images[n], "seconds": round(scorer.seconds[n], 4),
                      "images_per_s": round(scorer.images[n] / scorer.seconds[n], 4) if scorer.seconds[n] else None}
                  for n in suite.names}
    method = cfg.report.method or Path(str(pred).rstrip("/")).name
    extra = {"pred": str(pred), "ref": ref, "method": method, "missing_restorations": missing_pred,
             "restorations_without_reference": missing_ref, "dropped_metrics": dropped,
             "duplicate_keys": preds.duplicates + (refs.duplicates if refs else []),
             "unreadable_inputs": preds.unreadable + (refs.unreadable if refs else []),
             "throughput": throughput, "config": cfg.model_dump(mode="json")}
    summary = write_outputs(out_dir, rows, suite, method, cfg, extra, readers(), preds, refs)
    failed = sum(1 for r in rows if r["error"])
    return EvaluateResult(out_dir, len(rows), failed, summary, missing_pred, missing_ref, dropped)


__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate", "DEFAULT_METRICS"]
