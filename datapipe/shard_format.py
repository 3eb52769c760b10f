"""The shard format and the shard-set folder, defined once for every reader and writer.

A shard set written by supirkit::

    OUT/
      {prefix}-000000.tar          samples: {key}.jpg|png|..., {key}.json, {key}.txt (adjacent members)
      {prefix}-000001.tar          ... nothing but shards at the top, so that any WebDataset reader
                                   (webdataset, ``ray.data.read_webdataset(OUT)``, ``datasets``) opens OUT as it is
      __supirkit__/                everything else; those readers (and pyarrow) skip names that start with "__"
        index/{prefix}-000000.parquet   one row per sample of the shard: key, member offsets, metadata columns
        stats/{prefix}-000000.json      counts, rejections with reasons, timings: written LAST = "shard done"
        scores/                          curate: one row per input (a separate table from the index)
        shards.parquet                   one row per completed shard with its row count (readers of 25,000
                                         shards open this one file instead of 25,000 footers)
        summary.json, report.html        the job's summary (and curate's report)
        work/                            bookkeeping of resumable jobs: job.json, partitions, passes, plans

Member names follow webdataset: the key is the base name up to its FIRST dot, the extension the rest
(``abc.seg.png`` is field ``seg.png`` of sample ``abc``); keys therefore never contain dots. A member name
that is absolute, climbs out with ``..`` or names a drive is unsafe and never used.

A caption set (``supirkit caption``, tables) holds no tars: ``__supirkit__/captions/`` has one table per
input shard, keyed by sample key, and ``caption_inputs.parquet`` names the input shards (``datapipe.captions``).

Shard sets written by other tools (img2dataset: ``00000.tar`` beside ``00000.parquet`` and ``00000_stats.json``)
are read as they are: an index beside the tar is found as well.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

#: image fields, in the order a sample's image is looked for (also what a source listing treats as images)
IMAGE_EXTS = ("jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff", "gif", "jp2", "ppm")
#: file-name suffixes of images in a listing
IMAGE_SUFFIXES = tuple(f".{e}" for e in IMAGE_EXTS)
META_DIR = "__supirkit__"
INDEX_DIR, STATS_DIR, WORK_DIR, SCORES_DIR, CAPTIONS_DIR = "index", "stats", "work", "scores", "captions"
JOB_FILE = "job.json"
SUMMARY_FILE = "summary.json"
SHARD_TABLE_FILE = "shards.parquet"
#: the key ends at the first dot of the base name (webdataset's ``base_plus_ext``)
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class UnsafeMember(Exception):
    """A tar member name that would escape an extraction folder."""


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def split_member(name: str) -> tuple[Optional[str], Optional[str]]:
    """``dir/key.ext.gz`` -> (``dir/key``, ``ext.gz``); (None, None) for a name without an extension."""
    m = _MEMBER_RE.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


def check_member(name: str) -> None:
    """Raise ``UnsafeMember`` for names that are absolute, contain ``..`` or address a drive."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise UnsafeMember(name)


def check_key(key: str) -> None:
    """A sample key must be non-empty, without dots (the key rule) or slashes (one folder level)."""
    if not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"invalid sample key {key!r}: keys must be non-empty, without dots or slashes")


def is_image_field(ext: str) -> bool:
    return ext.lower() in IMAGE_EXTS


class ShardSetLayout:
    """Where every file of a supirkit shard set lives (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def meta(self) -> Path:
        return self.root / META_DIR

    @property
    def index_dir(self) -> Path:
        return self.meta / INDEX_DIR

    @property
    def stats_dir(self) -> Path:
        return self.meta / STATS_DIR

    @property
    def scores_dir(self) -> Path:
        return self.meta / SCORES_DIR

    @property
    def work(self) -> Path:
        return self.meta / WORK_DIR

    @property
    def captions_dir(self) -> Path:
        return self.meta / CAPTIONS_DIR

    @property
    def shard_table(self) -> Path:
        return self.meta / SHARD_TABLE_FILE

    @property
    def job_file(self) -> Path:
        return self.work / JOB_FILE

    @property
    def summary_file(self) -> Path:
        return self.meta / SUMMARY_FILE

    def tar(self, prefix: str, index: int) -> Path:
        return self.root / f"{shard_name(prefix, index)}.tar"

    def index(self, prefix: str, index: int) -> Path:
        return self.index_dir / f"{shard_name(prefix, index)}.parquet"

    def stats(self, prefix: str, index: int) -> Path:
        return self.stats_dir / f"{shard_name(prefix, index)}.json"

    def is_supirkit_output(self) -> bool:
        return self.meta.is_dir()

    def pattern(self, prefix: str, count: int) -> str:
        """The brace pattern of ``count`` shards, as webdataset takes it."""
        if count <= 1:
            return str(self.tar(prefix, 0))
        return str(self.root / f"{prefix}-{{{0:06d}..{count - 1:06d}}}.tar")


def _sibling(tar_url: str, *parts: str) -> str:
    """``.../x.tar`` -> ``.../<parts...>`` (local path or URL)."""
    head, _, _ = tar_url.rpartition("/")
    if not head and os.sep != "/":
        head = os.path.dirname(tar_url)
    return "/".join([head, *parts]) if head else "/".join(parts)


def _stem(tar_url: str) -> str:
    name = tar_url.rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".tar") else name


def index_candidates(tar_url: str) -> list[str]:
    """Where the parquet index of a shard may be, in the order to try: supirkit's layout, then beside the tar."""
    stem = _stem(tar_url)
    return [_sibling(tar_url, META_DIR, INDEX_DIR, f"{stem}.parquet"), _sibling(tar_url, f"{stem}.parquet")]


def stats_candidates(tar_url: str) -> list[str]:
    """Where a shard's stats JSON may be: supirkit's layout, then img2dataset's ``{stem}_stats.json``."""
    stem = _stem(tar_url)
    return [_sibling(tar_url, META_DIR, STATS_DIR, f"{stem}.json"), _sibling(tar_url, f"{stem}_stats.json")]


__all__ = ["IMAGE_EXTS", "IMAGE_SUFFIXES", "META_DIR", "JOB_FILE", "SUMMARY_FILE", "SHARD_TABLE_FILE", "CAPTIONS_DIR",
           "UnsafeMember", "shard_name",
           "split_member", "check_member", "check_key", "is_image_field", "ShardSetLayout", "index_candidates",
           "stats_candidates"]
