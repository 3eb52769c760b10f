"""A folder of inputs that break naive image pipelines, with the outcome each one must get.

``make_torture_folder(root)`` writes the files and returns ``{name: expected}`` where ``name`` is the
input's path relative to ``root`` (``tar#member`` for a tar member; ``os.fsdecode`` form for a file
name that is not UTF-8) and ``expected`` is ``"ok"`` (becomes a sample) or the rejection reason code.
Pass ``torture_sources(root)`` to ``supirkit shard``: the folder itself plus a path list naming a file
that does not exist (the deterministic stand-in for a file that vanishes between listing and reading).

Used by tests/test_shard_torture.py and by the end-to-end drills. Everything is tiny and cheap to
write: the 30000x30000 PNG bomb is a valid header plus an IDAT of compressed zeros (~1 MB on disk),
written chunk by chunk, never a full pixel array in memory.
"""
from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

#: the path list (inside the folder; the folder walk ignores it because it is not an image or a tar)
LIST_NAME = "_vanished_list.parquet"
#: a file the list names but that never exists
VANISHED = "vanished.jpg"
#: geometry of the EXIF-rotated photo as stored (before orientation 6 = rotate 90 degrees)
EXIF_STORED_SIZE = (48, 24)
BOMB_SIDE = 30000
#: a file name that is not valid UTF-8 (latin-1 "café.jpg")
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_raw(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows) -> None:
    """A PNG from an iterable of raw scanlines (filter byte included), compressed as they come."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)))
        comp = zlib.compressobj(9)
        for row in rows:
            out = comp.compress(row)
            if out:
                f.write(_png_chunk(b"IDAT", out))
        f.write(_png_chunk(b"IDAT", comp.flush()))
        f.write(_png_chunk(b"IEND", b""))


def write_png_bomb(path: Path, side: int = BOMB_SIDE) -> None:
    """An RGB PNG of side x side black pixels (2.7 GB decoded at 30000) whose file is a few megabytes.

    Written in well under a second: a block of rows is deflated once and its compressed bytes are
    repeated (a full flush makes each repeat independent of what came before), so the compressor
    never sees the gigabytes; the zlib checksum of all-zero data is a closed formula."""
    row = bytes(1 + 3 * side)  # filter byte 0 + black pixels
    rows_per_block = max(1, (1 << 22) // len(row))
    n_blocks, rest = divmod(side, rows_per_block)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(row * rows_per_block) + raw.flush(zlib.Z_FULL_FLUSH)
    raw_tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = raw_tail.compress(row * rest) + raw_tail.flush(zlib.Z_FINISH)
    # adler32 of n zero bytes: a stays 1, b counts the bytes (mod 65521)
    adler = ((len(row) * side) % 65521) << 16 | 1
    stream_head = b"\x78\xda"
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        f.write(_png_chunk(b"IDAT", stream_head))
        for _ in range(n_blocks):
            f.write(_png_chunk(b"IDAT", block))
        f.write(_png_chunk(b"IDAT", tail + struct.pack(">I", adler & 0xFFFFFFFF)))
        f.write(_png_chunk(b"IEND", b""))


def _exif_rotated_jpeg() -> bytes:
    from PIL import Image

    w, h = EXIF_STORED_SIZE
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    return _jpeg(_texture(h, w, 9), exif=exif.tobytes())


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_torture_folder(root: str | Path) -> dict[str, str]:
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (root / name).write_bytes(data)
        expected[name] = outcome

    good = _jpeg(_texture(32, 40, 1))
    put("good.jpg", good, "ok")
    put("truncated.jpg", _jpeg(_texture(64, 64, 2))[:700], "truncated")
    put("zero.jpg", b"", "zero_bytes")
    put("text.jpg", b"this is not an image, just text named like one\n" * 4, "not_an_image")
    write_png_bomb(root / "bomb.png")
    expected["bomb.png"] = "too_many_pixels"

    cmyk = Image.fromarray(_texture(24, 24, 3)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=90)
    put("cmyk.jpg", buf.getvalue(), "ok")

    # 16-bit RGB (color type 2, depth 16) and 16-bit gray (color type 0), written by hand: Pillow
    # cannot write 16-bit RGB PNGs
    rgb16 = (np.arange(16 * 20 * 3, dtype=np.uint16).reshape(16, 20, 3) * 97).astype(">u2")
    write_png_raw(root / "rgb16.png", 20, 16, 16, 2, (b"\x00" + r.tobytes() for r in rgb16))
    expected["rgb16.png"] = "ok"
    gray16 = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200).astype(">u2")
    write_png_raw(root / "gray16.png", 20, 16, 16, 0, (b"\x00" + r.tobytes() for r in gray16))
    expected["gray16.png"] = "ok"

    pal = Image.fromarray(_texture(20, 20, 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    put("palette_alpha.png", buf.getvalue(), "ok")

    frames = [Image.fromarray(_texture(16, 16, 10 + i)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    put("animated.gif", buf.getvalue(), "ok")

    put("exif_rotated.jpg", _exif_rotated_jpeg(), "ok")

    buf = io.BytesIO()
    Image.fromarray(_texture(2, 4000, 5)).save(buf, format="PNG")
    put("extreme_aspect.png", buf.getvalue(), "extreme_aspect_ratio")

    # a JPEG named .png: the format comes from the bytes, not the name
    put("jpeg_named.png", _jpeg(_texture(20, 30, 6)), "ok")

    (root / "folder.jpg").mkdir()
    expected["folder.jpg"] = "is_directory"

    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    expected["loop_a.jpg"] = "bad_symlink"
    expected["loop_b.jpg"] = "bad_symlink"

    dup = _jpeg(_texture(24, 30, 7))
    put("dup_a.jpg", dup, "ok")  # first in listing order: the one kept
    put("dup_b.jpg", dup, "duplicate")

    (root / NON_UTF8_NAME).write_bytes(_jpeg(_texture(20, 28, 8)))
    expected[NON_UTF8_NAME] = "ok"

    evil = _tar_bytes([("../escape.jpg", good[:-1] + b"\xd9"), ("/abs/path.jpg", _jpeg(_texture(8, 8, 11))),
                       ("inner.jpg", _jpeg(_texture(18, 18, 12))),
                       ("inner.json", b'{"caption_source": "upstream"}'), ("inner.txt", b"a caption from upstream"),
                       ("meta_only.json", b"{}")])
    (root / "evil.tar").write_bytes(evil)  # its members are the inputs
    expected["evil.tar#../escape.jpg"] = "unsafe_tar_member"
    expected["evil.tar#/abs/path.jpg"] = "unsafe_tar_member"
    expected["evil.tar#inner"] = "ok"
    expected["evil.tar#meta_only"] = "no_image_in_sample"

    put("garbage.tar", b"\x00\x01not a tar at all" * 40, "corrupt_tar")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(root / VANISHED)]}), root / LIST_NAME)
    expected[VANISHED] = "vanished"
    return expected


def torture_sources(root: str | Path) -> list[str]:
    """The SRC arguments for a shard job over the torture folder."""
    root = Path(root)
    return [str(root), str(root / LIST_NAME)]
