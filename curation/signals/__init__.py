"""Signals: small pluggable scorers that work on batches of decoded images.

``cheap``: CPU, no weights (sharpness, noise, JPEG quality and blockiness, effective resolution,
texture, colour, borders, perceptual hash). ``iqa``: learned metrics through pyiqa. ``aesthetic``:
a LAION-style head on open_clip embeddings (also the embeddings for semantic dedup).
"""
from __future__ import annotations

from supirkit.curation.signals.base import ImageView, Scorer, ViewOptions, decode_for
from supirkit.curation.signals.cheap import CHEAP_SCORERS


def build_cheap_scorers(names) -> list[Scorer]:
    unknown = [n for n in names if n not in CHEAP_SCORERS]
    if unknown:
        raise ValueError(f"unknown cheap signal(s) {unknown}; available: {sorted(CHEAP_SCORERS)}")
    return [CHEAP_SCORERS[n]() for n in names]


def score_views(scorers: list[Scorer], views: list[ImageView]) -> list[dict]:
    """Run every scorer on the batch; one merged dict per view."""
    rows: list[dict] = [{} for _ in views]
    for scorer in scorers:
        for row, values in zip(rows, scorer.score_batch(views)):
            row.update(values)
    return rows


def cheap_signal_columns(names) -> list[str]:
    return [c for n in names for c in CHEAP_SCORERS[n].columns]


__all__ = ["ImageView", "Scorer", "ViewOptions", "decode_for", "CHEAP_SCORERS", "build_cheap_scorers", "score_views",
           "cheap_signal_columns"]
