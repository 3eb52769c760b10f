"""Pictures of what a profile does: a contact sheet of LQ variants of one crop, and HQ/LQ pair rows.

* ``contact_sheet(degrader, hq, n)``: the target and ``n`` LQ variants of one crop (PIL image; PNG if ``path``).
  ``supirkit degrade preview`` draws this.
* ``pair_rows(degrader, images)``: one row per crop, target | LQ (PIL image; PNG if ``path``).
* ``render_pairs(images, profile, seed=...)``: the same rows as an HxWx3 uint8 array, from any image size
  (each image is centre-cropped to the profile's ``hq_size`` first) and any profile spec (a Degrader, a
  DegradeConfig, a profile name or a YAML path).
* ``inspect_views(profile, seed=...)``: a ``(rgb, meta) -> [(label, rgb)]`` function, the per-sample view hook
  of ``inspection.render.make_tiles`` (``supirkit inspect --degrade CONFIG``).
* ``make_stored_pair_tiles(samples, thumb)``: tiles of the HQ/LQ pairs a test set holds (``supirkit testset``
  output), for ``supirkit inspect --degrade`` without a profile.

Under each tile the key parameters of its draw are written in a compact notation (``describe``):

    b1 aniso 13 s2.1/0.8 r0.52     first blur: family, size, sigmas, rotation (sinc: cutoff w)
    r1 down x0.53 bicubic          first resize
    n1 gauss 12.3 gray             first noise (Gaussian sigma on 0-255, or Poisson scale), gray or colour
    j1 q63                         first JPEG quality (libjpeg integer)
    b2 ... r2 ... n2 ...           second stage (b2 -: no second blur)
    f sinc>jpeg w1.20 q45 area     final order, sinc cutoff (or no sinc), JPEG quality, resize mode
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from supirkit.inspection.render import Cell, draw_sheet, fit_thumb, save_png

Params = dict[str, Any]


def _kernel(tag: str, k: Optional[Params]) -> str:
    if k is None:
        return f"{tag} -"
    if k["family"] == "sinc":
        return f"{tag} sinc {k['size']} w{k['cutoff']:.2f}"
    fam = k["family"].replace("generalized_", "gen_").replace("plateau_", "plat_")
    text = f"{tag} {fam} {k['size']} s{k['sigma_x']:.1f}"
    if "aniso" in k["family"]:
        text += f"/{k['sigma_y']:.1f} r{k['theta']:.2f}"
    if "beta" in k:
        text += f" b{k['beta']:.2f}"
    return text


def _noise(tag: str, n: Params) -> str:
    if n["kind"] == "none":
        return f"{tag} -"
    gray = " gray" if n["gray"] else ""
    if n["kind"] == "gaussian":
        return f"{tag} gauss {n['sigma']:.1f}{gray}"
    return f"{tag} poisson {n['scale']:.2f}{gray}"


def _resize(tag: str, r: Params) -> str:
    if r["direction"] == "keep":
        return f"{tag} keep {r['mode']}"
    return f"{tag} {r['direction']} x{r['scale']:.2f} {r['mode']}"


def describe(params: Params) -> list[str]:
    """Short lines naming the key parameters of one draw (see the module docstring)."""
    if params.get("pipeline") == "codeformer":
        return [_kernel("b", params["blur"]), f"down /{params['downsample']:.2f}",
                _noise("n", params["noise"]), f"jpeg q{params['jpeg']['quality_int']}"]
    if params.get("pipeline") == "classical":
        return [_kernel("k", params["blur"]), f"down {params['downsampler']}", _noise("n", params["noise"])]
    lines = []
    for i, stage in (("1", params["first"]), ("2", params["second"])):
        if stage is None:
            lines.append("second order skipped")
            continue
        lines.append(f"{_kernel('b' + i, stage['blur'])}")
        lines.append(f"{_resize('r' + i, stage['resize'])}")
        lines.append(f"{_noise('n' + i, stage['noise'])}  j{i} q{stage['jpeg']['quality_int']}")
    f = params["final"]
    order = "sinc>jpeg" if f["order"] == "sinc_then_jpeg" else "jpeg>sinc"
    sinc = f"w{f['sinc']['cutoff']:.2f}" if f["sinc"] else "no-sinc"
    lines.append(f"f {order} {sinc} q{f['jpeg']['quality_int']} {f['resize_mode']}")
    return lines


def _cell(img: np.ndarray, side: int, lines: Sequence[str], title: str) -> Cell:
    """The image fitted to ``side`` (nearest neighbour when enlarging, so LQ pixels stay visible) + text."""
    return Cell([("", fit_thumb(img, (side, side), enlarge=True))],
                [(title, (0, 0, 0))] + [(line, (60, 60, 60)) for line in lines])


def _sheet(cells: list[Cell], side: int, columns: int, path: Optional[str | Path]):
    sheet = draw_sheet(cells, side, columns, font_px=max(9, side // 22), background=(225, 225, 225))
    if path is not None:
        save_png(sheet, path)
    return sheet


def contact_sheet(degrader, hq: np.ndarray, n: int = 8, *, seed: int = 0, epoch: int = 0, key: str = "preview",
                  columns: int = 0, tile: int = 256, path: Optional[str | Path] = None):
    """The target and ``n`` LQ variants of one HQ crop (keys ``f"{key}/{i}"``), parameters under each."""
    if n < 1:
        raise ValueError("n must be >= 1")
    cells, target = [], None
    for i in range(n):
        target, lq, params = degrader(hq, seed=seed, epoch=epoch, key=f"{key}/{i}")
        cells.append(_cell(lq, tile, describe(params), f"#{i} LQ {lq.shape[1]}x{lq.shape[0]}"))
    title = "target (sharpened)" if degrader.config.sharpen.target_sharpened else "HQ (target)"
    cells.insert(0, _cell(target, tile, [degrader.config.name, f"seed {seed} epoch {epoch}"],
                          f"{title} {hq.shape[1]}x{hq.shape[0]}"))
    return _sheet(cells, tile, columns or min(len(cells), 5), path)


def pair_rows(degrader, images: Sequence[np.ndarray], *, keys: Optional[Sequence[Any]] = None, seed: int = 0,
              epoch: int = 0, tile: int = 256, path: Optional[str | Path] = None):
    """One row per HQ crop: target | LQ, with the LQ's parameters written under it."""
    if not images:
        raise ValueError("no images")
    keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
    if len(keys) != len(images):
        raise ValueError("keys and images differ in length")
    cells = []
    for hq, key in zip(images, keys):
        target, lq, params = degrader(hq, seed=seed, epoch=epoch, key=key)
        cells.append(_cell(target, tile, [f"key {key}"], f"target {hq.shape[1]}x{hq.shape[0]}"))
        cells.append(_cell(lq, tile, describe(params), f"LQ {lq.shape[1]}x{lq.shape[0]}"))
    return _sheet(cells, tile, 2, path)


# ------------------------------------------------------------------------------------------------ any-size inputs
def fit_crop(rgb: np.ndarray, side: Optional[int]) -> np.ndarray:
    """Centre crop to side x side (previews only: training crops come from the data pipeline). A smaller
    image is first enlarged (bicubic) until its short side is ``side``. ``side=None`` returns the image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    if side is None:
        return rgb
    from PIL import Image

    h, w = rgb.shape[:2]
    if min(h, w) < side:
        scale = side / min(h, w)
        size = (max(side, round(w * scale)), max(side, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
        h, w = rgb.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(rgb[top:top + side, left:left + side])


def _degrader(profile, overrides=()):
    from supirkit.degrade.pipeline import Degrader

    return Degrader.from_spec(profile, overrides)


def render_pairs(images: Sequence[np.ndarray], profile: Any = "supir", *, seed: int = 0, epoch: int = 0,
                 keys: Optional[Sequence[Any]] = None, tile: int = 256, overrides: Sequence[str] = (),
                 path: Optional[str | Path] = None) -> np.ndarray:
    """HQ/LQ pair rows for images of any size, as an HxWx3 uint8 RGB array (also a PNG when ``path``).

    ``profile``: a Degrader, a DegradeConfig, a profile name (``"supir"``) or a YAML path; ``overrides``:
    ``key.path=value`` strings. Each image is centre-cropped to the profile's ``hq_size`` (``fit_crop``) and
    degraded with ``key = keys[i]`` (default ``str(i)``), so a row is what training would see for that key.
    """
    degrader = _degrader(profile, overrides)
    crops = [fit_crop(img, degrader.config.hq_size) for img in images]
    sheet = pair_rows(degrader, crops, keys=keys, seed=seed, epoch=epoch, tile=tile, path=path)
    return np.asarray(sheet.convert("RGB"))


def inspect_views(profile: Any = "supir", *, seed: int = 0, epoch: int = 0, n: int = 1,
                  overrides: Sequence[str] = ()):
    """A view function for ``inspection.render.make_tiles(..., views=...)``: ``(rgb, meta) -> [(label, rgb)]``.

    For each sample it returns the target (only when the profile sharpens it) and ``n`` LQ variants
    (keys ``f"{key}/{i}"``; ``key`` is ``meta["key"]``, or ``sample-<call number>`` without one), each labelled
    with its size and JPEG qualities. ``rgb`` is centre-cropped to the profile's ``hq_size`` first; give it the
    full-size decode for a faithful view (a thumbnail is enlarged to fit, which softens it).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    degrader = _degrader(profile, overrides)
    side = degrader.config.hq_size
    counter = iter(range(1 << 62))

    def views(rgb: np.ndarray, meta: dict) -> list:
        key = meta.get("key") if isinstance(meta, dict) else None
        key = str(key) if key is not None else f"sample-{next(counter)}"
        hq = fit_crop(np.ascontiguousarray(rgb[..., :3]), side)
        out = []
        for i in range(n):
            target, lq, params = degrader(hq, seed=seed, epoch=epoch, key=key if n == 1 else f"{key}/{i}")
            if i == 0 and degrader.config.sharpen.target_sharpened:
                out.append(("target (USM)", target))
            out.append((_view_label(params, lq, i if n > 1 else None), lq))
        return out

    return views


def _view_label(params: Params, lq: np.ndarray, index: Optional[int]) -> str:
    name = "LQ" if index is None else f"LQ #{index}"
    if params.get("pipeline") == "codeformer":
        qs = [params["jpeg"]["quality_int"]]
    else:
        qs = [params["first"]["jpeg"]["quality_int"], params["final"]["jpeg"]["quality_int"]]
    lq_side = params["sizes"]["lq"]
    return f"{name} {lq_side[1]}x{lq_side[0]}->{lq.shape[1]}x{lq.shape[0]} q{'/'.join(map(str, qs))}"


def make_stored_pair_tiles(samples, thumb: int, max_pixels: Optional[int] = None, lq_field: str = "lq.png") -> list:
    """Tiles of the HQ/LQ pairs the samples hold themselves (a test set: the image and ``lq.png``), drawn by
    ``inspection.render.make_pair_tiles``; a sample without that member gets a tile saying so."""
    from supirkit.datapipe.decode import DEFAULT_MAX_PIXELS, decode_rgb
    from supirkit.inspection.render import make_pair_tiles

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    lq_of: dict = {}

    def remembered(items):
        for s in items:
            lq_of[s.key] = s.extra_images.get(lq_field)
            yield s

    def stored_pair(rgb, key):
        data = lq_of.pop(key, None)
        if data is None:
            raise ValueError(f"no {lq_field} member: not a test set sample")
        return rgb, decode_rgb(data, max_pixels)[0]

    return make_pair_tiles(remembered(samples), thumb, stored_pair, max_pixels)
