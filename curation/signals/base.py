"""What every scorer shares: the decoded image with lazily computed views, and the scorer interface.

A scorer takes a batch of ``ImageView``s and returns one dict of signal values per image. Views cache
what several scorers need (native-resolution gray tiles, a downscaled copy), so each is computed once
per image whatever the set of scorers.

Decoding once (``decode_for``): when any scorer reads native-resolution pixels (the default cheap set:
sharpness, noise, blockiness on native tiles), the image is decoded once at full size and the downscaled
copy is made from it; a second, DCT-reduced decode just for the copy would cost more than the area
averaging it replaces (benchmarks/README.md, "decode"). When every scorer reads only the downscaled copy
(texture, colour, borders, phash, CLIP/aesthetics), JPEGs are decoded at the smallest DCT reduction that
keeps the copy's size (``decode_rgb_reduced``); the copy then comes from those pixels, which differ from
an area average of the full decode by a few gray levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from supirkit.datapipe.decode import DEFAULT_MAX_PIXELS, ImageHeader, decode_rgb, decode_rgb_reduced

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class ViewOptions:
    tile_size: int = 256  # native-resolution tiles for sharpness, noise, blockiness, effective resolution
    detail_tiles: int = 4  # most detailed tiles (sharpness, resolution): content, not sky
    flat_tiles: int = 2  # flattest tiles added for the noise estimate (noise shows best on flat areas)
    grid: int = 4  # candidate tile positions: grid x grid over the image
    small_side: int = 512  # downscaled copy (INTER_AREA) for global signals


class ImageView:
    """One decoded image (HxWx3 uint8 RGB) plus its source bytes and header.

    ``rgb`` is at native resolution, or DCT-reduced when ``header.reduction`` > 1 (``decode_for``); a
    reduced view serves the downscaled copy only, and ``height``/``width`` stay the native ones."""

    def __init__(self, rgb: np.ndarray, header: Optional[ImageHeader] = None, data: bytes = b"",
                 options: ViewOptions = ViewOptions()) -> None:
        self.rgb = rgb
        self.header = header
        self.data = data
        self.opt = options
        self.reduction = header.reduction if header is not None else 1

    @property
    def height(self) -> int:
        return int(self.header.height if self.reduction > 1 else self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.header.width if self.reduction > 1 else self.rgb.shape[1])

    @property
    def native(self) -> np.ndarray:
        """The pixels at native resolution (for tiles): only a full decode has them."""
        if self.reduction > 1:
            raise ValueError("native-resolution pixels asked of a reduced decode: decode with decode_for()")
        return self.rgb

    @cached_property
    def small(self) -> np.ndarray:
        """RGB copy whose short side is ``small_side`` (area-averaged); the image itself if smaller."""
        import cv2

        h, w = self.height, self.width
        s = self.opt.small_side / min(h, w)
        if s >= 1.0:
            return self.native
        src = self.rgb
        # exact 2x2 box averages first (OpenCV's fast path: ~10x cheaper per pixel than a fractional
        # area resize of the full image), then the remaining factor (< 2) bilinearly on the small copy
        while min(src.shape[:2]) >= 2 * self.opt.small_side:
            sh, sw = src.shape[0] // 2, src.shape[1] // 2
            src = cv2.resize(src[: 2 * sh, : 2 * sw], (sw, sh), interpolation=cv2.INTER_AREA)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        if (src.shape[1], src.shape[0]) == size:
            return src
        return cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)

    @cached_property
    def small_gray(self) -> np.ndarray:
        return self.small.astype(np.float32) @ GRAY_WEIGHTS

    @cached_property
    def small_detail(self) -> np.ndarray:
        """|Laplacian| of the small gray copy: where the content is (linear gradients count as flat)."""
        import cv2

        return np.abs(cv2.Laplacian(self.small_gray, cv2.CV_32F, ksize=1))

    @cached_property
    def tile_boxes(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top-left corners (y, x) of the detail tiles and of the flat tiles, on the 8-pixel JPEG grid."""
        h, w = self.native.shape[:2]
        t = min(self.opt.tile_size, h, w)
        g = self.opt.grid
        ys = np.linspace(0, h - t, g).astype(int) // 8 * 8
        xs = np.linspace(0, w - t, g).astype(int) // 8 * 8
        cands = sorted({(int(y), int(x)) for y in ys for x in xs})
        sh, sw = self.small_detail.shape
        fy, fx = sh / h, sw / w
        energy = []
        for y, x in cands:
            y0, y1 = int(y * fy), max(int((y + t) * fy), int(y * fy) + 1)
            x0, x1 = int(x * fx), max(int((x + t) * fx), int(x * fx) + 1)
            energy.append(float(self.small_detail[y0:y1, x0:x1].mean()))
        order = np.argsort(-np.asarray(energy), kind="stable")
        detail = [cands[i] for i in order[: self.opt.detail_tiles]]
        flat = [cands[i] for i in order[::-1] if cands[i] not in detail][: self.opt.flat_tiles]
        return detail, flat

    def _gray_tile(self, y: int, x: int) -> np.ndarray:
        t = min(self.opt.tile_size, self.height, self.width)
        return self.native[y:y + t, x:x + t].astype(np.float32) @ GRAY_WEIGHTS

    @cached_property
    def detail_tiles(self) -> list[np.ndarray]:
        return [self._gray_tile(y, x) for y, x in self.tile_boxes[0]]

    @cached_property
    def flat_tiles(self) -> list[np.ndarray]:
        return [self._gray_tile(y, x) for y, x in self.tile_boxes[1]]


class Scorer:
    """A pluggable signal: ``score_batch(views) -> [dict per view]``.

    ``needs_gpu`` scorers hold a model (loaded once per Ray actor, one replica each); the others run in
    CPU tasks. ``setup(device)`` loads weights once per worker. A model scorer splits its work in two:
    ``prepare(view)`` cuts the model's input from the decoded image (CPU work, no weights: it runs
    wherever the image was decoded, on a copy of the scorer pickled without its model), and
    ``score_prepared(inputs)`` runs the model on a batch of them; ``score_batch`` is the two in a row.
    """

    name = "scorer"
    needs_gpu = False
    columns: tuple[str, ...] = ()
    #: reads native-resolution pixels (tiles); False: only the downscaled copy, so a reduced decode serves
    needs_native = True
    #: the shorter side a scorer that does not need native pixels reads beyond the copy (a model's input)
    input_side = 0

    def setup(self, device: str = "cpu") -> None:
        pass

    def score_batch(self, views: list[ImageView]) -> list[dict]:
        return self.score_prepared([self.prepare(v) for v in views])

    def prepare(self, view: ImageView):
        """The scorer's input from one decoded image (the view itself for scorers that read it whole)."""
        return view

    def score_prepared(self, inputs: list) -> list[dict]:
        return [self.score(v) for v in inputs]

    def score(self, view: ImageView) -> dict:
        raise NotImplementedError


def decode_for(scorers: list[Scorer], data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               options: ViewOptions = ViewOptions()):
    """Decode ``data`` once for these scorers: at full size when one of them reads native pixels, else at
    the smallest DCT reduction that keeps the downscaled copy's (and every model input's) size."""
    if any(s.needs_native for s in scorers):
        return decode_rgb(data, max_pixels)
    side = max([options.small_side] + [int(s.input_side) for s in scorers])
    return decode_rgb_reduced(data, side, max_pixels)
