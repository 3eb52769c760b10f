"""Inputs that break naive image pipelines, with the outcome each one must get.

Three levels of bad input: files (what a source folder holds: truncated, empty, bombs, FIFOs, sockets,
links to devices or out of the folder, loops, folders named like images, non-UTF-8 names, ...), tar
members (unsafe names, links, devices, FIFOs, names without an extension, reserved and repeated fields,
samples without an image, a tar cut short, a file that is not a tar) and metadata (``.json`` members that
are not objects, are not JSON, are not UTF-8, or are nested 100,000 deep).

``CASES`` lists them: each case writes its inputs into a folder and returns ``{name: expected}`` where
``name`` is the input's path relative to the folder (``tar#member`` for a tar member; ``os.fsdecode`` form
for a file name that is not UTF-8) and ``expected`` is ``"ok"`` (becomes a sample) or the rejection reason
code. ``make_case(name, root)`` writes one case alone (tests run each under a time limit);
``make_torture_folder(root)`` writes every case into one folder. Pass ``torture_sources(root)`` to
``supirkit shard``: the folder plus a path list naming a file that does not exist (the deterministic
stand-in for a file that vanishes between listing and reading).

Everything is tiny and cheap to write: the 30000x30000 PNG bomb is a valid header plus an IDAT of
compressed zeros (~1 MB on disk), written chunk by chunk, never a full pixel array in memory; the file over
``max_file_bytes`` is sparse (no disk blocks).
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Callable

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


def _tar_bytes(members: list) -> bytes:
    """A GNU tar of ``(name, data)`` regular files or ready ``TarInfo`` objects (links, devices, FIFOs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _special_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


Case = Callable[[Path], dict]


def _files(**named: tuple[bytes, str]) -> Case:
    def make(root: Path) -> dict:
        for name, (data, _) in named.items():
            (root / name.replace("__", ".")).write_bytes(data)
        return {name.replace("__", "."): outcome for name, (_, outcome) in named.items()}

    return make


def _bomb(root: Path) -> dict:
    write_png_bomb(root / "bomb.png")
    return {"bomb.png": "too_many_pixels"}


def _cmyk(root: Path) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_texture(24, 24, 3)).convert("CMYK").save(buf, format="JPEG", quality=90)
    (root / "cmyk.jpg").write_bytes(buf.getvalue())
    return {"cmyk.jpg": "ok"}


def _sixteen_bit(root: Path) -> dict:
    # 16-bit RGB (color type 2) and 16-bit gray (color type 0), written by hand: Pillow cannot write 16-bit RGB
    rgb16 = (np.arange(16 * 20 * 3, dtype=np.uint16).reshape(16, 20, 3) * 97).astype(">u2")
    write_png_raw(root / "rgb16.png", 20, 16, 16, 2, (b"\x00" + r.tobytes() for r in rgb16))
    gray16 = (np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 200).astype(">u2")
    write_png_raw(root / "gray16.png", 20, 16, 16, 0, (b"\x00" + r.tobytes() for r in gray16))
    return {"rgb16.png": "ok", "gray16.png": "ok"}


def _palette_and_animation(root: Path) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_texture(20, 20, 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        buf, format="PNG", transparency=0)
    (root / "palette_alpha.png").write_bytes(buf.getvalue())
    frames = [Image.fromarray(_texture(16, 16, 10 + i)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    (root / "animated.gif").write_bytes(buf.getvalue())
    return {"palette_alpha.png": "ok", "animated.gif": "ok"}


def _exif_case(root: Path) -> dict:
    (root / "exif_rotated.jpg").write_bytes(_exif_rotated_jpeg())
    return {"exif_rotated.jpg": "ok"}


def _extreme_aspect(root: Path) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_texture(2, 4000, 5)).save(buf, format="PNG")
    (root / "extreme_aspect.png").write_bytes(buf.getvalue())
    return {"extreme_aspect.png": "extreme_aspect_ratio"}


def _folder_named_like_an_image(root: Path) -> dict:
    (root / "folder.jpg").mkdir()
    return {"folder.jpg": "is_directory"}


def _symlink_loop(root: Path) -> dict:
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    return {"loop_a.jpg": "bad_symlink", "loop_b.jpg": "bad_symlink"}


def _dangling_symlink(root: Path) -> dict:
    os.symlink("nowhere/missing.jpg", root / "dangling.jpg")
    return {"dangling.jpg": "bad_symlink"}


def _exact_duplicates(root: Path) -> dict:
    dup = _jpeg(_texture(24, 30, 7))
    (root / "dup_a.jpg").write_bytes(dup)  # first in listing order: the one kept
    (root / "dup_b.jpg").write_bytes(dup)
    return {"dup_a.jpg": "ok", "dup_b.jpg": "duplicate"}


def _symlink_inside(root: Path) -> dict:
    """A link to a file of the same folder: followed; the same bytes as its target, so a duplicate of it."""
    (root / "linked_target.jpg").write_bytes(_jpeg(_texture(22, 26, 13)))
    os.symlink("linked_target.jpg", root / "the_link.jpg")
    return {"linked_target.jpg": "ok", "the_link.jpg": "duplicate"}


def _symlink_outside(root: Path) -> dict:
    """A link out of the walked folder (to another user's files, say): not followed unless allowed."""
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.jpg").write_bytes(_jpeg(_texture(20, 20, 14)))
    os.symlink(outside / "secret.jpg", root / "outside_link.jpg")
    return {"outside_link.jpg": "outside_source"}


def _symlink_to_device(root: Path) -> dict:
    """A link to /dev/zero: reading it would never end (it was read 512 MiB deep before the size check)."""
    os.symlink("/dev/zero", root / "zero_device.jpg")
    return {"zero_device.jpg": "special_file"}


def _fifo(root: Path) -> dict:
    """A FIFO named like an image (open() blocks forever without a writer) and one named like a tar."""
    os.mkfifo(root / "fifo.jpg")
    os.mkfifo(root / "fifo.tar")
    return {"fifo.jpg": "special_file", "fifo.tar": "special_file"}


def _socket(root: Path) -> dict:
    path = root / "sock.png"
    if len(os.fsencode(path)) >= 100:  # AF_UNIX paths are limited to ~108 bytes
        return {}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fsencode(path))
    s.close()  # the socket file stays
    return {"sock.png": "special_file"}


def _sparse_huge(root: Path) -> dict:
    """A file over the default max_file_bytes (512 MiB), sparse: refused from its size, never read."""
    with open(root / "huge.jpg", "wb") as f:
        f.write(_jpeg(_texture(8, 8, 15)))
        f.truncate(600 * 1024 * 1024)
    return {"huge.jpg": "too_large"}


def _unreadable(root: Path) -> dict:
    """Permission denied (meaningless as root, which reads anything: then the case is left out)."""
    if os.geteuid() == 0:
        return {}
    (root / "no_permission.jpg").write_bytes(_jpeg(_texture(10, 10, 16)))
    os.chmod(root / "no_permission.jpg", 0)
    return {"no_permission.jpg": "unreadable"}


def _non_utf8_name(root: Path) -> dict:
    (root / NON_UTF8_NAME).write_bytes(_jpeg(_texture(20, 28, 8)))
    return {NON_UTF8_NAME: "ok"}


def _newline_name(root: Path) -> dict:
    (root / "new\nline.jpg").write_bytes(_jpeg(_texture(20, 22, 17)))
    return {"new\nline.jpg": "ok"}


def _unsafe_members(root: Path) -> dict:
    good = _jpeg(_texture(32, 40, 1))
    (root / "evil.tar").write_bytes(_tar_bytes([
        ("../escape.jpg", good[:-1] + b"\xd9"), ("/abs/path.jpg", _jpeg(_texture(8, 8, 11))),
        ("inner.jpg", _jpeg(_texture(18, 18, 12))), ("inner.json", b'{"caption_source": "upstream"}'),
        ("inner.txt", b"a caption from upstream"), ("meta_only.json", b"{}")]))
    return {"evil.tar#../escape.jpg": "unsafe_tar_member", "evil.tar#/abs/path.jpg": "unsafe_tar_member",
            "evil.tar#inner": "ok", "evil.tar#meta_only": "no_image_in_sample"}


def _special_members(root: Path) -> dict:
    """Members that are not regular files (links, devices, FIFOs) and names that cannot be a sample field."""
    (root / "members.tar").write_bytes(_tar_bytes([
        ("kept.jpg", _jpeg(_texture(16, 18, 20))),
        _special_member("symlink.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        _special_member("hardlink.jpg", tarfile.LNKTYPE, "kept.jpg"),
        _special_member("fifo_member.jpg", tarfile.FIFOTYPE),
        _special_member("device_member.jpg", tarfile.CHRTYPE),
        _special_member("a_folder", tarfile.DIRTYPE),  # a folder entry: not an input
        ("README", b"no extension"),
        ("field.__key__", b"would overwrite the reader's own field"),
        ("twice.jpg", _jpeg(_texture(12, 12, 21))), ("twice.jpg", _jpeg(_texture(12, 12, 22))),
        ("not_image.jpg", b"<html>404 not found</html>"),
    ]))
    return {"members.tar#kept": "ok", "members.tar#symlink.jpg": "tar_link", "members.tar#hardlink.jpg": "tar_link",
            "members.tar#fifo_member.jpg": "special_file", "members.tar#device_member.jpg": "special_file",
            "members.tar#README": "no_extension", "members.tar#field.__key__": "reserved_field",
            "members.tar#twice": "ok", "members.tar#twice.jpg": "repeated_field",
            "members.tar#not_image": "not_an_image"}


def _hostile_metadata(root: Path) -> dict:
    """Samples whose ``.json`` is not a JSON object: each rejects its own sample, never the tar."""
    bad = {"list": b"[1, 2, 3]", "null": b"null", "number": b"42", "string": b'"text"',
           "invalid": b'{"unterminated": ', "not_utf8": b'{"caption": "caf\xe9"}',
           "deep_100k": _deep_json(100_000), "deep_100": _deep_json(100)}
    members = []
    for i, (name, meta) in enumerate(bad.items()):
        members += [(f"{name}.jpg", _jpeg(_texture(10, 10, 30 + i))), (f"{name}.json", meta)]
    members += [("fine.jpg", _jpeg(_texture(10, 12, 40))), ("fine.json", json.dumps({"a": {"b": [1, 2]}}).encode()),
                ("fine.txt", b"caption \xff with a byte that is not UTF-8")]
    (root / "metadata.tar").write_bytes(_tar_bytes(members))
    out = {f"metadata.tar#{name}": "bad_metadata" for name in bad}
    out["metadata.tar#fine"] = "ok"
    return out


def _cut_tar(root: Path) -> dict:
    """A tar cut short inside its third sample: the two whole samples are kept, the rest is one input."""
    data = _tar_bytes([(f"s{i}.jpg", _jpeg(_texture(14, 14, 50 + i))) for i in range(4)])
    (root / "cut.tar").write_bytes(data[:2 * 1536 + 700])
    return {"cut.tar#s0": "ok", "cut.tar#s1": "ok", "cut.tar": "corrupt_tar"}


def _vanished(root: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(root / VANISHED)]}), root / LIST_NAME)
    return {VANISHED: "vanished"}


#: every case: name -> writer (a case is a kind of bad input, with the companions it needs)
CASES: dict[str, Case] = {
    # file level
    "good": _files(good__jpg=(_jpeg(_texture(32, 40, 1)), "ok")),
    "truncated": _files(truncated__jpg=(_jpeg(_texture(64, 64, 2))[:700], "truncated")),
    "zero_bytes": _files(zero__jpg=(b"", "zero_bytes")),
    "text_as_image": _files(text__jpg=(b"this is not an image, just text named like one\n" * 4, "not_an_image")),
    "html_as_image": _files(error_page__jpg=(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
                                             "not_an_image")),
    "pixel_bomb": _bomb,
    "cmyk": _cmyk,
    "sixteen_bit": _sixteen_bit,
    "palette_and_animation": _palette_and_animation,
    "exif_rotated": _exif_case,
    "extreme_aspect": _extreme_aspect,
    "jpeg_named_png": _files(jpeg_named__png=(_jpeg(_texture(20, 30, 6)), "ok")),
    "folder_named_like_an_image": _folder_named_like_an_image,
    "symlink_loop": _symlink_loop,
    "dangling_symlink": _dangling_symlink,
    "exact_duplicates": _exact_duplicates,
    "symlink_inside": _symlink_inside,
    "symlink_outside": _symlink_outside,
    "symlink_to_device": _symlink_to_device,
    "fifo": _fifo,
    "socket": _socket,
    "over_max_file_bytes": _sparse_huge,
    "no_permission": _unreadable,
    "non_utf8_name": _non_utf8_name,
    "newline_in_name": _newline_name,
    "vanished": _vanished,
    "not_a_tar": _files(garbage__tar=(b"\x00\x01not a tar at all" * 40, "corrupt_tar")),
    # tar member level
    "unsafe_members": _unsafe_members,
    "special_members": _special_members,
    "cut_tar": _cut_tar,
    # metadata level
    "hostile_metadata": _hostile_metadata,
}


def make_case(name: str, root: str | Path) -> dict[str, str]:
    """Write case ``name`` alone into ``root``; returns its ``{input: expected}``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return CASES[name](root)


def case_sources(name: str, root: str | Path) -> list[str]:
    """The SRC arguments for case ``name`` written by ``make_case``."""
    root = Path(root)
    return [str(root / LIST_NAME)] if name == "vanished" else [str(root)]


def make_torture_folder(root: str | Path) -> dict[str, str]:
    """Every case in one folder; returns the union of their ``{input: expected}``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for name, make in CASES.items():
        got = make(root)
        assert not set(got) & set(expected), f"case {name} reuses an input name"
        expected.update(got)
    return expected


def torture_sources(root: str | Path) -> list[str]:
    """The SRC arguments for a shard job over the torture folder."""
    root = Path(root)
    return [str(root), str(root / LIST_NAME)]
