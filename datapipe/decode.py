"""Safe image decoding shared by every stage.

Rule for turning any input into 8-bit RGB (documented here because every score depends on it):
- EXIF orientation is applied, so width/height are those of the image as displayed (orientations
  5-8 swap them); a PNG eXIf chunk placed after the pixel data is ignored (finding it means
  decoding the image, which a header probe must never do);
- 16-bit samples keep their high byte (value >> 8): Pillow already does this for 16-bit RGB PNGs,
  and 16-bit gray (I;16) and 32-bit integer (I) images get the same rule, so one photo saved either
  way decodes alike; an I image whose values all fit in 0..255 is taken as 8-bit;
- float (F) images are scaled by 255 when their values lie in 0..1, else clipped to 0..255;
- palette, gray (L, LA, 1) and CMYK images are converted with Pillow's converters (CMYK without
  colour management; embedded ICC profiles are not applied, as in ``Image.convert("RGB")``);
- transparent images (alpha channel or palette transparency) are composited over white;
- animated images give their first frame; the frame count is reported in the header.
The pixel limit is checked from the header, before any pixel is decoded, so a decompression bomb
costs a few kilobytes of reading, not gigabytes of memory. Pillow's own bomb check is replaced by
that limit (it would refuse legitimate images above 2 x 89 MP whatever ``max_pixels`` says).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from supirkit.datapipe.errors import DecodeError

#: the decode guards' defaults (``decode.max_pixels``, ``decode.max_file_bytes`` in every stage's config)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own warning threshold
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
#: Memory reuse between decodes. Decoding a 1.2 MP JPEG and dropping the result (what a scoring loop
#: does) made the kernel map and zero fresh pages for every image: about 3000 page faults, more time
#: than the decoding itself. Two allocators are told to keep freed memory for the next image instead:
#: Pillow's block cache (this many freed 16 MB blocks; its default keeps none; 8 hold a 30 MP image) and
#: glibc malloc (blocks below 32 MB from the heap, which keeps up to 128 MB free instead of returning it
#: to the kernel at once; glibc's adaptive defaults return the 3.7 MB pixel buffer after every image).
#: At most some 256 MB stay reserved per process. Settings the user made through PILLOW_BLOCKS_MAX or
#: glibc's MALLOC_*_ variables are left alone.
PILLOW_BLOCKS_CACHED = 8
MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD = 128 << 20
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_allocator_tuned = False


@dataclass(frozen=True)
class ImageHeader:
    width: int  # after EXIF orientation
    height: int
    format: str  # JPEG, PNG, WEBP, ...
    mode: str  # Pillow mode before conversion
    n_frames: int = 1
    orientation: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def _tune_allocator() -> None:
    """Once per process, before the first decode (see ``PILLOW_BLOCKS_CACHED``)."""
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    from PIL import Image

    if "PILLOW_BLOCKS_MAX" not in os.environ:
        try:
            if Image.core.get_blocks_max() < PILLOW_BLOCKS_CACHED:
                Image.core.set_blocks_max(PILLOW_BLOCKS_CACHED)
        except (AttributeError, ValueError):  # a Pillow without the block allocator API
            pass
    import platform
    import sys

    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" \
            and not any(v in os.environ for v in _GLIBC_ENV):
        import ctypes

        try:
            mallopt = ctypes.CDLL(None).mallopt
            # both set, as glibc stops adapting the mmap threshold once either is set by hand
            mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
            mallopt(-1, MALLOC_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):
            pass


def _open(data: bytes):
    from PIL import Image, UnidentifiedImageError

    _tune_allocator()
    if not data:
        raise DecodeError("zero_bytes")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the caller checks max_pixels from the header
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", "no known image format") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - we disable Pillow's own limit
        raise DecodeError("too_many_pixels", str(exc)) from None
    except Exception as exc:  # truncated headers raise OSError/SyntaxError/ValueError
        raise DecodeError("corrupt_header", f"{type(exc).__name__}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return img


def _orientation(img) -> int:
    # Pillow's PNG reader decodes the whole image to look for an eXIf chunk placed after the pixel
    # data; a header-only probe must not do that (bombs), so such a late chunk is ignored everywhere
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def probe(data: bytes) -> ImageHeader:
    """Read only the header: size, format, mode, frames, orientation."""
    img = _open(data)
    w, h = img.size
    orient = _orientation(img)
    if orient in (5, 6, 7, 8):
        w, h = h, w
    return ImageHeader(w, h, img.format or "unknown", img.mode, int(getattr(img, "n_frames", 1) or 1), orient)


def _to_rgb(img) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if mode != "I" or arr.max(initial=0) > 255:
            arr = arr >> 8
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max(initial=1.0)
        arr = np.clip(np.rint(arr * (255.0 if hi <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageHeader]:
    """Decode to an HxWx3 uint8 RGB array (see the module docstring for the conversion rule)."""
    from PIL import Image, ImageOps

    header = probe(data)
    if header.width * header.height > max_pixels:
        raise DecodeError("too_many_pixels", f"{header.width}x{header.height} > {max_pixels}")
    img = _open(data)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own limit was checked above
        img.seek(0)
        img.load()
        if header.orientation != 1:
            img = ImageOps.exif_transpose(img)
        arr = _to_rgb(img)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc).lower()
        reason = "truncated" if "truncat" in text or isinstance(exc, EOFError) else "corrupt_data"
        raise DecodeError(reason, f"{type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise DecodeError("out_of_memory", "decoding needed more memory than available") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return np.ascontiguousarray(arr), header


def decode_thumbnail(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageHeader]:
    """An RGB thumbnail whose longer side is at most ``size``, by the same rule as ``decode_rgb``.

    JPEGs are decoded at a reduced scale (libjpeg's DCT scaling), so previewing a 50 MP photo costs a
    fraction of a full decode. The pixel limit applies to the full image, as in ``decode_rgb``."""
    from PIL import Image, ImageOps

    header = probe(data)
    if header.width * header.height > max_pixels:
        raise DecodeError("too_many_pixels", f"{header.width}x{header.height} > {max_pixels}")
    img = _open(data)
    try:
        if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            img.draft(img.mode, (size, size))
        img.seek(0)
        img.load()
        if header.orientation != 1:
            img = ImageOps.exif_transpose(img)
        arr = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError("corrupt_data", f"{type(exc).__name__}: {exc}") from None
    thumb = Image.fromarray(arr)
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(thumb, dtype=np.uint8), header


def encode_image(rgb: np.ndarray, codec: str = "jpg", quality: int = 95) -> bytes:
    """Encode 8-bit RGB once, for stages that re-encode (their codec and quality are recorded).

    JPEG is written without chroma subsampling (4:4:4), which keeps fine colour texture for training.
    """
    from PIL import Image

    img = Image.fromarray(rgb)
    buf = io.BytesIO()
    if codec in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=int(quality), subsampling=0, optimize=False)
    elif codec == "png":
        img.save(buf, format="PNG", compress_level=int(quality) if 0 <= quality <= 9 else 6)
    elif codec == "webp":
        img.save(buf, format="WEBP", lossless=quality >= 100, quality=min(int(quality), 100))
    else:
        raise ValueError(f"unknown codec {codec!r} (expected jpg, png or webp)")
    return buf.getvalue()


EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif",
                 "JPEG2000": "jp2", "MPO": "jpg"}
