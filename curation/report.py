"""report.html with PNG plots (matplotlib, Agg): signal histograms with their thresholds, the
acceptance funnel, and sample grids (accepted; rejected near a threshold; clearly rejected)."""
from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from supirkit.curation.config import CurateConfig
from supirkit.curation.rules import thresholds
from supirkit.datapipe.decode import DecodeError
from supirkit.datapipe.files import atomic_write

NUMERIC_SKIP = {"order", "partition", "bytes", "width", "height", "phash", "dup_group", "jpeg_table_error"}


def _scores_sample(scores: Path, max_rows: int):
    from supirkit.datapipe.manifest import open_manifest

    ds = open_manifest(scores)
    n = ds.count_rows()
    t = ds.to_table()
    if n > max_rows:
        t = t.take(np.linspace(0, n - 1, max_rows).astype(np.int64))
    return t


def _thumb(data: bytes, size: int, max_pixels: int):
    """Through the shared decoder, so a rejected decompression bomb is refused here too (from its
    header, at the configured ``decode.max_pixels``) instead of being decoded for a picture."""
    from supirkit.datapipe.decode import decode_thumbnail

    return decode_thumbnail(data, size, max_pixels)[0]


def _grid(images: list, labels: list[str], path: Path, size: int, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images:
        return False
    cols = min(6, len(images))
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size / 80, rows * (size / 80 + 0.5)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, lab in zip(axes.ravel(), images, labels):
        ax.imshow(np.asarray(img))
        ax.set_title(lab, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
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
    import re

    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text)[:60] or "unknown"


def _reason_examples(out: Path, cfg: CurateConfig, rows: list[dict], funnel: dict, per_reason: int,
                     size: int) -> list[str]:
    """One grid per rejection reason (a few of its inputs, as pictures) with the values that decided it;
    inputs that cannot be pictured (unreadable, undecodable) are listed by name and detail instead."""
    from supirkit.datapipe.inputs import read_source

    signal_of = {c.name: c.signal for c in cfg.rules.checks if c.signal}
    bounds_of = {c.name: " ".join(f"{k} {v:g}" for k, v in (("min", c.min), ("max", c.max)) if v is not None)
                 for c in cfg.rules.checks if c.signal}
    by_reason: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("accepted") or r.get("status") is None:
            continue
        by_reason.setdefault(r.get("reason") or "unknown", []).append(r)
    order = sorted(by_reason, key=lambda k: (-funnel.get("rejected_by_reason", {}).get(k, len(by_reason[k])), k))
    for old in out.glob("report-reason-*.png"):  # a re-selection may no longer have an earlier reason
        old.unlink()
    parts: list[str] = []
    for reason in order:
        chosen = by_reason[reason]
        stage = chosen[0].get("stage") or "?"
        imgs, labels, unpictured = [], [], []
        for r in chosen:
            if len(imgs) >= per_reason:
                break
            try:
                uri = os.fsdecode(r["source_uri"]) if r.get("source_uri") else None
                imgs.append(_thumb(read_source(uri, cfg.decode.max_file_bytes) if uri else b"", size,
                                   cfg.decode.max_pixels))
            except (OSError, ValueError, DecodeError) as exc:  # unreadable/undecodable inputs
                if len(unpictured) < per_reason:
                    unpictured.append((r["source"], r.get("detail") or type(exc).__name__))
                continue
            name = Path(r["source"]).name[:22]
            if stage == "rules":
                sig = signal_of.get(reason)
                value = r.get(sig) if sig else None
                labels.append(f"{name}\n{sig} {value:.3g} ({bounds_of[reason]})" if isinstance(value, (int, float))
                              else name)
            elif stage == "dedup":
                labels.append(f"{name}\ndup of {Path(r.get('duplicate_of') or '?').name[:18]}")
            elif stage == "prefilter":
                labels.append(f"{name}\n{r.get('width')}x{r.get('height')}")
            else:
                labels.append(name)
        count = funnel.get("rejected_by_reason", {}).get(reason, len(chosen))
        parts.append(f"<h3>{html.escape(reason)} <small>({html.escape(stage)}, {count} rejected)</small></h3>")
        png = f"report-reason-{_slug(reason)}.png"
        if _grid(imgs, labels, out / png, size, f"rejected: {reason}"):
            parts.append(f'<p><img src="{png}" alt="{html.escape(reason)}"></p>')
        if unpictured:
            parts.append("<ul>" + "".join(f"<li>{html.escape(s)}: {html.escape(str(d)[:200])}</li>"
                                          for s, d in unpictured) + "</ul>")
    return parts


def write_report(layout, folders, cfg: CurateConfig, funnel: dict, selection: str = "") -> Path:
    """``__supirkit__/report/report.html`` and its pictures (beside the shards nothing but shards may lie)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from supirkit.datapipe.inputs import read_source
    from supirkit.datapipe.tario import list_shards, read_shard, sample_image, sample_meta

    rc = cfg.report
    out = layout.meta / "report"
    out.mkdir(parents=True, exist_ok=True)
    t = _scores_sample(folders.scores, rc.max_rows)
    rows = t.to_pylist()
    th = thresholds(cfg.rules)
    parts: list[str] = []
    # -- histograms
    numeric = [f.name for f in t.schema if (str(f.type).startswith(("double", "float", "int")) and
                                            f.name not in NUMERIC_SKIP)]
    numeric = sorted(numeric, key=lambda c: (c not in th, c))
    for col in numeric:
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
    # -- funnel
    stages = [(k, funnel.get(k, 0)) for k in ("inputs", "read", "passed_prefilter", "decoded", "passed_rules",
                                              "accepted", "training_samples")]
    reasons = sorted(funnel.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    a1.barh([s for s, _ in stages][::-1], [v for _, v in stages][::-1], color="#27ae60")
    for i, (_, v) in enumerate(stages[::-1]):
        a1.text(v, i, f" {v}", va="center", fontsize=8)
    a1.set_title("funnel")
    if reasons:
        a2.barh([r for r, _ in reasons][::-1], [v for _, v in reasons][::-1], color="#c0392b")
        for i, (_, v) in enumerate(reasons[::-1]):
            a2.text(v, i, f" {v}", va="center", fontsize=8)
    a2.set_title("rejected, by reason")
    fig.tight_layout()
    fig.savefig(out / "report-funnel.png", dpi=80)
    plt.close(fig)
    # -- grids
    n, size = rc.grid_samples, rc.thumb_size
    grids, by_reason = [], []
    if n:
        acc_imgs, acc_labels = [], []
        for url in list_shards(layout.root)[:4]:
            for s in read_shard(url, max_member_bytes=cfg.decode.max_file_bytes):
                ext, data = sample_image(s)
                m = sample_meta(s)
                try:
                    acc_imgs.append(_thumb(data or b"", size, cfg.decode.max_pixels))
                except DecodeError:  # an output shard changed by hand since: picture the others
                    continue
                acc_labels.append(f"{Path(m.get('source', '')).name[:24]}")
                if len(acc_imgs) >= n:
                    break
            if len(acc_imgs) >= n:
                break
        if _grid(acc_imgs, acc_labels, out / "report-accepted.png", size, "accepted (training crops)"):
            grids.append("report-accepted.png")
        ruled = []
        for r in rows:
            if r.get("stage") == "rules" and r.get("failed_rules"):
                failed = list(r["failed_rules"])
                ruled.append((_margin(r, failed, cfg.rules.checks), r, failed))
        ruled.sort(key=lambda x: x[0])
        for name, chosen, title in (("report-near.png", ruled[:n], "rejected near a threshold"),
                                    ("report-clear.png", ruled[::-1][:n], "clearly rejected")):
            imgs, labels = [], []
            for _, r, failed in chosen:
                try:
                    data = read_source(os.fsdecode(r["source_uri"]), cfg.decode.max_file_bytes)
                    imgs.append(_thumb(data, size, cfg.decode.max_pixels))
                except (OSError, ValueError, DecodeError):  # gone, unreadable or over the limits
                    continue
                labels.append(f"{Path(r['source']).name[:22]}\n{','.join(failed)[:26]}")
            if _grid(imgs, labels, out / name, size, title):
                grids.append(name)
        by_reason = _reason_examples(out, cfg, rows, funnel, max(1, min(n, 6)), size)
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
        *parts,
        "<h2>Samples</h2>", *[f'<p><img src="{g}" alt="{g}"></p>' for g in grids],
        "<h2>Examples of each rejection reason</h2>", *by_reason,
        "</body></html>",
    ]
    path = out / "report.html"
    atomic_write(path, "\n".join(body))
    return path
