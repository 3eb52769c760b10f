"""Generated sample photos for the demo and tests: no dataset can be downloaded here.

The "good" images are procedural but photo-like at the pixel level: multi-scale texture (fractal
noise), hard edges and fine detail up to the Nyquist frequency, with mild sensor-like grain. The bad
ones are made from good ones the way real corpora go bad: blur, noise, heavy JPEG, upscaling from a
small original, flat synthetic graphics, near-duplicates (re-encoded or resized copies), too-small
images and corrupt files.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def _fractal(rng: np.random.Generator, h: int, w: int, octaves: int = 7) -> np.ndarray:
    import cv2

    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gh, gw = max(2, h >> (octaves - o)), max(2, w >> (octaves - o))
        layer = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * cv2.resize(layer, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.62
    out /= total
    return (out - out.mean()) / (out.std() + 1e-6)


def textured_photo(seed: int, height: int, width: int) -> np.ndarray:
    """A sharp, texture-rich, colourful RGB image (uint8)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = np.stack([_fractal(rng, height, width) for _ in range(3)], -1)
    mix = rng.normal(0, 1, (3, 3)).astype(np.float32)
    img = 128 + 38 * (base @ mix) / np.sqrt(3)
    # hard-edged shapes: objects with their own fine texture
    for _ in range(int(rng.integers(6, 14))):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(min(height, width) // 16, min(height, width) // 4))
        colour = rng.uniform(30, 225, 3)
        mask = np.zeros((height, width), np.uint8)
        if rng.random() < 0.5:
            cv2.circle(mask, (cx, cy), r, 1, -1)
        else:
            cv2.rectangle(mask, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
        detail = 24 * _fractal(rng, height, width, octaves=4)[..., None]
        img = np.where(mask[..., None] > 0, colour + detail, img)
    # stripes and fine lines (high-frequency content an upscale would remove)
    yy, xx = np.mgrid[0:height, 0:width]
    freq = rng.uniform(0.25, 0.45)
    img += 10 * np.sin(freq * xx + 0.3 * yy)[..., None]
    img += rng.normal(0, 2.0, img.shape)  # mild grain
    return np.clip(img, 0, 255).astype(np.uint8)


def flat_graphic(seed: int, height: int, width: int) -> np.ndarray:
    """Vector-art-like: a smooth gradient and a few flat shapes, no texture."""
    import cv2

    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = np.broadcast_to(a * (1 - t) + b * t, (height, width, 3)).copy()
    for _ in range(4):
        cv2.circle(img, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                   int(rng.integers(20, max(21, width // 5))), tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_sample_folder(out_dir: str | Path, size: int = 384, n_good: int = 6, seed: int = 0) -> dict[str, str]:
    """Write the demo's sample folder; returns file name -> what it is ("good", "blurred", ...).

    ``size`` is the short side of the "high-resolution" images (the demo uses a small size so that it
    runs in minutes on 2 cores; the curation config for the demo scales its thresholds to match).
    """
    import cv2

    if n_good < 5:  # before writing anything: no half-made folder
        raise ValueError("n_good must be at least 5 (the degraded variants are made from distinct photos)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth: dict[str, str] = {}
    goods = []
    for i in range(n_good):
        h, w = size, int(size * rng.choice([1.0, 1.33, 1.5]))
        if i % 3 == 2:
            h, w = w, h  # some portrait images
        img = textured_photo(seed * 1000 + i, h, w)
        goods.append(img)
        name = f"photo_{i:02d}." + ("png" if i % 4 == 3 else "jpg")
        (out / name).write_bytes(_png(img) if name.endswith("png") else _jpeg(img, 97))
        truth[name] = "good"
    g = goods[0]
    (out / "blurred.jpg").write_bytes(_jpeg(cv2.GaussianBlur(g, (0, 0), 3.0), 95))
    truth["blurred.jpg"] = "blurred"
    noisy = np.clip(goods[1].astype(np.float32) + rng.normal(0, 25, goods[1].shape), 0, 255).astype(np.uint8)
    (out / "noisy.jpg").write_bytes(_jpeg(noisy, 95))
    truth["noisy.jpg"] = "noisy"
    (out / "compressed.jpg").write_bytes(_jpeg(goods[2], 12))
    truth["compressed.jpg"] = "compressed"
    h, w = goods[3].shape[:2]
    small = cv2.resize(goods[3], (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    (out / "upscaled.jpg").write_bytes(_jpeg(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 95))
    truth["upscaled.jpg"] = "upscaled"
    (out / "graphic.png").write_bytes(_png(flat_graphic(seed, size, int(size * 1.5))))
    truth["graphic.png"] = "flat_graphic"
    (out / "tiny.jpg").write_bytes(_jpeg(textured_photo(seed + 77, size // 4, size // 3), 95))
    truth["tiny.jpg"] = "too_small"
    # near-duplicate: the same photo re-encoded at another quality; exact duplicate: same bytes
    (out / "photo_00_copy.jpg").write_bytes(_jpeg(goods[0], 90))
    truth["photo_00_copy.jpg"] = "near_duplicate"
    (out / "photo_01_same.jpg").write_bytes((out / "photo_01.jpg").read_bytes())
    truth["photo_01_same.jpg"] = "exact_duplicate"
    data = _jpeg(goods[4], 95)
    (out / "truncated.jpg").write_bytes(data[: len(data) // 3])
    truth["truncated.jpg"] = "corrupt"
    (out / "notes.jpg").write_bytes(b"this is a text file, not an image\n")
    truth["notes.jpg"] = "corrupt"
    (out / "_truth.json").write_text(json.dumps(truth, indent=1))
    return truth
