"""Turning a partition's listed inputs into raw items (bytes + provenance), errors as counted values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from datapipe.keys import display_source
from datapipe.runner import Partition
from datapipe.shards import ShardStats, read_shard, sample_image, sample_meta
from datapipe.sources import INVALID, TAR, read_bytes

#: a tar member's provenance is written ``tar_uri#member_key``
MEMBER_SEP = "#"
#: an item's order is its listing position times this, plus its index inside a tar (0 for files)
MEMBER_ORDER_STRIDE = 1 << 24


@dataclass
class RawItem:
    source: str  # display form (valid UTF-8)
    uri: str  # exact form, reopenable (may hold surrogate-escaped bytes)
    order: int  # position in the whole listing: the deterministic tie-breaker everywhere
    data: bytes
    ext: str = ""  # extension hint from the name or the tar member
    upstream: dict = field(default_factory=dict)  # metadata/caption carried from an input shard


def iter_raw_items(partition: Partition, stats: ShardStats, max_file_bytes: int, io_retries: int = 3) -> Iterator[RawItem]:
    """Every input of the partition that could be read, in listing order; the rest are recorded."""
    for offset, ref in enumerate(partition.refs):
        order = (partition.first_order + offset) * MEMBER_ORDER_STRIDE
        source = display_source(ref.uri)
        stats.count("inputs")
        if ref.kind == INVALID:
            stats.reject(source, ref.reason.split(":")[0], ref.reason)
            continue
        if ref.kind == TAR:
            stats.counts["inputs"] -= 1  # the tar's members are the inputs
            yield from _iter_tar(ref.uri, order, stats, max_file_bytes)
            continue
        with stats.timer("read"):
            try:
                data = read_source(ref.uri, max_file_bytes, io_retries)
            except IsADirectoryError:
                stats.reject(source, "is_directory")
                continue
            except FileNotFoundError:
                stats.reject(source, "vanished", "listed but gone when read")
                continue
            except OSError as exc:
                reason = "too_large" if "max_file_bytes" in str(exc) else "unreadable"
                stats.reject(source, reason, f"{exc.strerror or exc}")
                continue
        ext = ref.uri.rsplit(".", 1)[-1].lower() if "." in ref.uri[-6:] else ""
        yield RawItem(source, ref.uri, order, data, ext)


def _iter_tar(uri: str, order: int, stats: ShardStats, max_file_bytes: int) -> Iterator[RawItem]:
    tar_source = display_source(uri)

    def unsafe(name: str) -> None:
        stats.count("inputs")
        stats.reject(f"{tar_source}{MEMBER_SEP}{display_source(name)}", "unsafe_tar_member",
                     "absolute path or '..' in a tar member name")

    try:
        for idx, sample in enumerate(read_shard(uri, on_unsafe=unsafe)):
            stats.count("inputs")
            key = sample["__key__"]
            src = f"{tar_source}{MEMBER_SEP}{display_source(key)}"
            ext, data = sample_image(sample)
            if data is None:
                stats.reject(src, "no_image_in_sample", f"members: {sorted(k for k in sample if not k.startswith('__'))}")
                continue
            if len(data) > max_file_bytes:
                stats.reject(src, "too_large")
                continue
            upstream = {"meta": sample_meta(sample)}
            if "txt" in sample:
                upstream["txt"] = sample["txt"].decode("utf-8", errors="replace")
            yield RawItem(src, f"{uri}{MEMBER_SEP}{key}", order + idx, data, ext, upstream)
    except Exception as exc:  # a truncated or corrupt tar: what was read is kept, the rest recorded
        stats.reject(tar_source, "corrupt_tar", f"{type(exc).__name__}: {exc}")


def read_source(uri: str, max_file_bytes: int, io_retries: int = 3) -> bytes:
    """Re-read one source named by a manifest row (a file/URL, or ``tar#key`` for a shard member)."""
    if MEMBER_SEP in uri and ".tar" + MEMBER_SEP in uri:
        tar, key = uri.rsplit(MEMBER_SEP, 1)
        for sample in read_shard(tar):
            if sample["__key__"] == key:
                _, data = sample_image(sample)
                if data is not None:
                    return data
        raise FileNotFoundError(f"{key} not found in {tar}")
    return read_bytes(uri, max_bytes=max_file_bytes, retries=io_retries)
