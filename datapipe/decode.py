"""Safe image decoding shared by every stage.

Rule for turning any input into 8-bit RGB (documented here because every score depends on it):
- EXIF orientation is applied, so width/height are those of the image as displayed;
- 16-bit images are reduced to 8 bits by rounding value/257;
- palette, gray (L, LA, 1) and CMYK images are converted with Pillow's converters;
- transparent images (alpha channel or palette transparency) are composited over white;
- animated images give their first frame; the frame count is reported in the header.
The pixel limit is checked from the header, before any pixel is decoded, so a decompression bomb
costs a few kilobytes of reading, not gigabytes of memory.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own warning threshold


class DecodeError(Exception):
    """An input that cannot be turned into an image; ``reason`` is a short stable code for statistics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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


def _open(data: bytes):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeError("zero_bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", "no known image format") from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - we disable Pillow's own limit
        raise DecodeError("too_many_pixels", str(exc)) from None
    except Exception as exc:  # truncated headers raise OSError/SyntaxError/ValueError
        raise DecodeError("corrupt_header", f"{type(exc).__name__}: {exc}") from None
    return img


def _orientation(img) -> int:
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
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 or mode != "I" else 1.0
        arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jp2", ".jpe")
EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif",
                 "JPEG2000": "jp2", "MPO": "jpg"}
