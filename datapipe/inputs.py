"""Turning a partition's listed inputs into raw items (bytes + provenance), errors as counted values.

Every listed input ends up either as a ``RawItem`` or as one rejection in ``stats`` (with its
``inputs`` count), so ``samples + rejections == inputs`` holds for every partition. A tar's members
are its inputs; a tar that cannot be read to its end is one more input, rejected as ``corrupt_tar``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS, FileTooLarge, rejection_reason
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.sources import INVALID, TAR, read_bytes
from supirkit.datapipe.stats import UnitStats
from supirkit.datapipe.tario import image_too_large, read_shard, sample_image, sample_meta

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


def split_member_uri(uri: str) -> Optional[tuple[str, str]]:
    """``x.tar#key`` -> (``x.tar``, ``key``); None for anything else."""
    if MEMBER_SEP in uri:
        tar, key = uri.rsplit(MEMBER_SEP, 1)
        if tar.lower().endswith(".tar") and key:
            return tar, key
    return None


def iter_raw_items(partition: Partition, stats: UnitStats, max_file_bytes: int,
                   io_retries: int = 3) -> Iterator[RawItem]:
    """Every input of the partition that could be read, in listing order; the rest are recorded.

    Consecutive ``tar#key`` references to one tar (a manifest re-reading members of input shards) are
    served by a single pass over that tar."""
    refs = partition.refs
    i = 0
    while i < len(refs):
        ref = refs[i]
        order = (partition.first_order + i) * MEMBER_ORDER_STRIDE
        source = display_source(ref.uri)
        member = split_member_uri(ref.uri) if ref.kind != INVALID else None
        if member is not None:
            j = i + 1
            while (j < len(refs) and refs[j].kind != INVALID
                   and (split_member_uri(refs[j].uri) or ("",))[0] == member[0]):
                j += 1
            wanted = [(partition.first_order + k, split_member_uri(refs[k].uri)[1]) for k in range(i, j)]
            yield from _iter_tar_members(member[0], wanted, stats, max_file_bytes)
            i = j
            continue
        i += 1
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
                data = read_bytes(ref.uri, max_bytes=max_file_bytes, retries=io_retries)
            except OSError as exc:  # a property of the input (gone, a folder, unreadable, too large)
                stats.reject(source, *rejection_reason(exc))
                continue
        ext = ref.uri.rsplit(".", 1)[-1].lower() if "." in ref.uri[-6:] else ""
        yield RawItem(source, ref.uri, order, data, ext)


def _upstream(sample: dict) -> dict:
    upstream = {"meta": sample_meta(sample)}
    if "txt" in sample:
        upstream["txt"] = sample["txt"].decode("utf-8", errors="replace")
    return upstream


def _iter_tar(uri: str, order: int, stats: UnitStats, max_file_bytes: int) -> Iterator[RawItem]:
    tar_source = display_source(uri)

    def unsafe(name: str) -> None:
        stats.count("inputs")
        stats.reject(f"{tar_source}{MEMBER_SEP}{display_source(name)}", "unsafe_tar_member",
                     "absolute path or '..' in a tar member name")

    def skipped(name: str, why: str) -> None:
        stats.count("tar_members_skipped")  # not inputs: links, extensionless names, repeated fields, too large
        listed = stats.extra.setdefault("skipped_members", [])
        if len(listed) < 100:
            listed.append({"member": f"{tar_source}{MEMBER_SEP}{display_source(name)}", "why": why})

    try:
        for idx, sample in enumerate(read_shard(uri, on_unsafe=unsafe, on_skip=skipped,
                                                max_member_bytes=max_file_bytes)):
            stats.count("inputs")
            key = sample["__key__"]
            src = f"{tar_source}{MEMBER_SEP}{display_source(key)}"
            ext, data = sample_image(sample)
            if data is None and image_too_large(sample):
                stats.reject(src, "too_large")
                continue
            if data is None:
                stats.reject(
                    src, "no_image_in_sample", f"members: {sorted(k for k in sample if not k.startswith('__'))}"
                )
                continue
            if len(data) > max_file_bytes:
                stats.reject(src, "too_large")
                continue
            yield RawItem(src, f"{uri}{MEMBER_SEP}{key}", order + idx, data, ext, _upstream(sample))
    except FileNotFoundError:
        stats.count("inputs")
        stats.reject(tar_source, "vanished", "listed but gone when read")
    except CORRUPT_INPUT_ERRORS as exc:  # what was read is kept; the unreadable rest is one input
        stats.count("inputs")
        stats.reject(tar_source, "corrupt_tar", f"{type(exc).__name__}: {exc}")


def _iter_tar_members(tar_uri: str, wanted: list[tuple[int, str]], stats: UnitStats,
                      max_file_bytes: int) -> Iterator[RawItem]:
    """Members named by ``wanted`` = [(listing position, key)], in one pass over the tar."""
    tar_source = display_source(tar_uri)
    by_key: dict[str, list[int]] = {}
    for pos, key in wanted:
        by_key.setdefault(key, []).append(pos)
    stats.count("inputs", len(wanted))
    error = ""
    try:
        for sample in read_shard(tar_uri, max_member_bytes=max_file_bytes):
            positions = by_key.pop(sample["__key__"], None)
            if positions is None:
                continue
            src = f"{tar_source}{MEMBER_SEP}{display_source(sample['__key__'])}"
            ext, data = sample_image(sample)
            for pos in positions:
                if data is None and image_too_large(sample):
                    stats.reject(src, "too_large")
                elif data is None:
                    stats.reject(src, "no_image_in_sample")
                elif len(data) > max_file_bytes:
                    stats.reject(src, "too_large")
                else:
                    yield RawItem(src, f"{tar_uri}{MEMBER_SEP}{sample['__key__']}", pos * MEMBER_ORDER_STRIDE,
                                  data, ext, _upstream(sample))
            if not by_key:
                return
    except FileNotFoundError:
        error = "tar gone when read"
    except CORRUPT_INPUT_ERRORS as exc:
        error = f"tar unreadable: {type(exc).__name__}: {exc}"
    for key, positions in sorted(by_key.items(), key=lambda kv: kv[1][0]):
        for _ in positions:
            stats.reject(f"{tar_source}{MEMBER_SEP}{display_source(key)}", "vanished", error or "member not in tar")


def read_source(uri: str, max_file_bytes: int, io_retries: int = 3) -> bytes:
    """Re-read one source named by a manifest row (a file/URL, or ``tar#key`` for a shard member)."""
    member = split_member_uri(uri)
    if member is not None:
        tar, key = member
        for sample in read_shard(tar, max_member_bytes=max_file_bytes):
            if sample["__key__"] == key:
                _, data = sample_image(sample)
                if data is not None:
                    return data
                if image_too_large(sample):  # the same error read_bytes gives for a large file
                    raise FileTooLarge(display_source(uri), max_file_bytes)
        raise FileNotFoundError(f"{key} not found in {tar}")
    return read_bytes(uri, max_bytes=max_file_bytes, retries=io_retries)
