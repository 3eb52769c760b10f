"""Where a caption goes: a row of the input shard's caption table (the default), or a rewritten sample.

Both writers take the same calls from ``CaptionStage``, one per input sample, in the input shard's order:
``captioned(item, caption, text, tags)`` or ``uncaptioned(item, error)`` (``caption.on_failure: keep``).
A sample the writer refuses (a key seen twice in its shard, an invalid key) raises ``ValueError`` before
anything is written, and the stage records it as ``invalid_sample``, whichever the writer.
"""
from __future__ import annotations

import os
from typing import Optional

from supirkit.datapipe.captions import format_tags
from supirkit.datapipe.inputs import MEMBER_SEP
from supirkit.datapipe.shard_format import check_key


class TableCaptionWriter:
    """One row per sample, keyed by its key: the caption text (``txt``), the per-sample caption facts
    (``caption``: text, raw, token counts, ...; the settings common to the job are in the stats and the
    summary, not repeated per row), ``tags``, the earlier ``.txt`` when there was one, and the sample's
    provenance (``source``/``source_uri``: ``shard.tar#key``, so the table is also a manifest)."""

    def __init__(self, sink, shard_url: str, shard_display: str) -> None:
        self.sink, self.url, self.display = sink, shard_url, shard_display
        self._keys: set[str] = set()

    def _row(self, item) -> dict:
        key = item.sample["__key__"]
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.display}")
        self._keys.add(key)
        row = {"key": key, "source": item.source, "source_uri": os.fsencode(f"{self.url}{MEMBER_SEP}{key}")}
        if "txt" in item.sample:
            row["previous_txt"] = item.sample["txt"].decode("utf-8", errors="replace")
        return row

    def captioned(self, item, caption: dict, text: str, tags: Optional[list]) -> None:
        row = self._row(item)
        row.update(txt=text, caption=caption)
        if tags is not None:
            row["tags"] = list(tags)
        self.sink.write(row)

    def uncaptioned(self, item, error: dict) -> None:
        row = self._row(item)
        row.update(txt=row.get("previous_txt"), caption=error)
        self.sink.write(row)


class ShardCaptionWriter:
    """The sample rewritten with every member byte for byte, except ``.json`` (gains the ``caption`` object,
    with the job's settings, and ``tags``; an earlier ``.txt`` is kept as ``previous_txt``), ``.txt`` (the
    caption) and ``tags.txt``: a self-contained shard, a copy of the corpus."""

    def __init__(self, sink, settings: dict) -> None:
        self.sink, self.settings = sink, settings

    def captioned(self, item, caption: dict, text: str, tags: Optional[list]) -> None:
        meta = dict(item.meta)
        sample = copy_members(item.sample)
        if "txt" in item.sample:
            meta["previous_txt"] = item.sample["txt"].decode("utf-8", errors="replace")
        meta["caption"] = {**self.settings, **caption}
        if tags is not None:  # tag prompts next to the caption: json list + a tags.txt member
            meta["tags"] = tags
            sample["tags.txt"] = format_tags(tags)
        sample["json"] = meta
        sample["txt"] = text
        self.sink.write(sample)  # raises before anything is written for an invalid sample

    def uncaptioned(self, item, error: dict) -> None:
        sample = copy_members(item.sample)
        meta = dict(item.meta)
        meta["caption"] = error
        sample["json"] = meta
        if "txt" in item.sample:
            sample["txt"] = item.sample["txt"]
        self.sink.write(sample)


def copy_members(sample: dict) -> dict:
    """Every member byte for byte (image included), except json/txt which the caller sets."""
    out = {"__key__": sample["__key__"]}
    for name, value in sample.items():
        if name.startswith("__") or name in ("json", "txt"):
            continue
        out[name] = value
    return out


__all__ = ["TableCaptionWriter", "ShardCaptionWriter", "copy_members"]
