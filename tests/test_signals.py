"""Cheap signals on a real photograph (matplotlib's sample photo) and on generated images."""
from __future__ import annotations

import io

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from supirkit.curation.signals import ImageView, build_cheap_scorers, score_views  # noqa: E402
from supirkit.curation.signals.cheap import border_fraction, phash  # noqa: E402
from supirkit.curation.signals.jpeg import estimate_jpeg_quality, jpeg_quality_of  # noqa: E402


def _real_photo() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _synthetic_photo() -> np.ndarray:
    from supirkit.demo.samples import textured_photo

    return textured_photo(3, 384, 512)


def _signals(rgb: np.ndarray, data: bytes = b"") -> dict:
    scorers = build_cheap_scorers(["detail", "jpeg", "texture", "colour", "borders", "phash"])
    return score_views(scorers, [ImageView(rgb, None, data)])[0]


def _jpeg(rgb: np.ndarray, q: int, subsampling: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=q, subsampling=subsampling)
    return buf.getvalue()


@pytest.mark.parametrize("make", [_real_photo, _synthetic_photo], ids=["real", "synthetic"])
def test_more_blur_lowers_sharpness_monotonically(make):
    rgb = make()
    values = []
    for sigma in (0.0, 0.7, 1.2, 2.0, 3.0):
        img = rgb if sigma == 0 else cv2.GaussianBlur(rgb, (0, 0), sigma)
        values.append(_signals(img)["sharpness"])
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize("quality", [10, 25, 50, 61, 75, 85, 90, 95, 100])
@pytest.mark.parametrize("subsampling", [0, 2])
def test_jpeg_quality_estimate_within_5_of_the_encoder_setting(quality, subsampling):
    rgb = _synthetic_photo()[:128, :128]
    q, err = jpeg_quality_of(_jpeg(rgb, quality, subsampling))
    assert abs(q - quality) <= 5
    assert err is not None and err < 0.05


def test_jpeg_quality_is_missing_for_lossless_files_and_approximate_for_foreign_tables():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_synthetic_photo()[:64, :64]).save(buf, format="PNG")
    assert jpeg_quality_of(buf.getvalue()) == (None, None)
    assert estimate_jpeg_quality(None) == (None, None)
    # a table the standard formula never produces (flat 3s, like some cameras): nearest setting, with an error
    q, err = estimate_jpeg_quality({0: [3] * 64})
    assert 85 <= q <= 100 and err > 0


def test_noise_estimate_tracks_the_added_gaussian_sigma():
    base = cv2.GaussianBlur(_synthetic_photo(), (0, 0), 1.0)  # little native noise left
    rng = np.random.default_rng(0)
    estimates = []
    for sigma in (0.0, 2.0, 5.0, 10.0, 20.0):
        noise = rng.normal(0, sigma, base.shape[:2])[..., None]  # the same on R, G, B: gray sigma = sigma
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        estimates.append(_signals(img)["noise_sigma"])
    assert all(a < b for a, b in zip(estimates, estimates[1:])), estimates
    for sigma, est in zip((2.0, 5.0, 10.0, 20.0), estimates[1:]):
        assert abs(est - sigma) <= 0.25 * sigma + 0.6, (sigma, est)


@pytest.mark.parametrize("make", [_real_photo, _synthetic_photo], ids=["real", "synthetic"])
def test_a_4x_bicubic_upscale_is_flagged(make):
    rgb = make()
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    orig, upscaled = _signals(rgb), _signals(up)
    assert orig["effective_scale"] >= 0.9
    assert upscaled["effective_scale"] <= 0.5
    assert upscaled["effective_short_side"] <= min(h, w) // 2


def test_flat_graphics_are_flat_and_photos_are_textured():
    from supirkit.demo.samples import flat_graphic

    graphic = _signals(flat_graphic(1, 384, 512))
    photo = _signals(_synthetic_photo())
    assert graphic["flat_fraction"] > 0.5 > photo["flat_fraction"]
    assert graphic["texture_fraction"] < photo["texture_fraction"]
    assert graphic["texture"] < 1.0 < photo["texture"]


def test_compression_shows_as_blockiness_without_a_jpeg_header():
    from PIL import Image

    rgb = _real_photo()
    blocky = np.asarray(Image.open(io.BytesIO(_jpeg(rgb, 8, 2))).convert("RGB"))
    assert _signals(blocky)["blockiness"] > 2 * _signals(rgb)["blockiness"] + 0.2


def test_colour_grayscale_and_borders():
    rgb = _real_photo()
    gray = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert _signals(gray)["is_grayscale"] and not _signals(_synthetic_photo())["is_grayscale"]
    assert _signals(gray)["colourfulness"] < 1.0 < _signals(rgb)["colourfulness"]
    boxed = rgb.copy()
    boxed[:60] = 0
    boxed[-60:] = 0  # letterbox bars
    assert border_fraction(boxed) == pytest.approx(60 / rgb.shape[0], abs=0.02)
    assert border_fraction(rgb) < 0.02


def test_perceptual_hash_matches_reencoded_copies_only():
    from PIL import Image

    a = _synthetic_photo()
    copy = np.asarray(Image.open(io.BytesIO(_jpeg(a, 70))).convert("RGB"))
    other = _real_photo()

    def h(x):
        return ImageView(x).small_gray

    dist = lambda p, q: bin(int(p, 16) ^ int(q, 16)).count("1")  # noqa: E731  (16 hex digits, imagehash's form)
    assert dist(phash(h(a)), phash(h(copy))) <= 4
    assert dist(phash(h(a)), phash(h(other))) > 12


def test_quantisation_tables_read_from_the_markers_match_pillow():
    from PIL import Image

    from supirkit.curation.signals.jpeg import read_quantization

    rgb = _synthetic_photo()[:64, :64]
    for q in (5, 50, 90, 100):
        for subsampling in (0, 2):
            data = _jpeg(rgb, q, subsampling)
            pillow = {k: list(v) for k, v in Image.open(io.BytesIO(data)).quantization.items()}
            assert read_quantization(data) == pillow
    with open(__import__("matplotlib").cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        camera = f.read()  # written by another encoder than the test's
    assert read_quantization(camera) == {k: list(v) for k, v in Image.open(io.BytesIO(camera)).quantization.items()}
    assert read_quantization(b"\x89PNG\r\n\x1a\n") is None and read_quantization(b"") is None
