"""Training crops: where in the original each crop comes from, and how it is scaled.

``resize_center`` (the paper's recipe): resize the short side to ``size`` (area averaging, never
upscaling) and take the centred size x size square. ``center``: the centred square at native
resolution. ``grid``: up to ``max_crops`` non-overlapping native-resolution squares from a centred
grid, the most detailed first (flat sky makes poor training crops), written in reading order.
Boxes are in original pixel coordinates: (x0, y0, x1, y1), with ``scale`` = output / original size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supirkit.curation.config import CropConfig


@dataclass(frozen=True)
class CropBox:
    x0: int
    y0: int
    x1: int
    y1: int
    scale: float

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def plan_crops(width: int, height: int, cfg: CropConfig, detail: np.ndarray | None = None) -> list[CropBox]:
    """Crop boxes for one image; empty when the image is too small for even one crop."""
    size = cfg.size
    short = min(width, height)
    if short < size:
        return []
    if cfg.mode == "resize_center":
        side = short  # the centred square of the original that becomes size x size
        x0, y0 = (width - side) // 2, (height - side) // 2
        return [CropBox(x0, y0, x0 + side, y0 + side, size / side)]
    if cfg.mode == "center":
        x0, y0 = (width - size) // 2, (height - size) // 2
        return [CropBox(x0, y0, x0 + size, y0 + size, 1.0)]
    nx, ny = width // size, height // size
    ox, oy = (width - nx * size) // 2, (height - ny * size) // 2
    cells = [(oy + j * size, ox + i * size) for j in range(ny) for i in range(nx)]
    if detail is not None and len(cells) > cfg.max_crops:
        dh, dw = detail.shape[:2]
        fy, fx = dh / height, dw / width

        def energy(cell):
            y, x = cell
            return float(detail[int(y * fy):max(int((y + size) * fy), int(y * fy) + 1),
                                int(x * fx):max(int((x + size) * fx), int(x * fx) + 1)].mean())
        ranked = sorted(range(len(cells)), key=lambda k: (-energy(cells[k]), k))
        cells = [cells[k] for k in sorted(ranked[: cfg.max_crops])]
    else:
        cells = cells[: cfg.max_crops]
    return [CropBox(x, y, x + size, y + size, 1.0) for y, x in cells]


def apply_crop(rgb: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The size x size training image for ``box`` (area-averaged when it is scaled down)."""
    import cv2

    region = rgb[box.y0:box.y1, box.x0:box.x1]
    if region.shape[0] != size or region.shape[1] != size:
        region = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(region)
