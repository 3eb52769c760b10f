"""Which member of a duplicate group is kept: a documented order of criteria, best first.

The default order (``dedup.rank_by``), for the versions of one photo that near-duplicate grouping joins:

1. ``-is_grayscale``: colour over grayscale (a gray copy lost information, whatever its bit depth);
2. ``-reencoded``: the original over a re-encode, where a re-encode is a lossless file (PNG, lossless WebP,
   TIFF, BMP) whose pixels carry JPEG 8x8 block artefacts (``blockiness`` >= ``REENCODED_BLOCKINESS``): a
   JPEG saved again as PNG holds the JPEG's pixels in a larger file;
3. ``short_side``: larger;
4. ``fidelity``: less compressed: lossless files (101), then JPEGs by their quality read from the tables,
   then lossy files whose quality cannot be read (lossy WebP, GIF's palette): last;
5. ``sharpness``: sharper;
6. ``-bytes``: the smaller file, when all else is equal (the same pixels in a larger container).

A name in ``rank_by`` is a column of the scores (higher is better; ``-name``: lower is better) or one of
the derived criteria in ``CRITERIA``. A missing value ranks last. A full tie keeps the earlier input.
"""
from __future__ import annotations

from typing import Callable, Optional

#: blockiness (``curation.signals.cheap.blockiness``) from which a lossless file is taken for a re-encoded
#: JPEG: clean photos measure 0-0.15, JPEGs of quality 90 and below 0.25 and more
REENCODED_BLOCKINESS = 0.2
#: ``fidelity`` of a lossless file: above every JPEG quality
LOSSLESS_FIDELITY = 101
DEFAULT_RANK_BY = ["-is_grayscale", "-reencoded", "short_side", "fidelity", "sharpness", "-bytes"]


def _reencoded(row: dict) -> Optional[bool]:
    lossless, blocky = row.get("lossless"), row.get("blockiness")
    if lossless is None or blocky is None:
        return None
    return bool(lossless) and blocky >= REENCODED_BLOCKINESS


def _fidelity(row: dict) -> Optional[float]:
    if row.get("lossless"):
        return LOSSLESS_FIDELITY
    return row.get("jpeg_quality")


#: derived criteria: name -> (value of a row, the score columns it reads)
CRITERIA: dict[str, tuple[Callable[[dict], Optional[float]], tuple[str, ...]]] = {
    "reencoded": (_reencoded, ("lossless", "blockiness")),
    "fidelity": (_fidelity, ("lossless", "jpeg_quality")),
}


def columns_for(rank_by: list[str]) -> list[str]:
    """The score columns that ``rank_by`` reads."""
    out: list[str] = []
    for name in rank_by:
        col = name.lstrip("-")
        for c in (CRITERIA[col][1] if col in CRITERIA else (col,)):
            if c not in out:
                out.append(c)
    return out


def rank(row: dict, rank_by: list[str]) -> tuple:
    """The row's key in ``rank_by`` order, higher is better. A missing value ranks last, except a missing
    ``jpeg_quality`` in an order without ``fidelity`` (older configs), which means a lossless file and ranks
    above every JPEG (as 101). Ties: the earlier input."""
    vals = []
    for name in rank_by:
        sign, col = (-1.0, name[1:]) if name.startswith("-") else (1.0, name)
        v = CRITERIA[col][0](row) if col in CRITERIA else row.get(col)
        if v is None and col == "jpeg_quality":
            v = LOSSLESS_FIDELITY
        vals.append(float("-inf") if v is None else sign * float(v))
    return (*vals, -int(row["order"]))


__all__ = ["DEFAULT_RANK_BY", "CRITERIA", "REENCODED_BLOCKINESS", "columns_for", "rank"]
