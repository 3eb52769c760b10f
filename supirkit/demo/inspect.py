"""Demo step: look at what the corpus stages made, as a user would (``supirkit inspect``).

The captioned shards get a contact sheet and an HTML page; the curated shards an HQ/LQ page through the
training degradation (``--degrade``); the negatives a contact sheet of their own.
"""
from __future__ import annotations

from pathlib import Path

from supirkit.datapipe.captions import is_shard_set


def _shards(ctx, stage: str) -> Path | None:
    path = (ctx.outputs.get(stage) or {}).get("shards")
    if path and is_shard_set(path):
        return Path(path)
    return None


def step(ctx) -> dict:
    out = ctx.out / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    corpus = _shards(ctx, "caption") or _shards(ctx, "curate")
    if corpus is None:
        raise RuntimeError("inspect: no curated or captioned shards to look at")
    sheet, page = out / "corpus_sheet.png", out / "corpus.html"
    ctx.cli(["inspect", corpus, "--grid", sheet, "--html", page, "--n", 12])
    result.update(contact_sheet=str(sheet), html=str(page))
    curated = _shards(ctx, "curate")
    if curated is not None:
        pairs = out / "hq_lq_pairs.html"
        ctx.cli(["inspect", curated, "--no-summary", "--html", pairs, "--n", 6, "--degrade", "degrade/supir.yaml"])
        result["hq_lq_pairs"] = str(pairs)
    negatives = _shards(ctx, "negatives")
    if negatives is not None:
        neg_sheet = out / "negatives_sheet.png"
        ctx.cli(["inspect", negatives, "--no-summary", "--grid", neg_sheet, "--n", 8])
        result["negatives_sheet"] = str(neg_sheet)
    return result
