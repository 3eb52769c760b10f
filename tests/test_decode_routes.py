"""The libjpeg-turbo route of ``datapipe.decode`` against the Pillow route (the decoding every stage used
before it): a corpus of generated and odd JPEGs decodes to identical arrays, or is rejected with the same
reason, at native size and at every DCT-domain reduction."""
from __future__ import annotations

import io

import numpy as np
import pytest


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    from supirkit.demo.samples import textured_photo

    return textured_photo(seed, h, w)


def _save(img, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=params.pop("format", "JPEG"), **params)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _sof_precision(data: bytes, bits: int) -> bytes:
    at = data.index(b"\xff\xc0") + 4  # marker, 2-byte length, then the sample precision
    return data[:at] + bytes([bits]) + data[at + 1:]


def _corpus() -> dict[str, bytes]:
    """name -> JPEG bytes; the ordinary ones (expected on the fast route) are not prefixed with ``odd_``."""
    from PIL import Image, ImageCms

    rgb = Image.fromarray(_photo(7, 97, 131))  # odd sizes: partial MCUs at the right and bottom
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big = Image.fromarray(_photo(8, 120, 176))
    out = {f"q{q}_{name}": _save(rgb, quality=q, subsampling=sub)
           for q in (75, 95) for name, sub in (("444", 0), ("422", 1), ("420", 2))}
    out.update({
        "gray": _save(rgb.convert("L"), quality=90),
        "progressive_420": _save(big, quality=90, progressive=True),
        "progressive_444": _save(big, quality=95, subsampling=0, progressive=True),
        "restart_blocks": _save(big, quality=90, restart_marker_blocks=3),
        "restart_rows_progressive": _save(big, quality=90, restart_marker_rows=1, progressive=True),
        "optimized_huffman": _save(big, quality=85, optimize=True),
        "icc_srgb": _save(rgb, quality=90, icc_profile=srgb),
        "adobe_rgb_colorspace": _save(rgb, quality=90, keep_rgb=True, subsampling=0),
        "tiny_1x1": _save(Image.fromarray(_photo(9, 16, 16)[:1, :1]), quality=90),
        "tiny_7x9": _save(Image.fromarray(_photo(10, 16, 16)[:7, :9]), quality=90),
        "trailing_bytes": _save(rgb, quality=90) + b"\x00garbage after the end of image",
        "mpo_two_frames": _save(big, format="MPO", save_all=True, append_images=[rgb], quality=90),
    })
    for k in range(1, 9):
        out[f"exif_orientation_{k}"] = _save(big, quality=90, subsampling=2, exif=_exif(k))
    cmyk = Image.fromarray(_photo(11, 64, 80)).convert("CMYK")
    good = out["q95_420"]
    scan = good.index(b"\xff\xda")
    corrupt = bytearray(good)
    corrupt[scan + 400:scan + 420] = bytes(20)  # damaged entropy-coded data
    out.update({
        "odd_cmyk": _save(cmyk, quality=90),
        "odd_cmyk_progressive": _save(cmyk, quality=90, progressive=True),
        "odd_12_bit": _sof_precision(good, 12),
        "odd_truncated_scan": good[: len(good) // 2],
        "odd_truncated_progressive": out["progressive_420"][: len(out["progressive_420"]) * 2 // 3],
        "odd_truncated_header": good[:120],
        "odd_no_end_marker": good[:-2],
        "odd_corrupt_scan": bytes(corrupt),
        "odd_junk_before_scan_marker": good[:scan] + b"\x00\x13\x37" + good[scan:],
    })
    return out


CORPUS = _corpus()
ORDINARY = [n for n in CORPUS if not n.startswith("odd_")]


def _outcome(fn):
    """("ok", array, header without its route) or ("rejected", reason)."""
    from dataclasses import replace

    from supirkit.datapipe.decode import DecodeError

    try:
        arr, header = fn()
    except DecodeError as exc:
        return ("rejected", exc.reason), None
    return ("ok", arr, replace(header, decoder="")), header.decoder


def _assert_same(fast, slow, name):
    assert fast[0] == slow[0], f"{name}: {fast[0]} vs {slow[0]}"
    if fast[0] == "rejected":
        assert fast == slow, name
        return
    _, a, ha = fast
    _, b, hb = slow
    assert ha == hb, name
    assert a.dtype == b.dtype == np.uint8 and a.flags["C_CONTIGUOUS"], name
    assert a.shape == b.shape, f"{name}: {a.shape} vs {b.shape}"
    assert np.array_equal(a, b), f"{name}: max difference {np.abs(a.astype(int) - b).max()}"


def _routes_agree(decode, name, *args, **kwargs):
    """Decode by the fast route and by Pillow alone (``fast=False``) and assert the same outcome; returns
    (fast outcome, route taken, Pillow-only outcome, route taken)."""
    fast, route = _outcome(lambda: decode(*args, **kwargs))
    slow, slow_route = _outcome(lambda: decode(*args, **kwargs, fast=False))
    _assert_same(fast, slow, name)
    return fast, route, slow, slow_route


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fast_route_decodes_like_the_pillow_route(name):
    from supirkit.datapipe.decode import decode_rgb

    fast, route, slow, slow_route = _routes_agree(decode_rgb, name, CORPUS[name])
    if name in ORDINARY:
        assert route == "libjpeg-turbo", f"{name} took the {route} route"
    if slow[0] == "ok":
        assert slow_route == "pillow"


@pytest.mark.parametrize("name", ORDINARY + ["odd_cmyk", "odd_truncated_scan", "odd_corrupt_scan"])
@pytest.mark.parametrize("min_side,side", [(8, "short"), (16, "short"), (40, "short"), (50, "long"),
                                           (1000, "short")])
def test_reduced_decoding_is_the_same_on_both_routes(name, min_side, side):
    from supirkit.datapipe.decode import decode_rgb_reduced

    fast, route, _, _ = _routes_agree(decode_rgb_reduced, name, CORPUS[name], min_side, side=side)
    if fast[0] == "ok":
        arr, header = fast[1], fast[2]
        full = (header.height, header.width)
        assert arr.shape[:2] == tuple(-(-d // header.reduction) for d in full)
        pick = min if side == "short" else max
        assert pick(arr.shape[:2]) >= min(min_side, pick(full))
        if name in ORDINARY and pick(full) >= 2 * min_side:
            assert header.reduction >= 2 and route == "libjpeg-turbo"


def test_reduction_rule_matches_pillows_draft():
    from PIL import Image

    from supirkit.datapipe.jpeg_turbo import reduction_for

    assert reduction_for(2560, 1600, 512) == 2 and reduction_for(2560, 1600, 400) == 4
    assert reduction_for(2560, 1600, 512, side="long") == 4 and reduction_for(2560, 1600, 0) == 1
    assert reduction_for(100, 100, 200) == 1 and reduction_for(8000, 6000, 10) == 8
    img = Image.open(io.BytesIO(CORPUS["progressive_420"]))  # 176 x 120
    for side in (10, 15, 29, 30, 31, 60, 61, 200):
        probe = Image.open(io.BytesIO(CORPUS["progressive_420"]))
        probe.draft("RGB", (side, side))
        assert probe.size[0] == -(-img.size[0] // reduction_for(*img.size, side)), side


def test_orientation_and_route_are_in_the_header():
    from supirkit.datapipe.decode import decode_rgb, decode_thumbnail, probe

    data = CORPUS["exif_orientation_6"]
    header = probe(data)
    assert (header.width, header.height, header.orientation, header.decoder) == (120, 176, 6, "")
    arr, header = decode_rgb(data)
    assert arr.shape == (176, 120, 3) and header.decoder == "libjpeg-turbo" and header.reduction == 1
    assert decode_rgb(CORPUS["odd_cmyk"])[1].decoder == "pillow"
    thumb, header = decode_thumbnail(data, 30)
    assert max(thumb.shape[:2]) == 30 and header.reduction == 4 and (header.width, header.height) == (120, 176)


def test_fast_route_keeps_the_pixel_limit_and_rejection_reasons():
    from supirkit.datapipe.decode import DecodeError, decode_rgb, decode_rgb_reduced

    data = CORPUS["q95_444"]
    for fn in (lambda: decode_rgb(data, 97 * 131 - 1), lambda: decode_rgb_reduced(data, 16, 97 * 131 - 1)):
        with pytest.raises(DecodeError) as err:
            fn()
        assert err.value.reason == "too_many_pixels"
    with pytest.raises(DecodeError) as err:
        decode_rgb(CORPUS["odd_truncated_scan"])
    assert err.value.reason == "truncated"
    with pytest.raises(ValueError):
        decode_rgb_reduced(data, 16, side="both")


@pytest.mark.parametrize("quality", [75, 90, 95, 100])
def test_jpeg_encoding_through_opencv_is_byte_identical_to_pillows(quality):
    from supirkit.datapipe.decode import _encode_pillow, encode_image

    rgb = _photo(12, 96, 136)
    assert encode_image(rgb, "jpg", quality) == _encode_pillow(rgb, "jpg", quality)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_encoding_through_opencv_keeps_the_pixels(level):
    from supirkit.datapipe.decode import _encode_pillow, decode_rgb, encode_image, probe

    rgb = _photo(13, 64, 96)
    data = encode_image(rgb, "png", level)
    assert probe(data).format == "PNG" and np.array_equal(decode_rgb(data)[0], rgb)
    assert np.array_equal(decode_rgb(_encode_pillow(rgb, "png", level))[0], rgb)
    with pytest.raises(ValueError):
        encode_image(rgb, "gif")


def _png_corpus() -> dict[str, bytes]:
    """name -> PNG bytes; ``fast_`` ones are expected on the OpenCV route, the others on Pillow's."""
    import cv2
    from PIL import Image

    rgb = _photo(14, 61, 83)
    img = Image.fromarray(rgb)
    plain = _save(img, format="PNG")
    idat = plain.index(b"IDAT")
    crc_broken = bytearray(plain)
    crc_broken[idat + 20] ^= 0xFF  # damaged compressed data, chunk CRC no longer matches
    return {
        "fast_rgb": plain,
        "fast_rgb_level_9": _save(img, format="PNG", compress_level=9),
        "fast_gray": _save(img.convert("L"), format="PNG"),
        "fast_opencv_written": cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes(),
        "fast_exif_orientation_6": _save(img, format="PNG", exif=_exif(6)),
        "rgb_16_bit": cv2.imencode(".png", (rgb.astype(np.uint16) * 257 + 3)[..., ::-1].copy())[1].tobytes(),
        "rgba": _save(img.convert("RGBA"), format="PNG"),
        "palette": _save(img.convert("P"), format="PNG"),
        "rgb_trns": _save(img, format="PNG", transparency=tuple(int(v) for v in rgb[0, 0])),
        "animated": _save(img, format="PNG", save_all=True, append_images=[img.convert("L").convert("RGB")]),
        "truncated": plain[: len(plain) // 2],
        "corrupt_idat": bytes(crc_broken),
    }


PNGS = _png_corpus()


@pytest.mark.parametrize("name", sorted(PNGS))
def test_png_route_decodes_like_the_pillow_route(name):
    from supirkit.datapipe.decode import decode_rgb

    fast, route, _, _ = _routes_agree(decode_rgb, name, PNGS[name])
    if name.startswith("fast_"):
        assert route == "opencv", f"{name} took the {route} route"
    elif fast[0] == "ok":
        assert route == "pillow", f"{name} took the {route} route"
