"""Looking at a shard set or a manifest: summary statistics, sample listings, a contact sheet, an HTML page.

Works on what supirkit writes and on what other tools write (img2dataset's ``00000.tar`` +
``00000.parquet`` + ``00000_stats.json``, any WebDataset tar), and on manifests (scores tables).
Everything is streamed shard by shard: the summary keeps bounded accumulators (a fixed-size uniform
sample of each numeric column for its quantiles, a capped counter for strings), never a whole table.

Where the numbers come from, cheapest first:
- sample count and fields present: the tar member names (headers only; data is skipped by seeking);
- metadata columns: the shard's parquet index when it has one (img2dataset rows whose ``status`` is
  not ``success`` describe failed downloads and are left out), else the ``.json`` members;
- resolution: ``width``/``height`` columns (else ``orig_*``, ``original_*``), else the image header.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from pydantic import Field

from supirkit.datapipe.config import DecodeConfig, Schema
from supirkit.datapipe.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_thumbnail, probe
from supirkit.datapipe.keys import display_source
from supirkit.datapipe.shards import (IMAGE_EXTS, image_too_large, list_shards, read_shard, sample_image, sample_meta,
                             split_member)

SHARDS, MANIFEST = "shards", "manifest"
#: short-side bins of the resolution histogram (pixels); SUPIR trains on 1024+ px crops of large photos
SIDE_BINS = (0, 256, 512, 1024, 2048, 4096)
WIDTH_COLUMNS = (("width", "height"), ("orig_width", "orig_height"), ("original_width", "original_height"))
CAPTION_COLUMNS = ("caption", "txt", "text")
#: metadata that describes the file, not its quality: never shown as a "score"
STRUCTURAL = {"key", "width", "height", "orig_width", "orig_height", "original_width", "original_height",
              "n_frames", "orientation", "copies", "bytes", "order", "partition", "has_caption", "status",
              "error_message", "exif", "sha256", "url", "source", "source_uri", "format", "mode", "encoded",
              "duplicates", "caption"}
#: a view adds labelled images next to each sample's thumbnail: ``views(thumbnail_rgb, meta) -> [(label, rgb)]``
ViewFn = Callable[[np.ndarray, dict], list]
#: ``make_pair(rgb, key) -> (hq, lq)``: a training pair made from a sample's full-resolution RGB (for
#: instance a degradation profile's target and LQ); see ``make_pair_tiles``. Passed in by the caller, so
#: this package never imports the code that degrades.
PairFn = Callable[[np.ndarray, str], tuple]


# ------------------------------------------------------------------------------------------ config

class SummaryOptions(Schema):
    reservoir: int = Field(10_000, ge=10, description="Values kept per numeric column for its quantiles.")
    max_distinct: int = Field(1000, ge=1, description="Distinct strings counted per column before counting stops.")


class SampleOptions(Schema):
    n: int = Field(16, ge=1, le=10_000, description="Samples in --grid / --html when --n is not given.")
    seed: Optional[int] = Field(None, description="None: the first samples; a number: a uniform random choice.")


class GridOptions(Schema):
    thumb: int = Field(256, ge=16, le=2048)
    columns: int = Field(0, ge=0, description="0: about square.")
    caption_lines: int = Field(2, ge=0, le=10)
    scores: list[str] = Field(default_factory=list, description="Fields shown under each image; [] = the first "
                                                                "numeric quality fields found.")


class HtmlOptions(Schema):
    thumb: int = Field(320, ge=16, le=2048)


class InspectConfig(Schema):
    summary: SummaryOptions = SummaryOptions()
    samples: SampleOptions = SampleOptions()
    grid: GridOptions = GridOptions()
    html: HtmlOptions = HtmlOptions()
    decode: DecodeConfig = DecodeConfig()


# ------------------------------------------------------------------------------------------ collections

@dataclass
class Collection:
    """What ``PATH`` names: a shard set (``urls``) or a manifest (parquet ``files``)."""

    kind: str
    spec: str
    urls: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        if self.kind == MANIFEST:
            return "manifest"
        if any(_stats_file(u) and _stats_file(u).endswith("_stats.json") for u in self.urls[:1]):
            return "img2dataset"
        if any(Path(u).with_name(Path(u).name[:-4] + ".stats.json").exists() for u in self.urls[:1] if _is_local(u)):
            return "supirkit"
        return "webdataset"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_collection(spec: str | Path) -> Collection:
    """A shard (``.tar``), a shard set (folder, brace pattern, glob) or a manifest (``.parquet`` file,
    or a folder of parquet files without tars)."""
    spec = str(spec)
    p = Path(spec)
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
    p = tar_url[:-4] + ".parquet"
    if _is_local(p):
        return p if os.path.isfile(p) else None
    return None


def _stats_file(tar_url: str) -> Optional[str]:
    """``X.stats.json`` (supirkit) or ``X_stats.json`` (img2dataset), when present."""
    if not _is_local(tar_url):
        return None
    for cand in (tar_url[:-4] + ".stats.json", tar_url[:-4] + "_stats.json"):
        if os.path.isfile(cand):
            return cand
    return None


# ------------------------------------------------------------------------------------------ accumulators

class ColumnStats:
    """Streaming statistics of one metadata column, whatever types its batches turn out to have."""

    def __init__(self, name: str, reservoir: int = 10_000, max_distinct: int = 1000, seed: int = 0) -> None:
        self.name = name
        self.count = 0  # non-null values
        self.nulls = 0
        self.types: Counter = Counter()
        self._k, self._max_distinct = reservoir, max_distinct
        self._rng = np.random.default_rng(seed)
        self._prio = np.empty(0)
        self._vals = np.empty(0)
        self.n_num = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.n_true = 0
        self.n_bool = 0
        self.strings: Counter = Counter()
        self.n_str = 0
        self.strings_capped = False

    def add(self, array) -> None:
        """One Arrow array (a column of one batch)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        n_null = array.null_count
        self.nulls += n_null
        valid = len(array) - n_null
        if valid == 0:
            return
        self.count += valid
        t = array.type
        if pa.types.is_boolean(t):
            self.types["bool"] += valid
            self.n_bool += valid
            self.n_true += int(pc.sum(array).as_py() or 0)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            self.types["number"] += valid
            vals = array.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                self.n_num += len(vals)
                self.sum += float(vals.sum())
                self.sumsq += float(np.square(vals).sum())
                self.min = min(self.min, float(vals.min()))
                self.max = max(self.max, float(vals.max()))
                # bottom-k by random priority = a uniform sample without replacement, batch by batch
                prio = np.concatenate([self._prio, self._rng.random(len(vals))])
                allv = np.concatenate([self._vals, vals])
                if len(prio) > self._k:
                    keep = np.argpartition(prio, self._k)[: self._k]
                    prio, allv = prio[keep], allv[keep]
                self._prio, self._vals = prio, allv
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            self.types["string"] += valid
            self.n_str += valid
            counts = pc.value_counts(array.drop_null())
            for v, c in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
                if v in self.strings or len(self.strings) < self._max_distinct:
                    self.strings[v] += c
                else:
                    self.strings_capped = True
        else:
            self.types[str(t)] += valid

    def quantiles(self, qs=(0.05, 0.5, 0.95)) -> list[float]:
        if not len(self._vals):
            return []
        return [float(x) for x in np.quantile(self._vals, qs)]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"count": self.count, "missing": self.nulls,
                               "type": "/".join(sorted(self.types)) or "null"}
        if self.n_num:
            mean = self.sum / self.n_num
            var = max(self.sumsq / self.n_num - mean * mean, 0.0)
            p5, p50, p95 = self.quantiles()
            out.update(min=self.min, p5=p5, median=p50, mean=mean, p95=p95, max=self.max, std=math.sqrt(var))
        if self.n_bool:
            out.update(true=self.n_true, true_fraction=self.n_true / self.n_bool)
        if self.n_str:
            out.update(distinct=len(self.strings), distinct_capped=self.strings_capped,
                       top=[[v, c] for v, c in self.strings.most_common(3)])
        return out


def _side_bin(short: float) -> str:
    for lo, hi in zip(SIDE_BINS, SIDE_BINS[1:]):
        if short < hi:
            return f"{lo}-{hi - 1}"
    return f">={SIDE_BINS[-1]}"


class Summary:
    """Accumulates a collection's summary; ``to_dict`` gives plain JSON-able numbers."""

    def __init__(self, coll: Collection, reservoir: int = 10_000, max_distinct: int = 1000) -> None:
        self.coll = coll
        self.samples = 0
        self.bytes = 0
        self.fields: Counter = Counter()
        self.captioned = 0
        self.caption_known = False
        self.resolution: Counter = Counter()
        self.columns: dict[str, ColumnStats] = {}
        self.rejected: Counter = Counter()
        self.metadata_from: set[str] = set()
        self.units = 0
        self._reservoir, self._max_distinct = reservoir, max_distinct

    def column(self, name: str) -> ColumnStats:
        if name not in self.columns:
            self.columns[name] = ColumnStats(name, self._reservoir, self._max_distinct, seed=len(self.columns))
        return self.columns[name]

    def add_table(self, table) -> None:
        """Metadata rows (one per sample): column statistics and the resolution histogram."""
        for name in table.column_names:
            if name in ("source_uri",):
                continue
            self.column(name).add(table.column(name))
        import pyarrow as pa
        import pyarrow.compute as pc

        for wcol, hcol in WIDTH_COLUMNS:
            if wcol in table.column_names and hcol in table.column_names:
                try:
                    w, h = (pc.fill_null(table.column(c).cast(pa.float64()), math.nan).to_numpy() for c in (wcol, hcol))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue  # not numeric here
                short = np.fmin(w, h)  # NaN only where both are missing
                short[np.isnan(w) | np.isnan(h)] = np.nan
                self.resolution["unknown"] += int(np.isnan(short).sum())
                idx = np.digitize(short[~np.isnan(short)], SIDE_BINS[1:])
                for b, c in zip(*np.unique(idx, return_counts=True)):
                    self.resolution[_side_bin(SIDE_BINS[b])] += int(c)
                return
        self.resolution["unknown"] += table.num_rows

    def to_dict(self) -> dict:
        order = [_side_bin(lo) for lo in SIDE_BINS] + ["unknown"]
        return {
            "path": self.coll.spec, "kind": self.coll.kind, "layout": self.coll.layout, "units": self.units,
            "samples": self.samples, "bytes": self.bytes,
            "resolution_short_side": {k: self.resolution[k] for k in order if self.resolution.get(k)},
            "fields": dict(sorted(self.fields.items())),
            "caption_coverage": (self.captioned / self.samples if self.samples and self.caption_known else None),
            "captioned": self.captioned if self.caption_known else None,
            "rejected": dict(self.rejected.most_common()),
            "metadata_from": sorted(self.metadata_from),
            "columns": {name: c.to_dict() for name, c in sorted(self.columns.items())},
        }


# ------------------------------------------------------------------------------------------ summary

def _scan_tar_members(url: str) -> tuple[Counter, int, set]:
    """Fields per extension, sample count and keys of one tar, from its headers only (members the
    readers refuse, absolute or ``..`` names, are not counted)."""
    import tarfile

    from supirkit.datapipe.shards import UnsafeMember, _check_member

    fields: Counter = Counter()
    keys: dict[str, set] = {}
    with tarfile.open(url, mode="r:") as tar:  # random access: member data is skipped by seeking
        for info in tar:
            tar.members = []
            if not info.isreg():
                continue
            try:
                _check_member(info.name)
            except UnsafeMember:
                continue
            key, ext = split_member(info.name)
            if key is None:
                continue
            keys.setdefault(key, set()).add(ext.lower())
    for exts in keys.values():
        for ext in exts:
            fields[ext] += 1
        if exts & set(IMAGE_EXTS):
            fields["(image)"] += 1
    return fields, len(keys), set(keys)


def _read_index(path: str, keys: Optional[set]):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if "status" in t.column_names:  # img2dataset: failed downloads have rows too
        t = t.filter(pc.equal(t["status"], "success"))
    if keys is not None and "key" in t.column_names and t.num_rows != len(keys):
        # the index disagrees with the tar (a tool that indexes more than it wrote): trust the tar
        t = t.filter(pc.is_in(t["key"].cast(pa.string()), value_set=pa.array(sorted(keys), pa.string())))
    return t


def _meta_table_from_tar(url: str):
    """Metadata rows of a shard without an index: its json members (flattened), image size from the header,
    and whether it has a caption."""
    import pyarrow as pa

    from supirkit.datapipe.shards import rows_to_table, _flatten_meta

    rows = []
    for sample in read_shard(url):
        meta = _flatten_meta(sample_meta(sample))
        row = {k: v for k, v in meta.items() if not isinstance(v, (dict, list))}
        row["key"] = sample["__key__"]
        ext, data = sample_image(sample)
        if data is not None and ("width" not in row or "height" not in row):
            try:
                header = probe(data)
                row.setdefault("width", header.width)
                row.setdefault("height", header.height)
            except DecodeError:
                pass
        row["has_caption"] = "txt" in sample
        rows.append(row)
    return rows_to_table(rows) if rows else pa.table({"key": pa.array([], pa.string())})


def summarize(spec: str | Path | Collection, reservoir: int = 10_000, max_distinct: int = 1000) -> dict:
    """The summary of a shard set or a manifest, as a JSON-able dict (see ``format_summary``)."""
    coll = spec if isinstance(spec, Collection) else open_collection(spec)
    s = Summary(coll, reservoir, max_distinct)
    if coll.kind == MANIFEST:
        _summarize_manifest(coll, s)
    else:
        _summarize_shards(coll, s)
    return s.to_dict()


def _summarize_shards(coll: Collection, s: Summary) -> None:
    for url in coll.urls:
        s.units += 1
        keys: Optional[set] = None
        if _is_local(url):
            s.bytes += os.path.getsize(url)
            fields, n, keys = _scan_tar_members(url)
            s.fields.update(fields)
            s.samples += n
            s.captioned += fields.get("txt", 0)
            s.caption_known = True
        index = _index_file(url)
        if index is not None:
            table = _read_index(index, keys)
            s.metadata_from.add("parquet index")
        else:
            table = _meta_table_from_tar(url)
            s.metadata_from.add("tar json")
            if keys is None:  # remote tar: the scan is the count
                s.samples += table.num_rows
                s.captioned += sum(table.column("has_caption").to_pylist()) if "has_caption" in table.column_names else 0
                s.caption_known = True
        s.add_table(table)
        stats = _stats_file(url)
        if stats:
            _add_rejections(stats, s.rejected)


def _add_rejections(path: str, into: Counter) -> None:
    try:
        st = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    if isinstance(st.get("rejected"), dict):  # supirkit
        into.update({k: int(v) for k, v in st["rejected"].items()})
    elif isinstance(st.get("status_dict"), dict):  # img2dataset: error message -> count
        into.update({k: int(v) for k, v in st["status_dict"].items() if k != "success"})


def _summarize_manifest(coll: Collection, s: Summary) -> None:
    import pyarrow.parquet as pq

    for f in coll.files:
        s.units += 1
        pf = pq.ParquetFile(f)
        s.metadata_from.add("manifest")
        for batch in pf.iter_batches(batch_size=65536):
            import pyarrow as pa

            table = pa.Table.from_batches([batch])
            s.samples += table.num_rows
            s.add_table(table)
            if "bytes" in table.column_names:
                import pyarrow.compute as pc

                s.bytes += int(pc.sum(table["bytes"]).as_py() or 0)
            cap = _caption_mask(table)
            if cap is not None:
                s.caption_known = True
                s.captioned += cap
    if not s.bytes:
        s.bytes = sum(os.path.getsize(f) for f in coll.files if _is_local(f))


def _caption_mask(table) -> Optional[int]:
    import pyarrow.compute as pc

    if "has_caption" in table.column_names:
        return int(pc.sum(table["has_caption"]).as_py() or 0)
    for name in CAPTION_COLUMNS:
        if name in table.column_names:
            col = table[name]
            nonempty = pc.and_(pc.is_valid(col), pc.greater(pc.utf8_length(col.cast("string")), 0))
            return int(pc.sum(nonempty).as_py() or 0)
    return None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_summary(summary: dict) -> str:
    """The summary as text for a terminal."""
    lines = []
    n = summary["samples"]
    unit = "files" if summary["kind"] == MANIFEST else "shards"
    what = "manifest" if summary["kind"] == MANIFEST else f"{summary['layout']} shard set"
    lines.append(f"{summary['path']}: {what}, {summary['units']} {unit}")
    per = f" ({_human_bytes(summary['bytes'] / n)} per sample)" if n else ""
    lines.append(f"samples: {n:,}   bytes: {_human_bytes(summary['bytes'])}{per}")
    cov = summary["caption_coverage"]
    lines.append("caption coverage: " + ("unknown (no caption field)" if cov is None
                                         else f"{100 * cov:.1f}% ({summary['captioned']:,} of {n:,})"))
    if summary["rejected"]:
        lines.append("rejected when written: " + ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()))
    if summary["fields"]:
        lines.append("fields (samples having each): " + ", ".join(
            f"{k} {v:,} ({100 * v / max(n, 1):.0f}%)" for k, v in summary["fields"].items()))
    res = summary["resolution_short_side"]
    if res:
        lines.append("resolution (short side, px):")
        top = max(res.values())
        for k, v in res.items():
            lines.append(f"  {k:>10} {v:>9,} {'#' * max(1, round(30 * v / top))}")
    cols = summary["columns"]
    if cols:
        lines.append(f"metadata columns (from {', '.join(summary['metadata_from'])}):")
        width = min(max(len(c) for c in cols), 32)
        for name, c in cols.items():
            head = f"  {name[:width]:<{width}} {c['type']:<8} n={c['count']:,}"
            if c["missing"]:
                head += f" missing={c['missing']:,}"
            if "mean" in c:
                head += (f"  min {_fmt(c['min'])}  p5 {_fmt(c['p5'])}  median {_fmt(c['median'])}  "
                         f"mean {_fmt(c['mean'])}  p95 {_fmt(c['p95'])}  max {_fmt(c['max'])}")
            if "true" in c:
                head += f"  true {c['true']:,} ({100 * c['true_fraction']:.0f}%)"
            if "distinct" in c:
                if c["distinct"] == c["count"] and not c["distinct_capped"]:
                    head += "  all distinct"
                elif c["distinct_capped"]:
                    head += f"  distinct > {c['distinct']:,}"
                else:
                    tops = ", ".join(f"{str(v)[:24]!r} {k:,}" for v, k in c["top"])
                    head += f"  distinct {c['distinct']:,}  top: {tops}"
            lines.append(head)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ samples

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


def iter_samples(coll: Collection, n: int, seed: Optional[int] = None, max_file_bytes: int = 512 << 20) -> Iterator[Sample]:
    """``n`` samples: the first ones, or with ``seed`` a uniform random choice over the whole collection
    (chosen from keys/rows alone; only the chosen samples' bytes are kept)."""
    if n <= 0:
        return
    if coll.kind == MANIFEST:
        yield from _iter_manifest_samples(coll, n, seed, max_file_bytes)
        return
    if seed is None:
        left = n
        for url in coll.urls:
            for sample in read_shard(url, max_member_bytes=max_file_bytes):
                yield _sample_from_tar(sample, url)
                left -= 1
                if left == 0:
                    return
        return
    chosen = _bottom_k(((u, k) for u in coll.urls for k in _keys_of(u)), n, seed)
    wanted: dict[str, list] = {}
    for u, k in chosen:
        wanted.setdefault(u, []).append(k)
    for url in coll.urls:
        if url not in wanted:
            continue
        keys = set(wanted[url])
        for sample in read_shard(url, max_member_bytes=max_file_bytes):
            if sample["__key__"] in keys:
                yield _sample_from_tar(sample, url)


def _keys_of(url: str) -> list[str]:
    index = _index_file(url)
    if _is_local(url):
        return sorted(_scan_tar_members(url)[2]) if index is None else _index_keys(index, url)
    return [s["__key__"] for s in read_shard(url)]


def _index_keys(index: str, url: str) -> list[str]:
    t = _read_index(index, None)
    if "key" not in t.column_names:
        return sorted(_scan_tar_members(url)[2])
    keys = [str(k) for k in t.column("key").to_pylist() if k is not None]
    present = _scan_tar_members(url)[2]
    return [k for k in keys if k in present]


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
    lines.append(json.dumps(s.meta, indent=1, ensure_ascii=False, sort_keys=True, default=str))
    lines.append("caption: " + (s.caption if s.caption is not None else "(none)"))
    return "\n".join(lines)


def score_items(meta: dict, names: Optional[list[str]] = None, limit: int = 4) -> list[tuple[str, float]]:
    """The numeric quality fields of a sample (nested ones as ``a.b``), or exactly ``names`` when given."""
    from supirkit.datapipe.shards import _flatten_meta

    flat = _flatten_meta(meta)
    if names:
        return [(n, flat[n]) for n in names if isinstance(flat.get(n), (int, float)) and not isinstance(flat.get(n), bool)]
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


# ------------------------------------------------------------------------------------------ pictures

@dataclass
class Tile:
    """A sample prepared for display: thumbnails (the image, then any extra views) and text lines."""

    sample: Sample
    images: list  # [(label, HxWx3 uint8)]
    size: Optional[tuple[int, int]] = None  # width, height of the full image
    error: str = ""


def make_tiles(samples: Iterable[Sample], thumb: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               views: Optional[ViewFn] = None) -> list[Tile]:
    """Thumbnails of ``samples`` (longer side ``thumb``), each with the extra images ``views`` adds.

    ``views(rgb, meta) -> [(label, rgb)]`` gets the full-resolution decode (so a view such as a
    degradation sees the pixels training would see, not a thumbnail) and ``meta`` with ``key`` set; its
    images are fitted to the same box (enlarged by nearest neighbour when smaller, so LQ pixels stay
    visible). A view that raises gives the tile its error instead of stopping the sheet."""
    from supirkit.datapipe.decode import decode_rgb

    tiles = []
    for s in samples:
        if s.image is None:
            tiles.append(Tile(s, [], None, s.error or "no image in sample"))
            continue
        try:
            if views is None:  # JPEGs are decoded at reduced scale
                rgb, header = decode_thumbnail(s.image, thumb, max_pixels)
            else:
                full, header = decode_rgb(s.image, max_pixels)
                rgb = _fit_thumb(full, (thumb, thumb), enlarge=False)
        except DecodeError as exc:
            tiles.append(Tile(s, [], None, f"{exc.reason}"))
            continue
        images = [("", rgb)]
        if views is not None:
            try:
                extra = views(full, {**s.meta, "key": s.meta.get("key", s.key)})
                images += [(label, _fit_thumb(np.asarray(img, dtype=np.uint8), (thumb, thumb), enlarge=True))
                           for label, img in extra]
            except Exception as exc:  # the view's own error, shown on the tile
                tiles.append(Tile(s, [], (header.width, header.height), f"view: {type(exc).__name__}: {exc}"[:200]))
                continue
        tiles.append(Tile(s, images, (header.width, header.height)))
    return tiles


def _fit_thumb(img: np.ndarray, box: tuple[int, int], enlarge: bool) -> np.ndarray:
    """``img`` scaled to fit ``box`` (width, height), aspect kept. Shrinking uses Lanczos; enlarging (only
    when ``enlarge``) uses nearest neighbour, so the pixels of a small LQ stay visible as pixels."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = min(box[0] / w, box[1] / h)
    if scale >= 1 and not enlarge:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(img).resize(size, resample), dtype=np.uint8)


def make_pair_tiles(samples: Iterable[Sample], thumb: int, make_pair: PairFn,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Tile]:
    """Tiles showing, per sample, the HQ/LQ pair ``make_pair(rgb, key)`` builds from the sample's image.

    The image is decoded at full resolution by the decode rule (a pair is made from the pixels training
    would see, not from a thumbnail). HQ and LQ are shown in boxes of the same size: the HQ fitted to
    ``thumb``, the LQ at the HQ thumbnail's size (nearest neighbour when enlarged, so a x4 LQ shows its
    pixels). Labels give both full sizes. A sample whose image cannot be decoded, or for which
    ``make_pair`` raises, gets a tile with the reason: one bad sample never stops the sheet."""
    from supirkit.datapipe.decode import decode_rgb

    tiles = []
    for s in samples:
        if s.image is None:
            tiles.append(Tile(s, [], None, s.error or "no image in sample"))
            continue
        try:
            rgb, header = decode_rgb(s.image, max_pixels)
        except DecodeError as exc:
            tiles.append(Tile(s, [], None, exc.reason))
            continue
        try:
            hq, lq = make_pair(rgb, s.key)
            hq, lq = np.asarray(hq, dtype=np.uint8), np.asarray(lq, dtype=np.uint8)
            if hq.ndim != 3 or lq.ndim != 3 or hq.shape[2] != 3 or lq.shape[2] != 3:
                raise ValueError(f"make_pair must return two HxWx3 RGB arrays, got {hq.shape} and {lq.shape}")
        except Exception as exc:  # the pair maker's own error, shown on the tile
            tiles.append(Tile(s, [], (header.width, header.height), f"pair: {type(exc).__name__}: {exc}"[:200]))
            continue
        hq_thumb = _fit_thumb(hq, (thumb, thumb), enlarge=False)
        lq_thumb = _fit_thumb(lq, (hq_thumb.shape[1], hq_thumb.shape[0]), enlarge=True)
        images = [(f"HQ {hq.shape[1]}x{hq.shape[0]}", hq_thumb), (f"LQ {lq.shape[1]}x{lq.shape[0]}", lq_thumb)]
        tiles.append(Tile(s, images, (header.width, header.height)))
    return tiles


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    words, out, cur = text.split(), [], ""
    for w in words:
        cand = f"{cur} {w}".strip()
        if font.getlength(cand) <= width:
            cur = cand
            continue
        if cur:
            out.append(cur)
        cur = w
        if len(out) == lines:
            break
    if cur and len(out) < lines:
        out.append(cur)
    if len(out) == lines and " ".join(out) != " ".join(words):
        out[-1] = _fit(out[-1] + " ...", font, width)
    return [_fit(x, font, width) for x in out[:lines]]


def _error_text(tile: Tile, what: str = "") -> str:
    """Why a tile has no picture: the image could not be read, or a pair or view could not be made."""
    return tile.error if tile.error.startswith(("pair:", "view:")) else f"{what}unreadable: {tile.error}"


def tile_lines(tile: Tile, score_names: Optional[list[str]] = None, caption_lines: int = 2) -> tuple[str, list[str], str]:
    """(key line, caption lines as words, scores line) of a tile's label."""
    s = tile.sample
    key_line = s.key + (f"  {tile.size[0]}x{tile.size[1]}" if tile.size else "")
    caption = s.caption or ""
    scores = "  ".join(f"{k}={v:.3g}" for k, v in score_items(s.meta, score_names))
    if tile.error:
        scores = _error_text(tile)
    return key_line, [caption] if caption else [], scores


def write_grid(tiles: list[Tile], path: str | Path, thumb: int, columns: int = 0, caption_lines: int = 2,
               score_names: Optional[list[str]] = None) -> Path:
    """A contact sheet PNG: each image (and its extra views) with key, caption start and scores below."""
    from PIL import Image, ImageDraw

    n = max(len(tiles), 1)
    n_views = max((len(t.images) for t in tiles), default=1) or 1
    cols = columns or max(1, math.ceil(math.sqrt(n / n_views)))
    rows = math.ceil(n / cols)
    font = _font(11)
    line_h = 14
    pad = 6
    cell_w = n_views * thumb + (n_views - 1) * 2 + 2 * pad
    text_h = (2 + caption_lines) * line_h
    cell_h = thumb + text_h + 2 * pad
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        x0, y0 = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        if not tile.images:
            draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], outline=(200, 0, 0), fill=(245, 235, 235))
        for j, (label, img) in enumerate(tile.images):
            xi = x0 + j * (thumb + 2)
            h, w = img.shape[:2]
            sheet.paste(Image.fromarray(img), (xi + (thumb - w) // 2, y0 + (thumb - h) // 2))
            if label:
                draw.rectangle([xi, y0, xi + font.getlength(label) + 4, y0 + line_h], fill=(0, 0, 0))
                draw.text((xi + 2, y0), label, fill=(255, 255, 255), font=font)
        key_line, caption, scores = tile_lines(tile, score_names, caption_lines)
        width = cell_w - 2 * pad
        y = y0 + thumb + 2
        draw.text((x0, y), _fit(key_line, font, width), fill=(0, 0, 0), font=font)
        y += line_h
        for line in (_wrap(caption[0], font, width, caption_lines) if caption else ["(no caption)"]):
            draw.text((x0, y), line, fill=(60, 60, 60) if caption else (150, 150, 150), font=font)
            y += line_h
        y = y0 + thumb + 2 + (1 + caption_lines) * line_h
        draw.text((x0, y), _fit(scores, font, width), fill=(0, 70, 140) if not tile.error else (180, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def _jpeg_b64(img: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:13px system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}}
pre.summary{{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;font-size:12px}}
#q{{width:320px;padding:4px;margin:8px 0}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax({card}px,1fr));gap:12px}}
.card{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;overflow:hidden}}
.card img{{max-width:100%;display:block;margin:0 auto 4px;image-rendering:auto}}
.views{{display:flex;gap:4px;align-items:flex-start}} .views figure{{margin:0;flex:1}}
figcaption{{font-size:11px;color:#666;text-align:center}}
.key{{font-family:monospace;font-weight:600;word-break:break-all}} .src{{color:#777;word-break:break-all;font-size:11px}}
.cap{{margin:4px 0}} .scores{{color:#0a4f8c;font-family:monospace}} .err{{color:#b00}}
table{{border-collapse:collapse;font-size:11px;width:100%}} td{{border-top:1px solid #eee;padding:1px 4px;vertical-align:top;word-break:break-all}}
</style></head><body>
<h2>{title}</h2>
<pre class="summary">{summary}</pre>
<input id="q" placeholder="filter: key, caption, source, metadata..." oninput="filt(this.value)">
<div class="grid">
{cards}
</div>
<script>
function filt(q){{q=q.toLowerCase();for(const c of document.querySelectorAll('.card')){{
c.style.display=c.textContent.toLowerCase().includes(q)?'':'none';}}}}
</script>
</body></html>
"""


def write_html(tiles: list[Tile], path: str | Path, title: str, summary_text: str = "",
               score_names: Optional[list[str]] = None) -> Path:
    """A self-contained page (thumbnails embedded as base64 JPEG, no external file or script)."""
    from supirkit.datapipe.shards import _flatten_meta

    cards = []
    card_w = 0
    for tile in tiles:
        s = tile.sample
        figs = []
        for label, img in tile.images:
            card_w = max(card_w, img.shape[1] * len(tile.images))
            figs.append(f'<figure><img alt="{html.escape(label or s.key)}" src="data:image/jpeg;base64,{_jpeg_b64(img)}">'
                        + (f"<figcaption>{html.escape(label)}</figcaption>" if label else "") + "</figure>")
        body = f'<div class="views">{"".join(figs)}</div>' if figs else \
            f'<div class="err">{html.escape(_error_text(tile, "image "))}</div>'
        size = f" {tile.size[0]}x{tile.size[1]}" if tile.size else ""
        source = s.meta.get("source") if isinstance(s.meta.get("source"), str) else display_source(s.where)
        caption = html.escape(s.caption) if s.caption else '<i style="color:#999">(no caption)</i>'
        scores = "  ".join(f"{html.escape(k)}={v:.3g}" for k, v in score_items(s.meta, score_names))
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v)[:300])}</td></tr>"
                       for k, v in sorted(_flatten_meta(s.meta).items()))
        cards.append(f'<div class="card"><div class="key">{html.escape(s.key)}{size}</div>{body}'
                     f'<div class="src">{html.escape(str(source))}</div><div class="cap">{caption}</div>'
                     f'<div class="scores">{scores}</div>'
                     f"<details><summary>metadata</summary><table>{rows}</table></details></div>")
    page = _PAGE.format(title=html.escape(title), summary=html.escape(summary_text), card=max(card_w + 20, 180),
                        cards="\n".join(cards))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
