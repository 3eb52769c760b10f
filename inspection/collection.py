"""What a path names: a shard set (folder, brace pattern, glob, tar) or a manifest (parquet file or
folder), and where each shard's index and stats are; metadata flattening shared by summaries and pictures."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from supirkit.datapipe.captions import CaptionSet
from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS
from supirkit.datapipe.shard_format import ShardSetLayout, stats_candidates
from supirkit.datapipe.tario import find_index, list_shards

SHARDS, MANIFEST = "shards", "manifest"
#: columns of a manifest that may hold a sample's caption
CAPTION_COLUMNS = ("caption", "txt", "text")


@dataclass
class Collection:
    """What ``PATH`` names: a shard set (``urls``) or a manifest (parquet ``files``)."""

    kind: str
    spec: str
    urls: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    captions: Optional[CaptionSet] = None  # a caption set: ``urls`` are its input shards, unit ``units[i]`` each
    units: list[int] = field(default_factory=list)

    @property
    def layout(self) -> str:
        if self.kind == MANIFEST:
            return "manifest"
        if self.captions is not None:
            return "caption set"
        if any(_stats_file(u) and _stats_file(u).endswith("_stats.json") for u in self.urls[:1]):
            return "img2dataset"
        if any(ShardSetLayout(Path(u).parent).is_supirkit_output() for u in self.urls[:1] if _is_local(u)):
            return "supirkit"
        return "webdataset"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_collection(spec: str | Path) -> Collection:
    """A shard (``.tar``), a shard set (folder, brace pattern, glob), a caption set (read with the shards it
    captions) or a manifest (``.parquet`` file, or a folder of parquet files without tars)."""
    spec = str(spec)
    p = Path(spec)
    captions = CaptionSet.open(spec)
    if captions is not None:  # captions joined by key to the shards they caption
        units = captions.done_units()
        if not units:
            raise FileNotFoundError(f"{spec}: caption set without a finished caption table")
        return Collection(SHARDS, spec, urls=[captions.shard_url(u) for u in units], captions=captions, units=units)
    if spec.endswith(".parquet") and (p.is_file() or "://" in spec):
        return Collection(MANIFEST, spec, files=[spec])
    if p.is_dir() and not any(p.glob("*.tar")):
        files = sorted(str(x) for x in p.glob("*.parquet") if not x.name.startswith("."))
        if files:
            return Collection(MANIFEST, spec, files=files)
        raise FileNotFoundError(f"{spec}: folder holds neither .tar shards nor .parquet files")
    urls = list_shards(spec)
    if not urls:
        raise FileNotFoundError(f"{spec}: no completed shard found")
    return Collection(SHARDS, spec, urls=urls)


def _index_file(tar_url: str) -> Optional[str]:
    return find_index(tar_url) if _is_local(tar_url) else None


def _stats_file(tar_url: str) -> Optional[str]:
    """The shard's stats: supirkit's (``__supirkit__/stats/X.json``) or img2dataset's (``X_stats.json``)."""
    if not _is_local(tar_url):
        return None
    return next((c for c in stats_candidates(tar_url) if os.path.isfile(c)), None)


#: nesting levels of metadata that summaries and pictures look into; deeper values are shown as a marker
MAX_META_DEPTH = 16
TOO_DEEP = "<nested deeper than 16 levels>"
#: what reading one shard can raise when the shard (or its index) is damaged or hostile: inspect names the
#: shard and goes on with the others (``ValueError``/``TypeError`` cover pyarrow's ArrowInvalid/ArrowTypeError)
UNREADABLE_SHARD_ERRORS = (OSError, ValueError, TypeError, *CORRUPT_INPUT_ERRORS)


def flatten_meta(meta: dict, prefix: str = "") -> dict:
    """Nested metadata as ``parent.child`` keys (for display and score lookup); lists stay as they are.
    Iterative and depth-capped: hostile metadata nested thousands deep must not exhaust the stack."""
    out: dict[str, Any] = {}
    stack = [(meta, prefix, 0)]
    while stack:
        node, pre, depth = stack.pop()
        for k, v in node.items():
            name = f"{pre}{k}"
            if isinstance(v, dict) and depth + 1 < MAX_META_DEPTH:
                stack.append((v, name + ".", depth + 1))
            else:
                out[name] = TOO_DEEP if isinstance(v, dict) else v
    return out


def limit_depth(value: Any, depth: int = MAX_META_DEPTH) -> Any:
    """``value`` with every dict or list nested deeper than ``depth`` replaced by a marker (for printing)."""
    if depth <= 0:
        return TOO_DEEP if isinstance(value, (dict, list)) else value
    if isinstance(value, dict):
        return {k: limit_depth(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [limit_depth(v, depth - 1) for v in value]
    return value


def shard_error(url: str, exc: BaseException, read: int = 0) -> dict:
    """One unreadable shard, as the summary and the command report it (``read``: samples read before it failed)."""
    return {"shard": url, "error": f"{type(exc).__name__}: {exc}"[:300], "read": read}


def flatten_structs(table):
    """An Arrow table with its struct columns replaced by their fields (``parent.field``), at any depth."""
    import pyarrow as pa

    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table
