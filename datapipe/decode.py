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

Routes. Pillow reads every header (format, mode, EXIF orientation, frames: one parser for every format, so
headers and rejection reasons do not depend on the route). The pixels then come from the fastest route
that applies, and ``header.decoder`` says which one decoded them:
- ``libjpeg-turbo`` (``datapipe.jpeg_turbo``): 8-bit YCbCr and gray JPEGs, decoded straight into a NumPy
  array, with the same pixels as the Pillow route;
- ``opencv`` (``datapipe.opencv_png``): 8-bit RGB and gray PNGs without transparency, same pixels;
- ``pillow``: everything else (WebP, TIFF, 16-bit, alpha and palette PNGs, CMYK/YCCK JPEGs, ...) and any
  file a fast route refuses or warns about (truncated or corrupt data), which the Pillow route decodes or
  rejects with the usual reason.
The routes were chosen by measurement (``benchmarks/bench_decode.py``; OpenCV's ``imdecode`` is slower than
libjpeg-turbo direct for JPEG).
``decode_rgb_reduced`` decodes JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain for consumers that do
not need native resolution (thumbnails, caption inputs, resized training crops, the curation copies).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

from supirkit.datapipe import jpeg_turbo, opencv_png
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
PILLOW = "pillow"
_JPEG_FORMATS = ("JPEG", "MPO")
#: the fast routes, tried in order before the Pillow route: each has NAME, applies(img), decode(data, reduction)
FAST_ROUTES = (jpeg_turbo, opencv_png)


@dataclass(frozen=True)
class ImageHeader:
    width: int  # after EXIF orientation
    height: int
    format: str  # JPEG, PNG, WEBP, ...
    mode: str  # Pillow mode before conversion
    n_frames: int = 1
    orientation: int = 1
    decoder: str = ""  # the route that decoded the pixels (libjpeg-turbo, opencv, pillow); "" from probe()
    reduction: int = 1  # the pixels are 1/reduction of width x height (decode_rgb_reduced); 1 = native

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


def _header_of(img) -> ImageHeader:
    w, h = img.size
    orient = _orientation(img)
    if orient in (5, 6, 7, 8):
        w, h = h, w
    return ImageHeader(w, h, img.format or "unknown", img.mode, int(getattr(img, "n_frames", 1) or 1), orient)


def probe(data: bytes) -> ImageHeader:
    """Read only the header: size, format, mode, frames, orientation."""
    return _header_of(_open(data))


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


def _decode_pillow(img, header: ImageHeader, reduction: int) -> tuple[np.ndarray, int]:
    """The Pillow route (every format; the reference for the fast one): RGB array and the reduction made."""
    from PIL import Image, ImageOps

    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own limit was checked from the header
        if reduction > 1 and img.format in _JPEG_FORMATS and img.mode in ("RGB", "L", "CMYK"):
            stored = img.size
            # asked for floor(size / reduction), draft picks exactly this power-of-two scale
            img.draft(img.mode, (stored[0] // reduction, stored[1] // reduction))
            reduction = reduction if img.size != stored else 1
        else:
            reduction = 1
        img.seek(0)
        img.load()
        if header.orientation != 1:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img), reduction
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation on a fast route: the transposition ``ImageOps.exif_transpose`` makes on the
    Pillow route, done by OpenCV (lossless, so the pixels are the same)."""
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return arr
    import cv2

    if orientation == 2:
        return cv2.flip(arr, 1)  # mirror left-right
    if orientation == 3:
        return cv2.rotate(arr, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(arr, 0)  # mirror top-bottom
    if orientation == 5:
        return cv2.transpose(arr)
    if orientation == 6:
        return cv2.rotate(arr, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(arr), cv2.ROTATE_180)  # transverse
    return cv2.rotate(arr, cv2.ROTATE_90_COUNTERCLOCKWISE)


def _decode(data: bytes, max_pixels: int, min_side: int = 0, side: str = "short",
            fast: bool = True) -> tuple[np.ndarray, ImageHeader]:
    """Header, pixel limit, then the fastest route that applies (see the module docstring)."""
    img = _open(data)
    header = _header_of(img)
    if header.width * header.height > max_pixels:
        raise DecodeError("too_many_pixels", f"{header.width}x{header.height} > {max_pixels}")
    reduction = 1
    if min_side > 0 and img.format in _JPEG_FORMATS:  # other formats have no cheaper reduced decode
        reduction = jpeg_turbo.reduction_for(img.size[0], img.size[1], min_side, side)
    try:
        route = next((r for r in FAST_ROUTES if r.applies(img)), None) if fast else None
        arr = route.decode(data, reduction) if route is not None else None
        if arr is not None:
            arr = _orient(arr, header.orientation)
            return np.ascontiguousarray(arr), replace(header, decoder=route.NAME, reduction=reduction)
        arr, reduction = _decode_pillow(img, header, reduction)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc).lower()
        reason = "truncated" if "truncat" in text or isinstance(exc, EOFError) else "corrupt_data"
        raise DecodeError(reason, f"{type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise DecodeError("out_of_memory", "decoding needed more memory than available") from None
    return np.ascontiguousarray(arr), replace(header, decoder=PILLOW, reduction=reduction)


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               fast: bool = True) -> tuple[np.ndarray, ImageHeader]:
    """Decode to an HxWx3 uint8 RGB array (see the module docstring for the conversion rule).

    ``header.decoder`` names the route that decoded; ``fast=False`` takes the Pillow route for every
    format (the reference the fast route is tested against)."""
    return _decode(data, max_pixels, fast=fast)


def decode_rgb_reduced(data: bytes, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS, *, side: str = "short",
                       fast: bool = True) -> tuple[np.ndarray, ImageHeader]:
    """Decode a JPEG at 1/2, 1/4 or 1/8 of its size when the result's shorter side (``side="short"``) or
    longer side (``side="long"``) stays at least ``min_side``; for consumers that resize down anyway.

    The reduction is made in the DCT domain by libjpeg-turbo (Pillow's ``draft`` on the Pillow route, same
    pixels): a 4x smaller image costs the entropy decoding plus a sixteenth of the inverse DCT and colour
    work. ``header`` keeps the full image's width and height; ``header.reduction`` is the factor made (1 for
    other formats and for images too small to reduce). These pixels are not those of a full decode followed
    by the consumer's resize: each output pixel comes from the low-frequency DCT coefficients of its block
    (close to a box average), so a consumer's result changes by a few gray levels; its size does not."""
    if side not in ("short", "long"):
        raise ValueError(f"side must be 'short' or 'long', not {side!r}")
    return _decode(data, max_pixels, min_side=int(min_side), side=side, fast=fast)


def decode_thumbnail(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageHeader]:
    """An RGB thumbnail whose longer side is at most ``size``, by the same rule as ``decode_rgb``.

    JPEGs are decoded at a reduced scale (``decode_rgb_reduced``: the shorter side stays at least ``size``),
    so previewing a 50 MP photo costs a fraction of a full decode, then resized with Lanczos. The pixel limit
    applies to the full image, as in ``decode_rgb``."""
    from PIL import Image

    arr, header = decode_rgb_reduced(data, size, max_pixels)
    thumb = Image.fromarray(arr)
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(thumb, dtype=np.uint8), header


def encode_image(rgb: np.ndarray, codec: str = "jpg", quality: int = 95) -> bytes:
    """Encode 8-bit RGB once, for stages that re-encode (their codec and quality are recorded).

    JPEG is written without chroma subsampling (4:4:4), which keeps fine colour texture for training.
    JPEG and PNG go through OpenCV, measured fastest for both (``benchmarks/bench_decode.py``): its JPEG
    is byte-identical to Pillow's with the same settings (both libjpeg-turbo, accurate DCT, no Huffman
    optimisation), its PNG is a standard zlib PNG with the same pixels. ``simplejpeg`` encodes faster still
    but with libjpeg-turbo's fast forward DCT below quality 96 (other pixels), so it is not used. WebP, and
    arrays other than HxWx3 uint8, go through Pillow.
    """
    if codec in ("jpg", "jpeg", "png") and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
        import cv2

        if codec == "png":
            ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, int(quality) if 0 <= quality <= 9 else 6]
        else:
            ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
        return buf.tobytes()
    return _encode_pillow(rgb, codec, quality)


def _encode_pillow(rgb: np.ndarray, codec: str, quality: int) -> bytes:
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
