"""The member kept from a group of near duplicates (curation/keep.py): colour over grayscale, original over
re-encoded, larger, less compressed, sharper. Tested with the colour, gray, JPEG, PNG and WebP versions of
one photo through ``supirkit curate`` (the grouping, the scores and the choice are all the real ones)."""
from __future__ import annotations

import io

import numpy as np
import pytest

CURATE = ["--config", "curate/demo.yaml", "--set", "runner.executor=local", "--set", "runner.progress=none",
          "--set", "report.enabled=false"]


def _photo() -> np.ndarray:
    from supirkit.demo.samples import textured_photo

    return textured_photo(3, 384, 512)


def _encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _gray16(rgb: np.ndarray) -> bytes:
    from PIL import Image

    y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    buf = io.BytesIO()
    Image.fromarray((np.round(y).astype(np.uint16) * 257)).save(buf, format="PNG")  # a 16-bit gray PNG
    return buf.getvalue()


def _curate(folder, out, capsys) -> dict[str, dict]:
    from supirkit.cli import main
    from supirkit.datapipe.manifest import open_manifest

    assert main(["curate", str(folder), "--out", str(out), *CURATE]) in (0, 1), capsys.readouterr()
    rows = open_manifest(out / "__supirkit__" / "scores").to_table(
        columns=["source", "accepted", "reason", "dup_group", "duplicate_of"]).to_pylist()
    return {r["source"].rsplit("/", 1)[-1]: r for r in rows}


def test_the_colour_original_is_kept_over_gray_jpeg_and_webp_versions(tmp_path, capsys):
    rgb = _photo()
    folder = tmp_path / "in"
    folder.mkdir()
    # listing order puts the gray copy first: the old order (size, jpeg quality, sharpness) kept it
    (folder / "a_gray16.png").write_bytes(_gray16(rgb))
    (folder / "b_photo.jpg").write_bytes(_encode(rgb, "JPEG", quality=90))
    (folder / "c_photo.webp").write_bytes(_encode(rgb, "WEBP", quality=80))
    (folder / "d_photo.png").write_bytes(_encode(rgb, "PNG"))
    rows = _curate(folder, tmp_path / "out", capsys)
    assert len({r["dup_group"] for r in rows.values()}) == 1, rows  # one group of four
    assert [name for name, r in rows.items() if r["accepted"]] == ["d_photo.png"], rows
    for name in ("a_gray16.png", "b_photo.jpg", "c_photo.webp"):
        assert rows[name]["reason"] == "duplicate" and rows[name]["duplicate_of"].endswith("d_photo.png")


def test_a_png_made_from_the_jpeg_loses_to_the_jpeg(tmp_path, capsys):
    """The original is the JPEG; the PNG holds its pixels (JPEG blocks in a lossless file: a re-encode)."""
    rgb = _photo()
    jpeg = _encode(rgb, "JPEG", quality=85)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_from_jpeg.png").write_bytes(_encode(_decode(jpeg), "PNG"))
    (folder / "b_gray16.png").write_bytes(_gray16(rgb))
    (folder / "c_photo.jpg").write_bytes(jpeg)
    (folder / "d_photo.webp").write_bytes(_encode(rgb, "WEBP", quality=80))
    rows = _curate(folder, tmp_path / "out", capsys)
    assert len({r["dup_group"] for r in rows.values()}) == 1, rows
    assert [name for name, r in rows.items() if r["accepted"]] == ["c_photo.jpg"], rows


def test_keep_order_on_rows():
    from supirkit.curation.keep import DEFAULT_RANK_BY, rank

    def row(order, **kw):
        base = {"order": order, "is_grayscale": False, "lossless": False, "blockiness": 0.1, "short_side": 1000,
                "jpeg_quality": 90, "sharpness": 0.3, "bytes": 1000}
        return {**base, **kw}

    def best(*rows):
        return max(rows, key=lambda r: rank(r, DEFAULT_RANK_BY))["order"]

    assert best(row(0, is_grayscale=True, lossless=True, short_side=4000), row(1)) == 1  # colour first
    assert best(row(0, lossless=True, blockiness=0.4), row(1, jpeg_quality=70)) == 1  # a re-encode loses
    assert best(row(0, short_side=900, lossless=True), row(1, jpeg_quality=60)) == 1  # then larger
    assert best(row(0, jpeg_quality=None), row(1, jpeg_quality=75)) == 1  # lossy without a quality: last
    assert best(row(0, lossless=True), row(1, jpeg_quality=100, sharpness=0.9)) == 0  # lossless over JPEG
    assert best(row(0, sharpness=0.2), row(1, sharpness=0.4)) == 1
    assert best(row(0, bytes=2000), row(1)) == 1  # all else equal: the smaller file
    assert best(row(0), row(1)) == 0  # a full tie: the earlier input
    # older configs: a missing jpeg_quality (a lossless file) still ranks above every JPEG
    assert rank(row(0, jpeg_quality=None), ["jpeg_quality"])[0] == 101


@pytest.mark.parametrize("fmt, kw, lossless", [("PNG", {}, True), ("JPEG", {"quality": 90}, False),
                                                ("WEBP", {"quality": 80}, False), ("WEBP", {"lossless": True}, True),
                                                ("GIF", {}, False), ("BMP", {}, True), ("TIFF", {}, True)])
def test_lossless_is_read_from_the_format_and_webp_chunks(fmt, kw, lossless):
    from supirkit.curation.signals.jpeg import is_lossless
    from supirkit.datapipe.decode import probe

    data = _encode(_photo()[:64, :64], fmt, **kw)
    assert is_lossless(probe(data).format, data) is lossless
