"""Turning a partition's listed inputs into raw items (bytes + provenance), errors as counted values.

Every listed input ends up either as a ``RawItem`` or as one rejection in ``stats`` (with its
``inputs`` count), so ``samples + rejections == inputs`` holds for every partition. A tar's members
are its inputs; a tar that cannot be read to its end is one more input, rejected as ``corrupt_tar``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS, FileTooLarge, is_transient, rejection_reason
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.sources import INVALID, TAR, read_bytes
from supirkit.datapipe.stats import UnitStats
from supirkit.datapipe.tario import image_too_large, parse_meta, read_shard, sample_image

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


#: why ``iter_tar_samples`` passed a member over -> the rejection reason of that member (an input of its own);
#: the other reasons (folders, a field dropped for its size from a sample that goes on) are not inputs
MEMBER_REJECTIONS = {"link": "tar_link", "special_file": "special_file", "not_a_file": "not_a_file",
                     "no_extension": "no_extension", "reserved_field": "reserved_field",
                     "repeated_field": "repeated_field"}


def _upstream(sample: dict) -> dict:
    """Metadata and caption carried from an input shard; ``BadMetadata`` for a ``.json`` member that is not a
    JSON object (the sample is rejected for it, never its tar)."""
    upstream = {"meta": parse_meta(sample.get("json"))}
    if "txt" in sample:
        upstream["txt"] = sample["txt"].decode("utf-8", errors="replace")
    return upstream


def _sample_item(sample: dict, uri: str, src: str, order: int, stats: UnitStats,
                 max_file_bytes: int) -> Optional[RawItem]:
    """The raw item of one tar sample, or None after recording why it has none."""
    ext, data = sample_image(sample)
    if data is None and image_too_large(sample):
        stats.reject(src, "too_large")
        return None
    if data is None:
        stats.reject(src, "no_image_in_sample", f"members: {sorted(k for k in sample if not k.startswith('__'))}")
        return None
    if len(data) > max_file_bytes:
        stats.reject(src, "too_large")
        return None
    try:
        upstream = _upstream(sample)
    except CORRUPT_INPUT_ERRORS as exc:
        stats.reject(src, *rejection_reason(exc))
        return None
    return RawItem(src, f"{uri}{MEMBER_SEP}{sample['__key__']}", order, data, ext, upstream)


def _tar_failure(tar_source: str, exc: BaseException, stats: UnitStats) -> None:
    """The unreadable rest of a tar is one more input, rejected with the reason; a transient error is not the
    tar's fault and fails the unit instead (it is retried)."""
    if is_transient(exc):
        raise exc
    stats.count("inputs")
    reason, detail = rejection_reason(exc)
    if reason in ("corrupt", "bad_metadata"):
        reason = "corrupt_tar"
    stats.reject(tar_source, reason, detail)


def _iter_tar(uri: str, order: int, stats: UnitStats, max_file_bytes: int) -> Iterator[RawItem]:
    tar_source = display_source(uri)

    def unsafe(name: str) -> None:
        stats.count("inputs")
        stats.reject(f"{tar_source}{MEMBER_SEP}{display_source(name)}", "unsafe_tar_member",
                     "absolute path or '..' in a tar member name")

    def skipped(name: str, why: str) -> None:
        member = f"{tar_source}{MEMBER_SEP}{display_source(name)}"
        reason = MEMBER_REJECTIONS.get(why)
        if reason is not None:  # a member that could have been an input: counted as one, with its reason
            stats.count("inputs")
            stats.reject(member, reason, f"tar member not taken: {why}")
            return
        stats.count("tar_members_skipped")  # folders, fields dropped for their size from a sample that goes on
        listed = stats.extra.setdefault("skipped_members", [])
        if len(listed) < 100:
            listed.append({"member": member, "why": why})

    try:
        for idx, sample in enumerate(read_shard(uri, on_unsafe=unsafe, on_skip=skipped,
                                                max_member_bytes=max_file_bytes)):
            stats.count("inputs")
            src = f"{tar_source}{MEMBER_SEP}{display_source(sample['__key__'])}"
            item = _sample_item(sample, uri, src, order + idx, stats, max_file_bytes)
            if item is not None:
                yield item
    except (OSError, *CORRUPT_INPUT_ERRORS) as exc:  # what was read is kept; the unreadable rest is one input
        _tar_failure(tar_source, exc, stats)


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
            for pos in positions:
                item = _sample_item(sample, tar_uri, src, pos * MEMBER_ORDER_STRIDE, stats, max_file_bytes)
                if item is not None:
                    yield item
            if not by_key:
                return
    except FileNotFoundError:
        error = "tar gone when read"
    except (OSError, *CORRUPT_INPUT_ERRORS) as exc:
        if is_transient(exc):
            raise
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
