"""Where img2img negatives take their sources: the deterministic source rule of ``negatives.job`` over
input groups. A group is an input shard (``ShardGroup``: its samples) or, when the sources are image files
(a folder, a glob, a path list), a planned partition of them (``FileGroup``: its files); either way a group
has sorted member keys, and one read of it serves every sample of an output shard that uses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from supirkit.datapipe.decode import DecodeError, decode_rgb
from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS, FileTooLarge
from supirkit.datapipe.inputs import MEMBER_SEP
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.plan import load_partition
from supirkit.datapipe.sources import FILE, read_bytes
from supirkit.datapipe.stats import UnitStats
from supirkit.datapipe.tario import image_too_large, read_shard, sample_image
from supirkit.negatives.config import NegativesConfig

#: an input spec naming planned file group N (``files:N``) instead of a shard URL
FILE_GROUP = "files:"


@dataclass(frozen=True)
class SlotPick:
    """Sample ``t`` of an output shard takes member ``position`` (in the shard's seeded order) of input ``input``."""

    t: int
    input: int
    position: int  # unwrapped: the member is Q[position mod m]


class SourcePlan:
    """The deterministic source rule of the module docstring (steps 1-3), as pure arithmetic."""

    def __init__(self, n_inputs: int, job_seed: int, samples_per_shard: int, shards_per_partition: int) -> None:
        if n_inputs < 1:
            raise ValueError("img2img needs at least one input shard")
        self.m_inputs = n_inputs
        self.seed = job_seed
        self.n = samples_per_shard
        self.k = shards_per_partition
        self.per_round = math.ceil(samples_per_shard / shards_per_partition)
        self._shard_order = np.random.default_rng([job_seed, 1]).permutation(n_inputs)

    def picks(self, partition: int, n_samples: int) -> list[SlotPick]:
        out = []
        for t in range(n_samples):
            u, q = t % self.k, t // self.k
            g = partition * self.k + u
            out.append(
                SlotPick(t, int(self._shard_order[g % self.m_inputs]), (g // self.m_inputs) * self.per_round + q)
            )
        return out

    def member_order(self, input_pos: int, n_members: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, input_pos]).permutation(n_members)


def shard_keys(tar_url: str) -> list[str]:
    """Sorted keys of the samples with an image in an input shard: from its parquet index when it has a
    key column, else from one pass over the tar's headers."""
    import pyarrow.parquet as pq

    from supirkit.datapipe.sources import open_binary
    from supirkit.datapipe.tario import find_index, image_keys, scan_members

    index = find_index(tar_url)
    if index is not None:
        with open_binary(index) as f:
            pf = pq.ParquetFile(f)
            if "key" in pf.schema_arrow.names:
                keys = pf.read(columns=["key"]).column("key").to_pylist()
                return sorted({str(k) for k in keys if k})
    return image_keys(scan_members(tar_url))


class ShardGroup:
    """An input shard: its members are its samples, read in one sequential pass."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display = display_source(url)

    def keys(self) -> list[str]:
        return shard_keys(self.url)

    def samples(self, wanted: set[str], max_member_bytes: int) -> Iterator[dict]:
        return read_shard(self.url, max_member_bytes=max_member_bytes)


class FileGroup:
    """A planned partition of image files (sources given as folders, globs, lists): its members are the files,
    keyed by their listing position in the group; each wanted file is read on its own."""

    def __init__(self, work: Path, index: int) -> None:
        self.refs = [r for r in load_partition(work, index).refs if r.kind == FILE]
        self.display = f"file group {index}"
        self._by_key = {f"{i:06d}": r for i, r in enumerate(self.refs)}

    def keys(self) -> list[str]:
        return sorted(self._by_key)

    def samples(self, wanted: set[str], max_member_bytes: int) -> Iterator[dict]:
        for key in sorted(wanted):
            ref = self._by_key[key]
            try:
                data = read_bytes(ref.uri, max_bytes=max_member_bytes)
            except FileTooLarge:
                yield {"__key__": key, "__too_large__": ["jpg"], "__source__": ref.display}
                continue
            except OSError:  # gone since listing: the member is missing, a replacement is drawn
                continue
            yield {"__key__": key, "jpg": data, "__source__": ref.display}


def open_group(spec: str, work: Path):
    """``files:N`` is planned partition N of a file listing, anything else a shard URL."""
    if spec.startswith(FILE_GROUP):
        return FileGroup(work, int(spec[len(FILE_GROUP):]))
    return ShardGroup(spec)


def fit_to_size(rgb: np.ndarray, width: int, height: int, crop: str,
                rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Cut ``rgb`` to the aspect ratio width:height (centre or seeded random), resize to width x height."""
    import cv2

    h0, w0 = rgb.shape[:2]
    if w0 * height > h0 * width:  # wider than the target: cut the sides
        ch, cw = h0, max(1, round(h0 * width / height))
    else:
        cw, ch = w0, max(1, round(w0 * height / width))
    if crop == "random":
        x, y = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
    else:
        x, y = (w0 - cw) // 2, (h0 - ch) // 2
    region = rgb[y:y + ch, x:x + cw]
    interp = cv2.INTER_AREA if cw > width else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(region), (width, height), interpolation=interp)
    return out, [x, y, cw, ch]


@dataclass
class SourceImage:
    source: str  # display provenance: tar#key
    key: str
    rgb: np.ndarray  # already width x height
    width: int  # of the source image
    height: int
    crop: list[int]


class SourceReader:
    """Streams the chosen members of the input groups of one output shard, replacing unreadable ones."""

    def __init__(self, plan: SourcePlan, inputs: list[str], cfg: NegativesConfig, work: Path) -> None:
        self.plan, self.inputs, self.cfg, self.work = plan, inputs, cfg, work

    def iter_sources(self, partition: int, specs: dict,
                     stats: UnitStats) -> Iterator[tuple[int, SourceImage]]:
        """Yields (t, source) for every sample t of the partition that got a usable source."""
        by_input: dict[int, list[SlotPick]] = {}
        for pick in self.plan.picks(partition, len(specs)):
            by_input.setdefault(pick.input, []).append(pick)
        for input_pos, picks in by_input.items():  # in order of first use: each tar is read once
            yield from self._read_input(input_pos, picks, specs, stats)

    def _read_input(self, input_pos: int, picks: list[SlotPick], specs: dict,
                    stats: UnitStats) -> Iterator[tuple[int, SourceImage]]:
        group = open_group(self.inputs[input_pos], self.work)
        tar_display = group.display
        with stats.timer("read_index"):
            keys = group.keys()
        if not keys:
            for p in picks:
                stats.reject(tar_display, "no_members", f"input shard has no images (sample {specs[p.t].key})")
            return
        m = len(keys)
        order = self.plan.member_order(input_pos, m)
        want: dict[str, list[int]] = {}
        for p in picks:
            want.setdefault(keys[int(order[p.position % m])], []).append(p.t)
        primaries = set(want)
        # replacements: the members after those this output shard uses, in the seeded order, each once
        start = max(p.position for p in picks) + 1
        spare = (keys[int(order[pos % m])] for pos in range(start, start + m))
        tried: set[str] = set()
        good: list[str] = []  # members that gave a source: reused (with new seeds) when no fresh one is left
        passes = 0
        while want:
            passes += 1
            corrupt = yield from self._pass(group, want, specs, stats)
            tried.update(want)
            good.extend(k for k, ts in want.items() if not ts and k not in good)
            needing = [t for ts in want.values() for t in ts]
            want = {}
            for n_done, t in enumerate(needing):
                key = None if corrupt else next((k for k in spare if k not in tried and k not in primaries), None)
                if key is None and good and passes <= m + 1:  # the bound only guards against unstable reads
                    key = good[n_done % len(good)]
                if key is None:
                    stats.reject(tar_display, "corrupt_tar" if corrupt else "no_usable_source",
                                 f"no readable source left for sample {specs[t].key}")
                    continue
                tried.add(key)
                want.setdefault(key, []).append(t)

    def _pass(self, group, want: dict[str, list[int]], specs: dict, stats: UnitStats):
        """One read of a group (one sequential pass over a tar): yields the wanted members' samples; the lists
        of the members that gave a source are emptied, the others keep their samples. Returns True if the
        tar is corrupt."""
        dec, gen = self.cfg.sources.decode, self.cfg.generate
        tar_display = group.display
        found: set[str] = set()
        stream = group.samples(set(want), dec.max_file_bytes)
        corrupt = False
        while True:
            try:
                with stats.timer("read"):
                    sample = next(stream, None)
            except CORRUPT_INPUT_ERRORS as exc:  # truncated tar: what was read is used, the rest cannot be
                stats.reject(tar_display, "corrupt_tar", f"{type(exc).__name__}: {exc}")
                corrupt = True
                break
            if sample is None:
                break
            key = sample["__key__"]
            ts = want.get(key)
            if not ts:
                continue
            found.add(key)
            src = sample.get("__source__") or f"{tar_display}{MEMBER_SEP}{display_source(key)}"
            _, data = sample_image(sample)
            try:
                if data is None and image_too_large(sample):  # not read: over the limit by its header
                    raise DecodeError("too_large", f"image member larger than max_file_bytes={dec.max_file_bytes}")
                if data is None:
                    raise DecodeError("no_image_in_sample")
                if len(data) > dec.max_file_bytes:
                    raise DecodeError("too_large", f"{len(data)} bytes")
                with stats.timer("decode"):
                    rgb, _ = decode_rgb(data, dec.max_pixels)
            except DecodeError as exc:
                stats.reject(src, exc.reason, exc.detail)
                continue
            stats.count("sources_read")
            h0, w0 = rgb.shape[:2]
            for t in ts:
                with stats.timer("resize"):
                    fitted, crop = fit_to_size(rgb, gen.width, gen.height, self.cfg.sources.crop,
                                               np.random.default_rng([specs[t].seed, 1]))
                yield t, SourceImage(src, key, fitted, w0, h0, crop)
            ts.clear()
        if not corrupt:
            for key, ts in want.items():
                if ts and key not in found:
                    stats.reject(f"{tar_display}{MEMBER_SEP}{display_source(key)}", "missing_member",
                                 "listed, but not there (or unreadable) when read")
        return corrupt
