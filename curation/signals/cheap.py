"""Cheap signals: CPU only, no weights, a few milliseconds per image.

Fine-detail signals (sharpness, noise, blockiness, effective resolution) are computed on a few
native-resolution gray tiles, because any downscaling hides exactly the defects they look for. Global
signals (texture, colour, borders, perceptual hash) use the small area-averaged copy.

Band energies: the windowed spectrum of a tile is split into octaves; band k holds the frequencies
between 1/2^(k+1) and 1/2^k of the Nyquist frequency. Natural photographs have roughly equal mean-square
energy per octave (a 1/f amplitude spectrum), so the finest bands relative to coarser ones tell how
much real detail the image carries at its native resolution. White noise adds a known amount to each
band (``_noise_band_gain``), which is removed so that noise does not pass for detail.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from supirkit.curation.signals.base import ImageView, Scorer
from supirkit.curation.signals.jpeg import is_lossless, jpeg_quality_of

N_BANDS = 4


# ------------------------------------------------------------------------------------------- primitives

@lru_cache(maxsize=8)
def _band_index(h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window, per bin of the real (half) spectrum its octave band (0 = 1/4..1/2 cycles per pixel, ...;
    -1 = outside), and the bin's weight (2 for bins that stand for their mirrored twin, else 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fy * fy + fx * fx)
    band = np.full(r.shape, -1, np.int64)
    for k in range(n):
        band[(r > 0.5 / 2 ** (k + 1)) & (r <= 0.5 / 2 ** k)] = k
    weight = np.full(r.shape, 2.0)
    weight[:, 0] = 1.0
    if w % 2 == 0:
        weight[:, -1] = 1.0
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    window /= np.sqrt(np.mean(window * window))  # keep white-noise power per bin independent of the window
    sel = band >= 0
    return window, band[sel], (weight[sel], sel)


@lru_cache(maxsize=8)
def _band_matrix(h: int, w: int, n: int) -> np.ndarray:
    """(n, bins) matrix summing each band's weighted power: one matrix-vector product per tile instead of
    a boolean selection and a weighted bincount (several times faster, the same sums)."""
    _, band, (weight, sel) = _band_index(h, w, n)
    m = np.zeros((n, sel.size))
    m[band, np.flatnonzero(sel.ravel())] = weight
    return m


def block_means(a: np.ndarray, block: int) -> np.ndarray:
    """Means of the whole ``block`` x ``block`` blocks of a float32 plane (the remainder rows and columns
    left out). OpenCV's area resize at an integer factor is exactly this average and runs an order of
    magnitude faster than a NumPy mean over a reshaped 4-d view (strided reductions)."""
    import cv2

    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    if h == 0 or w == 0:
        return np.zeros((0, 0), np.float32)
    return cv2.resize(np.ascontiguousarray(a[:h, :w]), (w // block, h // block), interpolation=cv2.INTER_AREA)


def band_energies(tile: np.ndarray, n: int = N_BANDS) -> np.ndarray:
    """Energy of one gray float32 tile in octave bands 0..n-1 of its (Hann-windowed) spectrum.

    Band k holds the frequencies between 1/2^(k+2) and 1/2^(k+1) cycles per pixel. Energies are
    normalised so that white noise of variance s^2 gives s^2 times the band's share of the spectrum.
    The real-input half spectrum is enough (the other half mirrors it): half the work of a full DFT.
    """
    import scipy.fft

    h, w = tile.shape
    window = _band_index(h, w, n)[0]
    # scipy's pocketfft keeps float32 input in single precision: about twice numpy's speed here
    spec = scipy.fft.rfft2((tile - float(tile.mean())) * window)
    power = spec.real * spec.real + spec.imag * spec.imag
    return (_band_matrix(h, w, n) @ power.ravel()) / float(h * w) ** 2


@lru_cache(maxsize=1)
def _noise_band_gain() -> np.ndarray:
    """Band energy that unit-variance white noise puts in each band (its share of the DFT bins)."""
    _, band, (weight, _) = _band_index(256, 256, N_BANDS)
    return np.bincount(band, weights=weight, minlength=N_BANDS)[:N_BANDS] / float(256 * 256)


def noise_sigma(tiles: list[np.ndarray], block: int = 16, percentile: float = 20.0) -> float:
    """Gaussian noise level (in 8-bit gray levels) from the flattest blocks of the tiles.

    Immerkaer's estimator (a Laplacian-difference mask that cancels linear gradients) per block; the
    low percentile over blocks keeps it from mistaking texture for noise. Blocks near black or white
    are skipped (clipping hides noise there).
    """
    import cv2

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    sig = []
    for t in tiles:
        r = np.abs(cv2.filter2D(t, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
        rb, mb = block_means(r, block), block_means(t[1:-1, 1:-1], block)
        if rb.size == 0:
            continue
        ok = (mb > 12) & (mb < 243)
        sig.append(rb[ok])
    if not sig:
        return 0.0
    vals = np.concatenate(sig)
    if vals.size == 0:
        return 0.0
    # mean |mask response| = sqrt(2/pi) * sigma * ||kernel||_2, with ||kernel||_2 = 6
    return float(np.percentile(vals, percentile) * np.sqrt(np.pi / 2) / 6.0)


#: noise below this is not subtracted more precisely than this: 8-bit rounding and JPEG quantisation
#: leave a white floor of about this level even in images without any fine detail
NOISE_FLOOR = 0.4
LEAK = 1e-3


def mean_band_energies(tiles: list[np.ndarray]) -> np.ndarray:
    e = np.zeros(N_BANDS)
    for t in tiles:
        e += band_energies(t)
    return e / max(len(tiles), 1)


def detail_bands(tiles: list[np.ndarray], sigma: float, energies: np.ndarray | None = None) -> np.ndarray:
    """Noise-corrected band amplitudes (sqrt of the mean band energy over the tiles)."""
    e = mean_band_energies(tiles) if energies is None else energies
    s = max(sigma, NOISE_FLOOR)
    # a small share of the raw energy is kept, so that a band below the noise floor still ranks by
    # its energy instead of clamping to zero
    return np.sqrt(np.maximum(e - _noise_band_gain() * s * s, 0.0) + LEAK * e)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 1e-6 else 0.0


#: weight of the next octave in the sharpness numerator (see ``sharpness_from_energies``)
NEXT_OCTAVE = 0.01


def sharpness_from_energies(e: np.ndarray, sigma: float) -> float:
    """Finest octave (1/4..1/2 cycles/pixel) relative to the octave two steps coarser, which blur and
    upscaling leave intact: about 0.15-0.6 for sharp photographs, under 0.07 for visibly blurred ones.

    The finest octave is noise-corrected. Once blur has pushed it under the 8-bit rounding floor it
    stops changing, while the reference octave keeps shrinking; a small share of the next octave
    (which blur removes more slowly) is added so that more blur always reads as less sharp."""
    s = max(sigma, NOISE_FLOOR)
    clean = np.sqrt(np.maximum(e - _noise_band_gain() * s * s, 0.0))
    a = detail_bands([], sigma, e)
    return _ratio(float(clean[0]) + NEXT_OCTAVE * float(a[1]), float(a[2]))


def sharpness_from_bands(a: np.ndarray) -> float:
    """a0/a2 of already noise-corrected amplitudes (kept for callers holding amplitudes only)."""
    return _ratio(a[0], a[2])


def effective_scale_from_bands(a: np.ndarray, present: float = 0.18, missing: float = 0.06) -> float:
    """Fraction of the nominal resolution the image really has (1 = detail down to the pixel).

    The finest octave relative to two octaves coarser (a0/a2), and the next one likewise (a1/a3):
    at or above ``present`` an octave is there, at or below ``missing`` it is gone. The soft count m
    of missing leading octaves gives 2**-m: a 2x upscale reads about 0.5, a 4x upscale about 0.25.
    """
    m0 = float(np.clip((present - _ratio(a[0], a[2])) / (present - missing), 0.0, 1.0))
    m1 = float(np.clip((present - _ratio(a[1], a[3])) / (present - missing), 0.0, 1.0))
    return float(2.0 ** -(m0 + m0 * m1))


def blockiness(tiles: list[np.ndarray]) -> float:
    """JPEG block artefacts: how much more the image changes across one of the 8 pixel phases than
    across the typical phase (0 for clean images; 0.3+ for visible 8x8 blocks). Tiles start on the
    8-pixel grid, so phase 7 of the differences is the JPEG block boundary of an uncropped file."""
    import cv2

    ph = np.zeros(8)
    for t in tiles:
        dx = cv2.absdiff(t[:, 1:], t[:, :-1])
        dy = cv2.absdiff(t[1:], t[:-1])
        wx, hy = (dx.shape[1] // 8) * 8, (dy.shape[0] // 8) * 8
        if wx == 0 or hy == 0:
            continue
        # mean per phase: sum along the contiguous axis first, then fold the phases (no strided reduction)
        ph += dx[:, :wx].sum(axis=0, dtype=np.float64).reshape(-1, 8).sum(axis=0) / (dx.shape[0] * wx // 8)
        ph += dy[:hy].sum(axis=1, dtype=np.float64).reshape(-1, 8).sum(axis=0) / (hy // 8 * dy.shape[1])
    med = float(np.median(ph))
    return float(ph.max() / med - 1.0) if med > 1e-6 else 0.0


def texture_stats(detail: np.ndarray, block: int = 8, flat_level: float = 0.6,
                  texture_level: float = 3.0) -> tuple[float, float, float]:
    """(flat_fraction, texture_fraction, texture) from |Laplacian| of the small copy, per block:
    flat blocks have (nearly) no second-order change, textured blocks a lot; texture is the median."""
    b = block_means(detail, block)
    if b.size == 0:
        return 1.0, 0.0, 0.0
    return float((b < flat_level).mean()), float((b >= texture_level).mean()), float(np.median(b))


def colourfulness(rgb: np.ndarray) -> tuple[float, float]:
    """(Hasler-Suesstrunk colourfulness, mean chroma max-min in levels)."""
    # per-channel planes, not reductions over the 3-long last axis (numpy is slow at those)
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    c = float(np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    chroma = float((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).mean())
    return c, chroma


def border_fraction(rgb: np.ndarray, std_max: float = 3.0, mean_tol: float = 10.0, edge_min: float = 12.0) -> float:
    """Largest fraction of the width/height taken by a uniform band along one edge (letterboxing,
    frames). A band counts only if it ends in a clear edge, so a smooth clear sky is not a border."""
    h, w = rgb.shape[:2]
    best = 0.0
    # each edge as a function giving its lines i..j (counted from that edge) as (lines, pixels) rows
    edges = (
        (h, lambda i, j: rgb[i:j]),
        (h, lambda i, j: rgb[h - j:h - i][::-1]),
        (w, lambda i, j: rgb[:, i:j].transpose(1, 0, 2)),
        (w, lambda i, j: rgb[:, w - j:w - i][:, ::-1].transpose(1, 0, 2)),
    )
    chunk = 16
    for size, lines_of in edges:
        limit = size // 3
        first = None
        n, start = 0, 0
        # lines are looked at a chunk at a time: most images stop at the first line
        while n < limit and n == start:
            stop = min(start + chunk, limit + 1)
            block = lines_of(start, stop).reshape(stop - start, -1)
            block = block.astype(np.float32)
            means, stds = block.mean(axis=1), block.std(axis=1)
            if first is None:
                first = float(means[0])
            for m, sd in zip(means, stds):
                if n < limit and sd < std_max and abs(m - first) < mean_tol:
                    n += 1
                else:
                    break
            start += len(means)
        if n == 0 or n >= limit:
            continue
        band = lines_of(0, n).reshape(n, -1).astype(np.float32).mean(axis=0)
        nxt = lines_of(n, n + 1).reshape(1, -1).astype(np.float32)[0]
        if float(np.abs(nxt - band).mean()) >= edge_min:
            best = max(best, n / size)
    return best


def phash(gray: np.ndarray) -> str:
    """64-bit perceptual hash (DCT of a 32x32 thumbnail, 8x8 low frequencies vs their median) as 16 hex
    digits, bits in imagehash's order (``str(imagehash.phash(img))`` has the same form)."""
    import cv2

    thumb = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(thumb)[:8, :8].flatten()
    bits = low > np.median(low)
    return np.packbits(bits).tobytes().hex()


# ------------------------------------------------------------------------------------------- scorers

class FineDetailScorer(Scorer):
    """sharpness, noise_sigma, effective_scale, effective_short_side (native tiles, one pyramid)."""

    name = "detail"
    columns = ("sharpness", "noise_sigma", "effective_scale", "effective_short_side")

    def score(self, view: ImageView) -> dict:
        sigma = noise_sigma(view.detail_tiles + view.flat_tiles)
        e = mean_band_energies(view.detail_tiles)
        scale = effective_scale_from_bands(detail_bands([], sigma, e))
        return {"sharpness": round(sharpness_from_energies(e, sigma), 4), "noise_sigma": round(sigma, 3),
                "effective_scale": round(scale, 3),
                "effective_short_side": int(round(scale * min(view.width, view.height)))}


class JpegScorer(Scorer):
    """jpeg_quality (exact from the tables when the file is a JPEG), whether the file is lossless (from its
    format) and blockiness (any format: JPEG block artefacts, also in a PNG made from a JPEG)."""

    name = "jpeg"
    columns = ("jpeg_quality", "jpeg_table_error", "lossless", "blockiness")

    def score(self, view: ImageView) -> dict:
        q, err = jpeg_quality_of(view.data) if view.data else (None, None)
        fmt = view.header.format if view.header is not None else None
        return {"jpeg_quality": q, "jpeg_table_error": None if err is None else round(err, 4),
                "lossless": is_lossless(fmt, view.data),
                "blockiness": round(blockiness(view.detail_tiles + view.flat_tiles), 4)}


class TextureScorer(Scorer):
    name = "texture"
    columns = ("flat_fraction", "texture_fraction", "texture")
    needs_native = False

    def score(self, view: ImageView) -> dict:
        flat, tex, med = texture_stats(view.small_detail)
        return {"flat_fraction": round(flat, 4), "texture_fraction": round(tex, 4), "texture": round(med, 3)}


class ColourScorer(Scorer):
    name = "colour"
    columns = ("colourfulness", "chroma", "is_grayscale")
    needs_native = False

    def score(self, view: ImageView) -> dict:
        # every other pixel of the small copy: these are global statistics, a quarter of the pixels
        # gives the same values to the precision they are used at
        c, chroma = colourfulness(view.small[::2, ::2])
        return {"colourfulness": round(c, 3), "chroma": round(chroma, 3), "is_grayscale": bool(chroma < 2.0)}


class BorderScorer(Scorer):
    name = "borders"
    columns = ("border_fraction",)
    needs_native = False

    def score(self, view: ImageView) -> dict:
        return {"border_fraction": round(border_fraction(view.small), 4)}


class PHashScorer(Scorer):
    name = "phash"
    columns = ("phash",)
    needs_native = False

    def score(self, view: ImageView) -> dict:
        return {"phash": phash(view.small_gray)}


CHEAP_SCORERS = {cls.name: cls for cls in (FineDetailScorer, JpegScorer, TextureScorer, ColourScorer,
                                           BorderScorer, PHashScorer)}
