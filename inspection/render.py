"""Pictures of samples: thumbnails with their extra views or HQ/LQ pairs (``Tile``), the contact sheet and
the HTML page. ``draw_sheet`` is the one grid renderer of the code base: inspect, the degrade preview and
the curation report all draw with it."""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from supirkit.datapipe.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_thumbnail
from supirkit.datapipe.files import atomic_write
from supirkit.datapipe.keys import display_source
from supirkit.inspection.collection import flatten_meta
from supirkit.inspection.samples import Sample, score_items

#: a view adds labelled images next to each sample's thumbnail: ``views(thumbnail_rgb, meta) -> [(label, rgb)]``
ViewFn = Callable[[np.ndarray, dict], list]
#: ``make_pair(rgb, key) -> (hq, lq)``: a training pair made from a sample's full-resolution RGB (for
#: instance a degradation profile's target and LQ); see ``make_pair_tiles``. Passed in by the caller, so
#: this package never imports the code that degrades.
PairFn = Callable[[np.ndarray, str], tuple]


@dataclass
class Tile:
    """A sample prepared for display: thumbnails (the image, then any extra views) and text lines."""

    sample: Sample
    images: list  # [(label, HxWx3 uint8)]
    size: Optional[tuple[int, int]] = None  # width, height of the full image
    error: str = ""


def _tiles(samples: Iterable[Sample], decode: Callable, make: Callable, what: str,
           show: Callable = lambda made: made) -> list[Tile]:
    """One tile per sample: ``decode(image) -> (pixels, header)``, then ``make(sample, pixels)`` and
    ``show(made) -> [(label, rgb)]``. A sample without an image or whose image cannot be decoded, or for which
    ``make`` raises (the caller's code: its error is named after ``what``), gets a tile with the reason
    instead: one bad sample never stops the sheet."""
    tiles = []
    for s in samples:
        if s.image is None:
            tiles.append(Tile(s, [], None, s.error or "no image in sample"))
            continue
        try:
            pixels, header = decode(s.image)
        except DecodeError as exc:
            tiles.append(Tile(s, [], None, exc.reason))
            continue
        size = (header.width, header.height)
        try:
            made = make(s, pixels)
        except Exception as exc:  # the caller's own error, shown on the tile
            tiles.append(Tile(s, [], size, f"{what}: {type(exc).__name__}: {exc}"[:200]))
            continue
        tiles.append(Tile(s, show(made), size))
    return tiles


def make_tiles(samples: Iterable[Sample], thumb: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               views: Optional[ViewFn] = None) -> list[Tile]:
    """Thumbnails of ``samples`` (longer side ``thumb``), each with the extra images ``views`` adds.

    ``views(rgb, meta) -> [(label, rgb)]`` gets the full-resolution decode (so a view such as a
    degradation sees the pixels training would see, not a thumbnail) and ``meta`` with ``key`` set; its
    images are fitted to the same box (enlarged by nearest neighbour when smaller, so LQ pixels stay
    visible). A view that raises gives the tile its error instead of stopping the sheet."""
    from supirkit.datapipe.decode import decode_rgb

    def decode(data: bytes):
        if views is None:  # JPEGs are decoded at reduced scale
            rgb, header = decode_thumbnail(data, thumb, max_pixels)
            return (rgb, None), header
        full, header = decode_rgb(data, max_pixels)
        return (fit_thumb(full, (thumb, thumb), enlarge=False), full), header

    def with_views(s: Sample, decoded) -> list:
        rgb, full = decoded
        extra = [] if views is None else views(full, {**s.meta, "key": s.meta.get("key", s.key)})
        return [("", rgb)] + [(label, fit_thumb(np.asarray(img, dtype=np.uint8), (thumb, thumb), enlarge=True))
                              for label, img in extra]

    return _tiles(samples, decode, with_views, "view")


def fit_thumb(img: np.ndarray, box: tuple[int, int], enlarge: bool) -> np.ndarray:
    """``img`` scaled to fit ``box`` (width, height), aspect kept. Shrinking uses Lanczos; enlarging (only
    when ``enlarge``) uses nearest neighbour, so the pixels of a small LQ stay visible as pixels."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(box[0] / w, box[1] / h)
    if scale >= 1 and not enlarge:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(img).resize(size, resample), dtype=np.uint8)


def make_pair_tiles(samples: Iterable[Sample], thumb: int, make_pair: PairFn,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Tile]:
    """Tiles showing, per sample, the HQ/LQ pair ``make_pair(rgb, key)`` builds from the sample's image.

    The image is decoded at full resolution by the decode rule (a pair is made from the pixels training
    would see, not from a thumbnail). HQ and LQ are shown in boxes of the same size: the HQ fitted to
    ``thumb``, the LQ at the HQ thumbnail's size (nearest neighbour when enlarged, so a x4 LQ shows its
    pixels). Labels give both full sizes. A sample whose image cannot be decoded, or for which
    ``make_pair`` raises, gets a tile with the reason: one bad sample never stops the sheet."""
    from supirkit.datapipe.decode import decode_rgb

    def pair(s: Sample, rgb: np.ndarray) -> tuple:
        hq, lq = make_pair(rgb, s.key)
        hq, lq = np.asarray(hq, dtype=np.uint8), np.asarray(lq, dtype=np.uint8)
        if hq.ndim != 3 or lq.ndim != 3 or hq.shape[2] != 3 or lq.shape[2] != 3:
            raise ValueError(f"make_pair must return two HxWx3 RGB arrays, got {hq.shape} and {lq.shape}")
        return hq, lq

    def side_by_side(made: tuple) -> list:
        hq, lq = made
        hq_thumb = fit_thumb(hq, (thumb, thumb), enlarge=False)
        lq_thumb = fit_thumb(lq, (hq_thumb.shape[1], hq_thumb.shape[0]), enlarge=True)
        return [(f"HQ {hq.shape[1]}x{hq.shape[0]}", hq_thumb), (f"LQ {lq.shape[1]}x{lq.shape[0]}", lq_thumb)]

    return _tiles(samples, lambda data: decode_rgb(data, max_pixels), pair, "pair", side_by_side)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    words, out, cur = text.split(), [], ""
    for w in words:
        cand = f"{cur} {w}".strip()
        if font.getlength(cand) <= width:
            cur = cand
            continue
        if cur:
            out.append(cur)
        cur = w
        if len(out) == lines:
            break
    if cur and len(out) < lines:
        out.append(cur)
    if len(out) == lines and " ".join(out) != " ".join(words):
        out[-1] = _fit(out[-1] + " ...", font, width)
    return [_fit(x, font, width) for x in out[:lines]]


def _error_text(tile: Tile, what: str = "") -> str:
    """Why a tile has no picture: the image could not be read, or a pair or view could not be made."""
    return tile.error if tile.error.startswith(("pair:", "view:")) else f"{what}unreadable: {tile.error}"


def tile_lines(tile: Tile, score_names: Optional[list[str]] = None,
               caption_lines: int = 2) -> tuple[str, list[str], str]:
    """(key line, caption lines as words, scores line) of a tile's label."""
    s = tile.sample
    key_line = s.key + (f"  {tile.size[0]}x{tile.size[1]}" if tile.size else "")
    caption = s.caption or ""
    scores = "  ".join(f"{k}={v:.3g}" for k, v in score_items(s.meta, score_names))
    if tile.error:
        scores = _error_text(tile)
    return key_line, [caption] if caption else [], scores


@dataclass
class Cell:
    """One cell of a sheet: images side by side (each in a ``thumb`` box, with an optional label on it) and
    text lines under them as ``(text, colour)``; a cell without images gets a red placeholder box."""

    images: list
    lines: list


def draw_sheet(cells: list[Cell], thumb: int, columns: int = 0, font_px: int = 11, background=(255, 255, 255)):
    """The contact-sheet renderer (a PIL image): cells in a grid, each as wide as its row's widest cell."""
    from PIL import Image, ImageDraw

    n = max(len(cells), 1)
    n_views = max((len(c.images) for c in cells), default=1) or 1
    cols = columns or max(1, math.ceil(math.sqrt(n / n_views)))
    rows = math.ceil(n / cols)
    font, line_h, pad = _font(font_px), font_px + 3, 6
    n_lines = max((len(c.lines) for c in cells), default=0)
    cell_w = n_views * thumb + (n_views - 1) * 2 + 2 * pad
    cell_h = thumb + n_lines * line_h + 2 * pad + 2
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), background)
    draw = ImageDraw.Draw(sheet)
    for i, cell in enumerate(cells):
        x0, y0 = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        if not cell.images:
            draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], outline=(200, 0, 0), fill=(245, 235, 235))
        for j, (label, img) in enumerate(cell.images):
            xi = x0 + j * (thumb + 2)
            h, w = img.shape[:2]
            sheet.paste(Image.fromarray(img), (xi + (thumb - w) // 2, y0 + (thumb - h) // 2))
            if label:
                draw.rectangle([xi, y0, xi + font.getlength(label) + 4, y0 + line_h], fill=(0, 0, 0))
                draw.text((xi + 2, y0), label, fill=(255, 255, 255), font=font)
        y = y0 + thumb + 2
        for text, colour in cell.lines:
            draw.text((x0, y), _fit(text, font, cell_w - 2 * pad), fill=colour, font=font)
            y += line_h
    return sheet


def save_png(image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
    return path


def tile_cell(tile: Tile, thumb: int, caption_lines: int = 2, score_names: Optional[list[str]] = None) -> Cell:
    """A sample's cell: key and size, the caption's first lines, the scores (or why there is no picture)."""
    key_line, caption, scores = tile_lines(tile, score_names, caption_lines)
    font = _font(11)
    lines = [(key_line, (0, 0, 0))]
    if caption:
        wrapped = _wrap(caption[0], font, thumb * max(len(tile.images), 1), caption_lines)
        lines += [(x, (60, 60, 60)) for x in wrapped]
    else:
        lines.append(("(no caption)", (150, 150, 150)))
    lines += [("", (0, 0, 0))] * (1 + caption_lines - len(lines))
    lines.append((scores, (0, 70, 140) if not tile.error else (180, 0, 0)))
    return Cell(tile.images, lines)


def write_grid(tiles: list[Tile], path: str | Path, thumb: int, columns: int = 0, caption_lines: int = 2,
               score_names: Optional[list[str]] = None) -> Path:
    """A contact sheet PNG: each image (and its extra views) with key, caption start and scores below."""
    cells = [tile_cell(t, thumb, caption_lines, score_names) for t in tiles]
    return save_png(draw_sheet(cells, thumb, columns), path)


def _jpeg_b64(img: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:13px system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}}
pre.summary{{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;font-size:12px}}
#q{{width:320px;padding:4px;margin:8px 0}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax({card}px,1fr));gap:12px}}
.card{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}}
.card img{{max-width:100%;display:block;margin:0 auto 4px;image-rendering:auto}}
.views{{display:flex;gap:4px;align-items:flex-start}} .views figure{{margin:0;flex:1}}
figcaption{{font-size:11px;color:#666;text-align:center}}
.key{{font-family:monospace;font-weight:600;word-break:break-all}}
.src{{color:#777;word-break:break-all;font-size:11px}}
.cap{{margin:4px 0}} .scores{{color:#0a4f8c;font-family:monospace}} .err{{color:#b00}}
table{{border-collapse:collapse;font-size:11px;width:100%}}
td{{border-top:1px solid #eee;padding:1px 4px;vertical-align:top;word-break:break-all}}
</style></head><body>
<h2>{title}</h2>
<pre class="summary">{summary}</pre>
<input id="q" placeholder="filter: key, caption, source, metadata..." oninput="filt(this.value)">
<div class="grid">
{cards}
</div>
<script>
function filt(q){{q=q.toLowerCase();for(const c of document.querySelectorAll('.card')){{
c.style.display=c.textContent.toLowerCase().includes(q)?'':'none';}}}}
</script>
</body></html>
"""


def write_html(tiles: list[Tile], path: str | Path, title: str, summary_text: str = "",
               score_names: Optional[list[str]] = None) -> Path:
    """A self-contained page (thumbnails embedded as base64 JPEG, no external file or script)."""
    cards = []
    card_w = 0
    for tile in tiles:
        s = tile.sample
        figs = []
        for label, img in tile.images:
            card_w = max(card_w, img.shape[1] * len(tile.images))
            figs.append(
                f'<figure><img alt="{html.escape(label or s.key)}" src="data:image/jpeg;base64,{_jpeg_b64(img)}">'
                + (f"<figcaption>{html.escape(label)}</figcaption>" if label else "")
                + "</figure>"
            )
        body = f'<div class="views">{"".join(figs)}</div>' if figs else \
            f'<div class="err">{html.escape(_error_text(tile, "image "))}</div>'
        size = f" {tile.size[0]}x{tile.size[1]}" if tile.size else ""
        source = s.meta.get("source") if isinstance(s.meta.get("source"), str) else display_source(s.where)
        caption = html.escape(s.caption) if s.caption else '<i style="color:#999">(no caption)</i>'
        scores = "  ".join(f"{html.escape(k)}={v:.3g}" for k, v in score_items(s.meta, score_names))
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v)[:300])}</td></tr>"
                       for k, v in sorted(flatten_meta(s.meta).items()))
        cards.append(f'<div class="card"><div class="key">{html.escape(s.key)}{size}</div>{body}'
                     f'<div class="src">{html.escape(str(source))}</div><div class="cap">{caption}</div>'
                     f'<div class="scores">{scores}</div>'
                     f"<details><summary>metadata</summary><table>{rows}</table></details></div>")
    page = _PAGE.format(title=html.escape(title), summary=html.escape(summary_text), card=max(card_w + 20, 180),
                        cards="\n".join(cards))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, page)
    return path
