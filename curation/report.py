"""``report/report.html`` with PNG plots (matplotlib, Agg) and sample sheets (the shared contact-sheet
renderer): signal histograms with their thresholds, the acceptance funnel, and pictures of accepted
samples, of inputs rejected near a threshold or clearly, and of each rejection reason."""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np

from supirkit.curation.config import CurateConfig
from supirkit.curation.rules import thresholds
from supirkit.datapipe.decode import DecodeError, decode_thumbnail
from supirkit.datapipe.files import atomic_write
from supirkit.datapipe.inputs import read_source
from supirkit.inspection.render import Cell, draw_sheet, save_png

NUMERIC_SKIP = {"order", "partition", "bytes", "width", "height", "dup_group", "jpeg_table_error"}
FUNNEL_STEPS = ("inputs", "read", "passed_prefilter", "decoded", "passed_rules", "accepted", "training_samples")
SHEET_TITLES = {"report-accepted.png": "accepted (training crops)", "report-near.png": "rejected near a threshold",
                "report-clear.png": "clearly rejected"}


def _scores_sample(scores: Path, max_rows: int):
    from supirkit.datapipe.manifest import open_manifest

    ds = open_manifest(scores)
    n = ds.count_rows()
    t = ds.to_table()
    if n > max_rows:
        t = t.take(np.linspace(0, n - 1, max_rows).astype(np.int64))
    return t


def _thumb(data: bytes, size: int, max_pixels: int):
    """Through the shared decoder, so a rejected decompression bomb is refused here too (from its header,
    at the configured ``decode.max_pixels``) instead of being decoded for a picture."""
    return decode_thumbnail(data, size, max_pixels)[0]


def _source_thumb(row: dict, cfg: CurateConfig, size: int):
    uri = os.fsdecode(row["source_uri"]) if row.get("source_uri") else None
    return _thumb(read_source(uri, cfg.decode.max_file_bytes) if uri else b"", size, cfg.decode.max_pixels)


def _grid(images: list, labels: list[str], path: Path, size: int) -> bool:
    """A sheet of thumbnails with their labels (lines split at newlines); False when there is nothing."""
    if not images:
        return False
    cells = [Cell([("", np.asarray(img))], [(line, (0, 0, 0)) for line in label.split("\n")])
             for img, label in zip(images, labels)]
    save_png(draw_sheet(cells, size, columns=min(6, len(cells))), path)
    return True


def _margin(row: dict, failed: list[str], checks) -> float:
    """How far past its thresholds a rejected row is (relative; 0 = on the threshold)."""
    worst = 0.0
    for c in checks:
        if c.name not in failed or c.signal is None:
            continue
        v = row.get(c.signal)
        if v is None:
            worst = max(worst, 1.0)
            continue
        for bound in (c.min, c.max):
            if bound is not None:
                worst = max(worst, abs(float(v) - bound) / (abs(bound) + 1e-6))
    return worst + (len(failed) - 1)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text)[:60] or "unknown"


def _reason_label(r: dict, stage: str, reason: str, cfg: CurateConfig) -> str:
    """A thumbnail's label: the file name and the value that decided its rejection."""
    name = Path(r["source"]).name[:22]
    if stage == "rules":
        check = next((c for c in cfg.rules.checks if c.name == reason and c.signal), None)
        value = r.get(check.signal) if check else None
        if isinstance(value, (int, float)):
            bounds = " ".join(f"{k} {v:g}" for k, v in (("min", check.min), ("max", check.max)) if v is not None)
            return f"{name}\n{check.signal} {value:.3g} ({bounds})"
    elif stage == "dedup":
        return f"{name}\ndup of {Path(r.get('duplicate_of') or '?').name[:18]}"
    elif stage == "prefilter":
        return f"{name}\n{r.get('width')}x{r.get('height')}"
    return name


def _reason_examples(out: Path, cfg: CurateConfig, rows: list[dict], funnel: dict, per_reason: int,
                     size: int) -> list[str]:
    """One sheet per rejection reason (a few of its inputs, as pictures) with the values that decided it;
    inputs that cannot be pictured (unreadable, undecodable) are listed by name and detail instead."""
    by_reason: dict[str, list[dict]] = {}
    for r in rows:
        if not r.get("accepted") and r.get("status") is not None:
            by_reason.setdefault(r.get("reason") or "unknown", []).append(r)
    counts = funnel.get("rejected_by_reason", {})
    for old in out.glob("report-reason-*.png"):  # a re-selection may no longer have an earlier reason
        old.unlink()
    parts: list[str] = []
    for reason in sorted(by_reason, key=lambda k: (-counts.get(k, len(by_reason[k])), k)):
        chosen = by_reason[reason]
        stage = chosen[0].get("stage") or "?"
        imgs, labels, unpictured = [], [], []
        for r in chosen:
            if len(imgs) >= per_reason:
                break
            try:
                imgs.append(_source_thumb(r, cfg, size))
            except (OSError, ValueError, DecodeError) as exc:  # unreadable/undecodable inputs
                if len(unpictured) < per_reason:
                    unpictured.append((r["source"], r.get("detail") or type(exc).__name__))
                continue
            labels.append(_reason_label(r, stage, reason, cfg))
        count = counts.get(reason, len(chosen))
        parts.append(f"<h3>{html.escape(reason)} <small>({html.escape(stage)}, {count} rejected)</small></h3>")
        png = f"report-reason-{_slug(reason)}.png"
        if _grid(imgs, labels, out / png, size):
            parts.append(f'<p><img src="{png}" alt="{html.escape(reason)}"></p>')
        if unpictured:
            parts.append("<ul>" + "".join(f"<li>{html.escape(s)}: {html.escape(str(d)[:200])}</li>"
                                          for s, d in unpictured) + "</ul>")
    return parts


def _histograms(t, rows: list[dict], cfg: CurateConfig, out: Path) -> list[str]:
    """One histogram per numeric signal of the decoded inputs, with the rule thresholds drawn on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = thresholds(cfg.rules)
    numeric = [f.name for f in t.schema if (str(f.type).startswith(("double", "float", "int")) and
                                            f.name not in NUMERIC_SKIP)]
    parts = []
    for col in sorted(numeric, key=lambda c: (c not in th, c)):
        vals = np.array([r[col] for r in rows if r.get(col) is not None and r.get("status") == "scored"], float)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 2.6))
        ax.hist(vals, bins=40, color="#4a7ab5")
        for kind, v in th.get(col, []):
            ax.axvline(v, color="#c0392b", linestyle="--")
            ax.text(v, ax.get_ylim()[1] * 0.9, f" {kind} {v:g}", color="#c0392b", fontsize=7)
        ax.set_title(col, fontsize=9)
        fig.tight_layout()
        name = f"report-hist-{_slug(col.replace('.', '_'))}.png"  # a file name in ``out``, whatever the column
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        parts.append(f'<img src="{name}" alt="{html.escape(col)}">')
    return parts


def _funnel_chart(funnel: dict, out: Path) -> tuple[list, list]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(k, funnel.get(k, 0)) for k in FUNNEL_STEPS]
    reasons = sorted(funnel.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    charts = ((a1, stages, "#27ae60", "funnel"), (a2, reasons, "#c0392b", "rejected, by reason"))
    for ax, items, colour, title in charts:
        if items:
            ax.barh([s for s, _ in items][::-1], [v for _, v in items][::-1], color=colour)
            for i, (_, v) in enumerate(items[::-1]):
                ax.text(v, i, f" {v}", va="center", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "report-funnel.png", dpi=80)
    plt.close(fig)
    return stages, reasons


def _sample_sheets(layout, cfg: CurateConfig, rows: list[dict], out: Path) -> list[str]:
    """Accepted training crops; rejected inputs nearest to and farthest from the thresholds."""
    from supirkit.datapipe.tario import list_shards, read_shard, sample_image, sample_meta

    n, size = cfg.report.grid_samples, cfg.report.thumb_size
    sheets = []
    acc_imgs, acc_labels = [], []
    for url in list_shards(layout.root)[:4]:
        for s in read_shard(url, max_member_bytes=cfg.decode.max_file_bytes):
            try:
                acc_imgs.append(_thumb(sample_image(s)[1] or b"", size, cfg.decode.max_pixels))
            except DecodeError:  # an output shard changed by hand since: picture the others
                continue
            acc_labels.append(f"{Path(sample_meta(s).get('source', '')).name[:24]}")
            if len(acc_imgs) >= n:
                break
        if len(acc_imgs) >= n:
            break
    if _grid(acc_imgs, acc_labels, out / "report-accepted.png", size):
        sheets.append("report-accepted.png")
    ruled = sorted(((_margin(r, list(r["failed_rules"]), cfg.rules.checks), r) for r in rows
                    if r.get("stage") == "rules" and r.get("failed_rules")), key=lambda x: x[0])
    for name, chosen in (("report-near.png", ruled[:n]), ("report-clear.png", ruled[::-1][:n])):
        imgs, labels = [], []
        for _, r in chosen:
            try:
                imgs.append(_source_thumb(r, cfg, size))
            except (OSError, ValueError, DecodeError):  # gone, unreadable or over the limits
                continue
            labels.append(f"{Path(r['source']).name[:22]}\n{','.join(r['failed_rules'])[:26]}")
        if _grid(imgs, labels, out / name, size):
            sheets.append(name)
    return sheets


def write_report(layout, folders, cfg: CurateConfig, funnel: dict, selection: str = "") -> Path:
    """``__supirkit__/report/report.html`` and its pictures (beside the shards nothing but shards may lie)."""
    rc = cfg.report
    out = layout.meta / "report"
    out.mkdir(parents=True, exist_ok=True)
    t = _scores_sample(folders.scores, rc.max_rows)
    rows = t.to_pylist()
    hists = _histograms(t, rows, cfg, out)
    stages, reasons = _funnel_chart(funnel, out)
    sheets, by_reason = [], []
    if rc.grid_samples:
        sheets = _sample_sheets(layout, cfg, rows, out)
        by_reason = _reason_examples(out, cfg, rows, funnel, max(1, min(rc.grid_samples, 6)), rc.thumb_size)
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>supirkit curate report</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{margin:4px;border:1px solid #ddd}"
        "td,th{padding:2px 8px;text-align:right}</style></head><body>",
        f"<h1>Curation report: {html.escape(str(layout.root))}</h1>",
        f"<p>subset <b>{html.escape(cfg.output.subset)}</b>; selection: <code>"
        f"{html.escape(selection)}</code></p>",
        "<h2>Funnel</h2><img src='report-funnel.png' alt='funnel'><table><tr><th>stage</th><th>count</th></tr>",
        *[f"<tr><td>{html.escape(s)}</td><td>{v}</td></tr>" for s, v in stages],
        "</table><h3>Rejected, by reason</h3><table>",
        *[f"<tr><td>{html.escape(r)}</td><td>{v}</td></tr>" for r, v in reasons],
        "</table><h2>Signals</h2><p>Histograms of decoded inputs; dashed lines: rule thresholds.</p>",
        *hists,
        "<h2>Samples</h2>", *[f'<h3>{SHEET_TITLES[g]}</h3><p><img src="{g}" alt="{g}"></p>' for g in sheets],
        "<h2>Examples of each rejection reason</h2>", *by_reason,
        "</body></html>",
    ]
    path = out / "report.html"
    atomic_write(path, "\n".join(body))
    return path
