"""Sample keys and provenance strings.

A key is derived from the image's content, so the same image gets the same key in every run and on
every machine; webdataset splits file names at the first dot, so keys never contain one.
"""
from __future__ import annotations

import hashlib
import os

KEY_HEX_CHARS = 20  # 80 bits: collision odds at 2e7 images ~1e-10


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:KEY_HEX_CHARS]


def sub_key(key: str, index: int) -> str:
    """Key of the ``index``-th sample made from one source (e.g. several crops of one photo)."""
    return f"{key}_{index:02d}"


def display_source(source: str | bytes) -> str:
    """A printable, valid UTF-8 form of a path or URL; bytes that are not UTF-8 become ``\\xNN``.

    Python gives undecodable file-name bytes back as lone surrogates (PEP 383); those are turned back
    into their bytes and escaped, so nothing is dropped and the string is safe for JSON and parquet.
    """
    raw = os.fsencode(source) if isinstance(source, str) else bytes(source)
    return raw.decode("utf-8", errors="backslashreplace")


def source_is_exact(source: str) -> bool:
    """True when ``display_source`` loses nothing (the source can be re-opened from the display form)."""
    try:
        os.fsencode(source).decode("utf-8")
        return "\\x" not in source
    except UnicodeDecodeError:
        return False


def source_from_display(display: str) -> str:
    """Best inverse of ``display_source``: ``\\xNN`` escapes become their bytes again (in the
    surrogate-escaped form ``open`` accepts). Exact unless the original name itself held the four
    characters ``\\xNN``; manifests keep the exact bytes in ``source_uri`` for that reason."""
    import re

    if "\\x" not in display:
        return display
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 display.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw)
