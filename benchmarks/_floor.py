"""The decode floors the benchmark scripts measure against, in the same run.

* ``fastest``: the fastest JPEG decoder measured on this machine (``bench_decode.py``): libjpeg-turbo through
  ``simplejpeg`` straight into a NumPy array, nothing else (no header probe, no pixel limit, no EXIF).
  The floor since the decode routes (benchmarks/README.md, "decode").
* ``pillow``: the decode every stage used before, ``datapipe.decode.decode_rgb`` on its Pillow route; kept
  as a second column so that figures stay comparable with the earlier tables.

Both work on the code of any commit (``run_at.py`` runs a script against an older one, whose ``decode_rgb``
has no ``fast`` argument and is the Pillow route).
"""
from __future__ import annotations

import inspect
import time


def fastest(data: bytes):
    import simplejpeg

    return simplejpeg.decode_jpeg(data, "RGB")


def pillow(data: bytes):
    from supirkit.datapipe.decode import decode_rgb

    if "fast" in inspect.signature(decode_rgb).parameters:
        return decode_rgb(data, 10 ** 10, fast=False)[0]
    return decode_rgb(data, 10 ** 10)[0]


FLOORS = {"fastest": fastest, "pillow": pillow}


def decode_all(fn, datas) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, megapixels) to decode every item of ``datas`` with ``fn``."""
    w, c = time.perf_counter(), time.process_time()
    mp = 0.0
    for data in datas:
        arr = fn(data)
        mp += arr.shape[0] * arr.shape[1] / 1e6
    return time.process_time() - c, time.perf_counter() - w, mp
