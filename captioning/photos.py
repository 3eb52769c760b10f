"""Captioning inputs that are not shard sets: folders, globs, path lists and URLs of photos.

``supirkit caption PHOTOS --out SET`` takes the sources ``supirkit shard`` takes. Each planned partition of
the listing becomes one output shard holding every readable photo, bytes unchanged, under its content key
(the key ``shard`` gives it), with its caption: a self-contained shard set, as with ``output.write: shards``.
A caption table would have no shard to be joined to, so loose inputs always write shards.
"""
from __future__ import annotations

import io
import json
from typing import Iterator

from supirkit.datapipe.decode import EXT_BY_FORMAT
from supirkit.datapipe.inputs import iter_raw_items
from supirkit.datapipe.keys import content_key
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.shard_format import IMAGE_EXTS
from supirkit.datapipe.stats import UnitStats


def image_ext(name_ext: str, data: bytes) -> str:
    """The member extension of an image: its own when it names an image format, else the sniffed format's
    (a photo named without an extension, ``.JPG``); ``bin`` when no image format is recognised, so that the
    sample is rejected as having no image instead of being guessed."""
    ext = name_ext.lower()
    if ext in IMAGE_EXTS:
        return "jpg" if ext in ("jpeg", "jpe") else ext
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return EXT_BY_FORMAT.get(img.format or "", "bin")
    except (UnidentifiedImageError, OSError, ValueError):
        return "bin"


class RejectionLog(UnitStats):
    """Rejections kept as values for the caller to record (``iter_raw_items`` records into a ``UnitStats``):
    no progress report and no cap here, since the caption stage records each one, as one input, itself."""

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def reject(self, source: str, reason: str, detail: str = "", stage: str = "") -> None:
        self.rejections.append({"source": source, "reason": reason, "detail": detail})

    def take(self) -> list[tuple[str, str, str]]:
        """The rejections logged since the last call, as (source, reason, detail)."""
        out = [(r["source"], r["reason"], r["detail"]) for r in self.rejections]
        self.rejections = []
        return out


def photo_samples(partition: Partition, scratch: RejectionLog, max_file_bytes: int,
                  io_retries: int) -> Iterator[tuple[dict, str]]:
    """(sample, source) for every readable input of the partition, in listing order; unreadable inputs go
    to ``scratch`` as rejections. A member of an input tar keeps its json (as ``upstream``) and its txt."""
    for item in iter_raw_items(partition, scratch, max_file_bytes, io_retries):
        key = content_key(item.data)
        meta = {"key": key, "source": item.source}
        if item.upstream.get("meta"):
            meta["upstream"] = item.upstream["meta"]
        sample = {"__key__": key, image_ext(item.ext, item.data): item.data,
                  "json": json.dumps(meta).encode("utf-8")}
        if "txt" in item.upstream:
            sample["txt"] = item.upstream["txt"].encode("utf-8")
        yield sample, item.source


__all__ = ["photo_samples", "image_ext", "RejectionLog"]
