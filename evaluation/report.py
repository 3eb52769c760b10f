"""The outputs of ``supirkit evaluate``: per-image parquet, summary tables (CSV, markdown in the papers'
layout, JSON) and an HTML page of the best and worst crops per metric (``inspection``'s page renderer)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from supirkit.datapipe.files import atomic_write

#: decimals the papers print each metric with
DECIMALS = {"psnr": 2, "musiq": 2, "niqe": 2, "ssim": 4, "lpips": 4, "dists": 4, "maniqa": 4, "clipiqa": 4}


def _values(rows: list[dict], name: str) -> np.ndarray:
    v = np.array([r.get(name, math.nan) for r in rows], dtype=np.float64)
    return v[~np.isnan(v)]


def metric_summary(rows: list[dict], suite) -> list[dict]:
    """One row per metric: mean over the images it scored, and how it was measured."""
    out = []
    for name in suite.names:
        info = suite.info(name)
        v = _values(rows, name)
        out.append({"metric": name, "label": info.label, "better": "lower" if info.lower_better else "higher",
                    "mean": float(v.mean()) if v.size else None, "median": float(np.median(v)) if v.size else None,
                    "std": float(v.std()) if v.size else None, "count": int(v.size),
                    "failed": len(rows) - int(v.size), "convention": suite.describe(name)})
    return out


def _fmt(name: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{DECIMALS.get(name, 4)}f}"


def markdown_table(summary: list[dict], method: str, n_images: int, pred: str, ref: Optional[str]) -> str:
    head = "| Method | " + " | ".join(f"{s['label']}{'↓' if s['better'] == 'lower' else '↑'}" for s in summary) + " |"
    rule = "| :-- | " + " | ".join("--:" for _ in summary) + " |"
    row = f"| {method} | " + " | ".join(_fmt(s["metric"], s["mean"]) for s in summary) + " |"
    lines = [f"# {method}", "", head, rule, row, "",
             f"Means over {n_images} image(s): restored `{pred}`" + (f", references `{ref}`" if ref else "") +
             ". A metric's mean leaves out the images it could not score (see `failed` in summary.csv).", "",
             "How each metric was measured:", ""]
    lines += [f"- {s['label']}: {s['convention']}" for s in summary]
    return "\n".join(lines) + "\n"


def _summary_csv(summary: list[dict]) -> bytes:
    buf = io.StringIO()
    cols = ["metric", "label", "better", "mean", "median", "std", "count", "failed", "convention"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for s in summary:
        w.writerow({k: s[k] for k in cols})
    return buf.getvalue().encode("utf-8")


def _parquet(rows: list[dict], names: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = [("key", pa.string()), ("pred", pa.string()), ("ref", pa.string()), ("width", pa.int64()),
              ("height", pa.int64())] + [(n, pa.float64()) for n in names] + [("error", pa.string())]
    table = pa.table({col: pa.array([r.get(col) for r in rows], type=t) for col, t in schema})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_outputs(out_dir: Path, rows: list[dict], suite, method: str, cfg, extra: dict, readers, preds,
                  refs) -> list[dict]:
    """Every output file; ``readers``: (restored, reference) image readers for the crops of the page."""
    summary = metric_summary(rows, suite)
    out_dir = Path(out_dir)
    atomic_write(out_dir / "per_image.parquet", _parquet(rows, suite.names))
    atomic_write(out_dir / "summary.csv", _summary_csv(summary))
    md = markdown_table(summary, method, len(rows), extra["pred"], extra["ref"])
    atomic_write(out_dir / "summary.md", md.encode("utf-8"))
    page = write_report_page(out_dir / "report.html", rows, suite, cfg.report, md, readers, preds, refs)
    doc = {"method": method, "images": len(rows), "failed_images": sum(1 for r in rows if r["error"]),
           "metrics": summary, "report": page.name, **extra}
    atomic_write(out_dir / "summary.json", json.dumps(doc, indent=1, default=str).encode("utf-8"))
    return summary


# ------------------------------------------------------------------------------------------- HTML page
def diff_window(restored: np.ndarray, reference: Optional[np.ndarray], side: int) -> tuple[int, int, int]:
    """(top, left, side) of the window where restored and reference differ most (the centre without one)."""
    h, w = restored.shape[:2]
    side = min(side, h, w)
    if reference is None or reference.shape != restored.shape:
        return (h - side) // 2, (w - side) // 2, side
    import cv2

    diff = np.abs(restored.astype(np.float32) - reference.astype(np.float32)).mean(axis=2)
    mean = cv2.boxFilter(diff, -1, (side, side), anchor=(0, 0), normalize=True, borderType=cv2.BORDER_CONSTANT)
    valid = mean[: h - side + 1, : w - side + 1]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left), side


def _examples(rows: list[dict], name: str, lower_better: bool, k: int) -> list[tuple[str, int, dict]]:
    scored = [r for r in rows if not math.isnan(r.get(name, math.nan))]
    scored.sort(key=lambda r: r[name], reverse=not lower_better)  # best first
    best = [("best", i + 1, r) for i, r in enumerate(scored[:k])]
    worst_rows = scored[::-1][:k] if len(scored) > k else []
    worst = [("worst", i + 1, r) for i, r in enumerate(worst_rows) if r not in scored[:k]]
    return best + worst


def _crops(row: dict, readers, preds, refs, side: int) -> list[tuple[str, np.ndarray]]:
    """Restored and reference side by side, the same window of both (where they differ most)."""
    restored = readers[0].read(preds.by_key[row["key"]])
    reference = readers[1].read(refs.by_key[row["key"]]) if refs is not None else None
    if reference is not None and reference.shape != restored.shape:
        from supirkit.evaluation.images import fit_to_reference

        restored, _ = fit_to_reference(restored, reference, "resize")
    top, left, side = diff_window(restored, reference, side)
    window = (slice(top, top + side), slice(left, left + side))
    views = [(f"restored ({side}px crop)", restored[window])]
    if reference is not None:
        views.append((f"reference ({side}px crop)", reference[window]))
    return views


def write_report_page(path: Path, rows: list[dict], suite, opts, summary_md: str, readers, preds, refs) -> Path:
    """For each metric, its ``opts.examples`` best and worst images: restored and reference side by side,
    cropped where they differ most, every metric's value under them (``inspection``'s page renderer)."""
    from supirkit.inspection import Sample, Tile, write_html

    tiles = []
    for name in suite.names:
        info = suite.info(name)
        better = "lower" if info.lower_better else "higher"
        for which, rank, row in _examples(rows, name, info.lower_better, opts.examples):
            try:
                views, error = _crops(row, readers, preds, refs, opts.crop), ""
            except Exception as exc:  # noqa: BLE001 - shown on its card
                views, error = [], f"{type(exc).__name__}: {exc}"
            scores = {n: row[n] for n in suite.names if not math.isnan(row.get(n, math.nan))}
            caption = f"{info.label} {which} #{rank}: {_fmt(name, row[name])} ({better} is better)"
            meta = {"scores": scores, "source": row["pred"], "reference": row["ref"]}
            size = (row["width"], row["height"]) if row["width"] else None
            tiles.append(Tile(Sample(row["key"], row["pred"], meta, caption), views, size, error))
    return write_html(tiles, path, "supirkit evaluate", summary_md, [f"scores.{n}" for n in suite.names])
