"""Choosing and reading the samples to show (the first ones, or a seeded uniform choice over a whole
collection), and the text of one sample."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np

from supirkit.datapipe.decode import DEFAULT_MAX_FILE_BYTES
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.shard_format import IMAGE_EXTS
from supirkit.datapipe.tario import image_keys, image_too_large, member_table, read_shard, sample_image, sample_meta
from supirkit.inspection.collection import (
    CAPTION_COLUMNS,
    MANIFEST,
    UNREADABLE_SHARD_ERRORS,
    Collection,
    flatten_meta,
    limit_depth,
    shard_error,
)

#: metadata that describes the file, not its quality: never shown as a "score"
STRUCTURAL = {"key", "width", "height", "orig_width", "orig_height", "original_width", "original_height",
              "n_frames", "orientation", "copies", "bytes", "order", "partition", "has_caption", "status",
              "error_message", "exif", "sha256", "url", "source", "source_uri", "format", "mode", "encoded",
              "duplicates", "caption"}


@dataclass
class Sample:
    """One sample to show: where it is, its metadata, caption and image bytes."""

    key: str
    where: str  # shard URL or manifest file
    meta: dict
    caption: Optional[str] = None
    image: Optional[bytes] = None
    ext: Optional[str] = None
    fields: list = field(default_factory=list)
    error: str = ""  # why the image could not be read (manifests re-read their sources)
    extra_images: dict = field(default_factory=dict)  # other image members, e.g. a test set's ``lq.png``


def _sample_from_tar(sample: dict, url: str) -> Sample:
    ext, data = sample_image(sample)
    meta = sample_meta(sample)
    caption = None
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    fields = sorted(k for k in sample if not k.startswith("__"))
    error = "image member larger than max_file_bytes" if data is None and image_too_large(sample) else ""
    extra = {k: v for k, v in sample.items() if k != ext and not k.startswith("__") and "." in k
             and k.rsplit(".", 1)[1] in IMAGE_EXTS}
    return Sample(sample["__key__"], url, meta, caption, data, ext, fields, error, extra)


def _bottom_k(items: Iterable, n: int, seed: int) -> list:
    """A uniform random choice of ``n`` items from a stream, in stream order (reproducible per seed)."""
    import heapq

    rng = np.random.default_rng(seed)
    heap: list = []  # max-heap on priority via negation
    for i, item in enumerate(items):
        p = rng.random()
        if len(heap) < n:
            heapq.heappush(heap, (-p, i, item))
        elif -heap[0][0] > p:
            heapq.heapreplace(heap, (-p, i, item))
    return [item for _, _, item in sorted(heap, key=lambda t: t[1])]


def iter_samples(coll: Collection, n: int, seed: Optional[int] = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, unreadable: Optional[list] = None) -> Iterator[Sample]:
    """``n`` samples: the first ones, or with ``seed`` a uniform random choice over the whole collection
    (chosen from keys/rows alone; only the chosen samples' bytes are kept). A shard that cannot be read (or
    read to its end) gives the samples before the damage; it is appended to ``unreadable`` (``shard_error``)
    and the others are read."""
    if n <= 0:
        return
    if coll.kind == MANIFEST:
        yield from _iter_manifest_samples(coll, n, seed, max_file_bytes)
        return
    bad = unreadable if unreadable is not None else []
    if seed is None:
        left = n
        for i, url in enumerate(coll.urls):
            for sample in _shard_samples(coll, i, None, max_file_bytes, bad):
                yield sample
                left -= 1
                if left == 0:
                    return
        return
    chosen = _bottom_k(((i, k) for i in range(len(coll.urls)) for k in _keys_guarded(coll, i, bad)), n, seed)
    wanted: dict[int, set] = {}
    for i, k in chosen:
        wanted.setdefault(i, set()).add(k)
    for i in range(len(coll.urls)):
        if i in wanted:
            yield from _shard_samples(coll, i, wanted[i], max_file_bytes, bad)


def _read_guarded(url: str, max_file_bytes: int, unreadable: list) -> Iterator[dict]:
    read = 0
    try:
        for sample in read_shard(url, max_member_bytes=max_file_bytes):
            read += 1
            yield sample
    except UNREADABLE_SHARD_ERRORS as exc:
        unreadable.append(shard_error(url, exc, read))


def _shard_samples(coll: Collection, i: int, keys: Optional[set], max_file_bytes: int,
                   unreadable: list) -> Iterator[Sample]:
    """Samples of shard ``i`` (only ``keys`` when given); a caption set's samples with their joined caption. A
    shard that cannot be read to its end gives the samples before the damage and is added to ``unreadable``."""
    url = coll.urls[i]
    captions = coll.captions.captions(coll.units[i]) if coll.captions is not None else None
    for sample in _read_guarded(url, max_file_bytes, unreadable):
        key = sample["__key__"]
        if (keys is not None and key not in keys) or (captions is not None and key not in captions):
            continue
        shown = _sample_from_tar(sample, url)
        if captions is not None:
            joined = captions[key]
            shown.caption = joined.get("txt")
            shown.meta = {**shown.meta, "caption": joined.get("caption")}
            if joined.get("tags") is not None:
                shown.meta["tags"] = joined["tags"]
            shown.fields = sorted(set(shown.fields) | ({"txt"} if shown.caption is not None else set()))
        yield shown


def _keys_guarded(coll: Collection, i: int, unreadable: list) -> list[str]:
    try:
        return _keys_of(coll, i)
    except UNREADABLE_SHARD_ERRORS as exc:
        unreadable.append(shard_error(coll.urls[i], exc))
        return []


def _keys_of(coll: Collection, i: int) -> list[str]:
    """Keys of shard ``i``'s samples with an image, from its member table (its index, or its headers); for a
    caption set, the keys of its caption table."""
    if coll.captions is not None:
        return [k for k in coll.captions.read(coll.units[i], ["key"]).column("key").to_pylist() if k is not None]
    return image_keys(member_table(coll.urls[i]))


def _iter_manifest_samples(coll: Collection, n: int, seed: Optional[int], max_file_bytes: int) -> Iterator[Sample]:
    import pyarrow.parquet as pq

    from supirkit.datapipe.inputs import read_source
    from supirkit.datapipe.keys import source_from_display

    def rows():
        for f in coll.files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield f, row

    picked = _bottom_k(rows(), n, seed) if seed is not None else _first(rows(), n)
    for f, row in picked:
        meta = {k: v for k, v in row.items() if not isinstance(v, bytes)}
        uri = row.get("source_uri")
        uri = os.fsdecode(uri) if isinstance(uri, bytes) else (uri or row.get("source"))
        data, ext, error = None, None, ""
        if uri:
            if not os.path.lexists(uri) and "\\x" in uri:
                uri = source_from_display(uri)
            try:
                data = read_source(uri, max_file_bytes)
                ext = uri.rsplit(".", 1)[-1].lower() if "." in uri[-6:] else None
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        caption = next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str) and row[c]), None)
        key = str(row.get("key") or row.get("__key__") or display_source(uri or "?"))
        yield Sample(key, f, meta, caption, data, ext, sorted(row), error)


def _first(it: Iterable, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) >= n:
            break
    return out


def format_sample(s: Sample) -> str:
    """One sample's metadata and caption, for ``--show``."""
    lines = [f"== {s.key}  ({display_source(s.where)})", f"fields: {', '.join(s.fields)}"]
    if s.error:
        lines.append(f"image: unreadable ({s.error})")
    lines.append(json.dumps(limit_depth(s.meta), indent=1, ensure_ascii=False, sort_keys=True, default=str))
    lines.append("caption: " + (s.caption if s.caption is not None else "(none)"))
    return "\n".join(lines)


def score_items(meta: dict, names: Optional[list[str]] = None, limit: int = 4) -> list[tuple[str, float]]:
    """The numeric quality fields of a sample (nested ones as ``a.b``), or exactly ``names`` when given."""
    flat = flatten_meta(meta)
    if names:
        return [
            (n, flat[n]) for n in names if isinstance(flat.get(n), (int, float)) and not isinstance(flat.get(n), bool)
        ]
    out = []
    for k, v in flat.items():
        parts = k.split(".")
        # bookkeeping (sizes, caption settings, provenance) is not a score, at any depth
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not STRUCTURAL.intersection(parts) \
                and parts[0] != "upstream":
            out.append((k, v))
    # a stage's quality scores (curation writes them under ``scores.``) come before anything else
    out.sort(key=lambda kv: not kv[0].startswith("scores."))
    return out[:limit]
