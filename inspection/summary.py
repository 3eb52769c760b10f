"""Summary statistics of a shard set or a manifest, streamed shard by shard.

Works on what supirkit writes and on what other tools write (img2dataset's ``00000.tar`` +
``00000.parquet`` + ``00000_stats.json``, any WebDataset tar), and on manifests (scores tables). The
summary keeps bounded accumulators (a fixed-size uniform sample of each numeric column for its
quantiles, a capped counter for strings), never a whole table.

Where the numbers come from, cheapest first:
- sample count and fields present: the tar's member table (its index, or its headers: data is skipped);
- metadata columns: the shard's parquet index when it has one (img2dataset rows whose ``status`` is
  not ``success`` describe failed downloads and are left out), else the ``.json`` members;
- resolution: ``width``/``height`` columns (else ``orig_*``, ``original_*``), else the image header.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

from supirkit.datapipe.decode import DecodeError, probe
from supirkit.datapipe.shard_format import IMAGE_EXTS
from supirkit.datapipe.tario import member_table, read_shard, sample_image, sample_meta
from supirkit.inspection.collection import (
    CAPTION_COLUMNS,
    MANIFEST,
    UNREADABLE_SHARD_ERRORS,
    Collection,
    _index_file,
    _is_local,
    _stats_file,
    flatten_meta,
    flatten_structs,
    open_collection,
    shard_error,
)

#: short-side bins of the resolution histogram (pixels); SUPIR trains on 1024+ px crops of large photos
SIDE_BINS = (0, 256, 512, 1024, 2048, 4096)
WIDTH_COLUMNS = (("width", "height"), ("orig_width", "orig_height"), ("original_width", "original_height"))


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
        self.unreadable: list[dict] = []  # shards that could not be read, with the error
        self._reservoir, self._max_distinct = reservoir, max_distinct

    def column(self, name: str) -> ColumnStats:
        if name not in self.columns:
            self.columns[name] = ColumnStats(name, self._reservoir, self._max_distinct, seed=len(self.columns))
        return self.columns[name]

    def add_table(self, table) -> None:
        """Metadata rows (one per sample): column statistics and the resolution histogram (the fields of
        struct columns count as columns of their own, named ``parent.field``)."""
        table = flatten_structs(table)
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
            "unreadable": list(self.unreadable),
            "columns": {name: c.to_dict() for name, c in sorted(self.columns.items())},
        }


# ------------------------------------------------------------------------------------------ summary

def _tar_fields(url: str, keys: Optional[set] = None) -> tuple[Counter, int, set]:
    """Fields per extension, sample count and keys of one tar (only ``keys`` when given), from its member
    table (the index's member offsets, or the tar's headers; members the readers refuse, absolute or ``..``
    names, are not there)."""
    fields: Counter = Counter()
    table = member_table(url)
    if keys is not None:
        table = {k: v for k, v in table.items() if k in keys}
    for exts in table.values():
        for ext in exts:
            fields[ext] += 1
        if set(exts) & set(IMAGE_EXTS):
            fields["(image)"] += 1
    return fields, len(table), set(table)


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

    from supirkit.datapipe.sinks import rows_to_table

    rows = []
    for sample in read_shard(url):
        meta = flatten_meta(sample_meta(sample))
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
    elif coll.captions is not None:
        _summarize_caption_set(coll, s)
    else:
        _summarize_shards(coll, s)
    return s.to_dict()


def _summarize_caption_set(coll: Collection, s: Summary) -> None:
    """A caption set: its samples are the rows of its caption tables; their index rows (from the captioned
    shards) and caption columns are summarised together, as rewritten shards would be."""
    import pyarrow.compute as pc

    for i, url in enumerate(coll.urls):
        s.units += 1
        caps = flatten_structs(coll.captions.read(coll.units[i]).drop_columns(["source_uri"]))
        keys = set(caps.column("key").to_pylist())
        fields, _, _ = _tar_fields(url, keys)
        has_text = pc.and_(pc.is_valid(caps["txt"]), pc.greater(pc.utf8_length(caps["txt"]), 0))
        captioned = int(pc.sum(has_text).as_py() or 0)
        fields["txt"] = captioned  # the caption replaces an earlier .txt, as in rewritten shards
        s.fields.update(fields)
        s.samples += caps.num_rows
        s.captioned += captioned
        s.caption_known = True
        if _is_local(url):
            s.bytes += os.path.getsize(url)
        index = _index_file(url)
        table = _read_index(index, keys) if index is not None else _meta_table_from_tar(url)
        table = table.filter(pc.is_in(table["key"], value_set=caps["key"]))
        s.metadata_from.update({"parquet index" if index is not None else "tar json", "caption tables"})
        at = pc.index_in(table["key"], value_set=caps["key"])
        for name in caps.column_names:  # the caption facts (token counts, ...), not the texts themselves
            if (name.startswith("caption.") or name == "tags") and name not in ("caption.text", "caption.raw") \
                    and name not in table.column_names:
                table = table.append_column(name, caps[name].take(at))
        s.add_table(table.drop_columns([c for c in ("has_caption",) if c in table.column_names]))


def _summarize_shards(coll: Collection, s: Summary) -> None:
    """Every shard's counts and metadata; a shard that cannot be read (truncated, not a tar, a damaged index)
    is named in ``unreadable`` and the others are summarized."""
    for url in coll.urls:
        s.units += 1
        try:
            _summarize_shard(url, s)
        except UNREADABLE_SHARD_ERRORS as exc:
            s.unreadable.append(shard_error(url, exc))


def _summarize_shard(url: str, s: Summary) -> None:
    keys: Optional[set] = None
    if _is_local(url):
        fields, n, keys = _tar_fields(url)
        s.bytes += os.path.getsize(url)
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
            s.captioned += (
                sum(table.column("has_caption").to_pylist()) if "has_caption" in table.column_names else 0
            )
            s.caption_known = True
    s.add_table(table)
    stats = _stats_file(url)
    if stats:
        _add_rejections(stats, s.rejected)


def _add_rejections(path: str, into: Counter) -> None:
    try:
        st = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(st, dict):
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
    for bad in summary.get("unreadable", []):
        lines.append(f"unreadable shard (left out of these numbers): {bad['shard']}: {bad['error']}")
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
