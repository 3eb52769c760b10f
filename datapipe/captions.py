"""Caption sets: captions kept as small tables beside a shard set instead of a copy of the set.

Captioning adds a few hundred bytes to a sample of a megabyte; rewriting every shard to add them copies
the corpus (tens of terabytes at 20M samples). ``supirkit caption`` therefore writes, by default, a caption
set: a folder without tars whose ``__supirkit__/`` holds

    captions/captions-NNNNNN.parquet     the captions of input shard N: one row per captioned sample, in the
                                         shard's order, keyed by ``key`` (columns: key, txt, caption, tags, ...)
    captions/captions-NNNNNN.stats.json  its done marker (exactly-once and resume, as for every unit)
    caption_inputs.parquet               the input shards, one row per unit: ``input`` (the shard as captioned),
                                         ``input_relative`` (the same, relative to the caption set) and ``rows``
                                         (filled in when the job ends; null: read the table's footer)

A caption set reads as a shard set (``CaptionSet``): its shards are the captioned input shards, its rows the
rows of the caption tables, and a sample's image comes from its input shard by key. The training loader,
``inspect`` and ``shard --from-manifest`` read it so; a sample the captioner dropped is not part of the set,
exactly as it would be missing from rewritten shards. When the caption set is read from another place
than where it was written (synced to object storage beside its input set), the input shards are found by
their relative paths.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from supirkit.datapipe.files import atomic_write_parquet
from supirkit.datapipe.shard_format import CAPTIONS_DIR, JOB_FILE, META_DIR, WORK_DIR, ShardSetLayout
from supirkit.datapipe.sinks import TableOutput
from supirkit.datapipe.sources import is_url, open_binary, strip_file_scheme
from supirkit.datapipe.tario import exists

CAPTION_PREFIX = "captions"
INPUTS_FILE = "caption_inputs.parquet"
#: the stage name a caption set's job.json holds
CAPTION_STAGE = "caption"


def format_tags(tags) -> str:
    """Tag prompts as the text of a ``tags.txt`` member (and of a prompt): comma-separated, in order."""
    return ", ".join(tags)


def caption_output(layout: ShardSetLayout) -> TableOutput:
    """Where a caption job's units go: one table part per input shard."""
    return TableOutput(layout.captions_dir, CAPTION_PREFIX)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_url(root) else os.path.join(root, *parts)


def _listdir(url: str) -> list[str]:
    if is_url(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.isdir(path) else []
    return os.listdir(url) if os.path.isdir(url) else []


def write_caption_inputs(layout: ShardSetLayout, inputs: list[str], rows: Optional[list] = None) -> Path:
    """The caption set's input shards (unit i captions ``inputs[i]``) and, once known, each table's rows."""
    import pyarrow as pa

    root = str(layout.root)
    relative = [None if is_url(u) else os.path.relpath(strip_file_scheme(u), root) for u in inputs]
    table = pa.table({"unit": pa.array(range(len(inputs)), pa.int64()), "input": pa.array(inputs, pa.string()),
                      "input_relative": pa.array(relative, pa.string()),
                      "rows": pa.array(rows if rows is not None else [None] * len(inputs), pa.int64())})
    path = layout.meta / INPUTS_FILE
    atomic_write_parquet(path, table)
    return path


class CaptionSet:
    """A caption set read as a shard set (see the module docstring). ``root``: a local folder or a URL."""

    def __init__(self, root: str | os.PathLike) -> None:
        import pyarrow.parquet as pq

        self.root = strip_file_scheme(os.fspath(root)).rstrip("/") or "/"
        with open_binary(_join(self.root, META_DIR, INPUTS_FILE)) as f:
            t = pq.read_table(f).to_pydict()
        self.inputs: list[str] = t["input"]
        self._relative: list[Optional[str]] = t["input_relative"]
        self._rows: list[Optional[int]] = t["rows"]
        self._resolved: Optional[list[str]] = None

    @classmethod
    def open(cls, spec: str | os.PathLike) -> Optional["CaptionSet"]:
        """The caption set ``spec`` names, or None when it names something else."""
        if not isinstance(spec, (str, os.PathLike)):
            return None
        root = strip_file_scheme(os.fspath(spec)).rstrip("/")
        if root.endswith((".tar", ".parquet")) or not exists(_join(root, META_DIR, INPUTS_FILE)):
            return None
        job = _join(root, META_DIR, WORK_DIR, JOB_FILE)
        if exists(job):
            with open_binary(job) as f:
                if json.load(f).get("stage") != CAPTION_STAGE:
                    return None
        return cls(root)

    # ------------------------------------------------------------------------------------------ units
    def table_url(self, unit: int) -> str:
        return _join(self.root, META_DIR, CAPTIONS_DIR, f"{CAPTION_PREFIX}-{unit:06d}.parquet")

    def done_units(self) -> list[int]:
        """Units whose caption table is complete (its done marker exists), in order."""
        names = _listdir(_join(self.root, META_DIR, CAPTIONS_DIR))
        suffix = ".stats.json"
        done = []
        for name in names:
            if name.startswith(f"{CAPTION_PREFIX}-") and name.endswith(suffix):
                try:
                    done.append(int(name[len(CAPTION_PREFIX) + 1:-len(suffix)]))
                except ValueError:
                    continue
        return sorted(u for u in done if u < len(self.inputs))

    def shard_url(self, unit: int) -> str:
        """Input shard ``unit``, where it is now: as captioned, or (moved together with the caption set)
        relative to it."""
        if self._resolved is None:
            first = next((i for i, r in enumerate(self._relative) if r is not None), None)
            moved = first is not None and (is_url(self.root) or not exists(self.inputs[first]))
            self._resolved = [_join(self.root, r) if moved and r is not None else u
                              for u, r in zip(self.inputs, self._relative)]
        return self._resolved[unit]

    def rows(self, units: list[int]):
        """Rows (captioned samples) per unit: recorded when the job ended, else from the table's footer."""
        from supirkit.datapipe.shard_table import count_rows

        known = {u: self._rows[u] for u in units if self._rows[u] is not None}
        todo = [u for u in units if u not in known]
        if todo:
            counts = count_rows([self.table_url(u) for u in todo], counter=_footer_rows)
            known.update(zip(todo, (int(c) for c in counts)))
        import numpy as np

        return np.asarray([known[u] for u in units], dtype=np.int64)

    def read(self, unit: int, columns: Optional[list[str]] = None):
        """Caption table ``unit`` (an Arrow table; ``columns`` it lacks are left out)."""
        import pyarrow.parquet as pq

        with open_binary(self.table_url(unit)) as f:
            pf = pq.ParquetFile(f)
            have = pf.schema_arrow.names
            return pf.read(columns=[c for c in columns if c in have] if columns else None)

    def captions(self, unit: int) -> dict[str, dict]:
        """``key -> {txt, tags, caption}`` of one table (for readers that look samples up by key)."""
        t = self.read(unit, ["key", "txt", "tags", "caption"]).to_pydict()
        return {k: {c: t[c][i] for c in ("txt", "tags", "caption") if c in t} for i, k in enumerate(t["key"])}


class CaptionJoin:
    """A caption set's captions joined, by key, to samples re-read from its input shards (``shard
    --from-manifest CAPTION_SET``): the new shards get the caption as ``.txt`` and its facts in the json, as
    rewritten shards have them; they are self-contained."""

    def __init__(self, captions: CaptionSet) -> None:
        self.set = captions
        self._cache = None

    @classmethod
    def open(cls, spec) -> Optional["CaptionJoin"]:
        captions = CaptionSet.open(spec)
        return cls(captions) if captions is not None else None

    def _unit_of(self) -> dict[str, int]:
        units = {u: i for i, u in enumerate(self.set.inputs)}
        units.update({self.set.shard_url(i): i for i in range(len(self.set.inputs))})
        return units

    def lookup(self, uri: str) -> Optional[dict]:
        """The caption row of ``shard.tar#key`` (None: not a captioned sample of this set)."""
        from supirkit.datapipe.inputs import split_member_uri
        from supirkit.datapipe.tario import LRU

        member = split_member_uri(uri)
        if member is None:
            return None
        if self._cache is None:
            self._cache = (self._unit_of(), LRU(8))
        units, tables = self._cache
        unit = units.get(member[0])
        if unit is None:
            return None
        return tables.get(unit, lambda: self.set.captions(unit)).get(member[1])

    def apply(self, uri: str, sample: dict) -> None:
        """Put the caption of ``uri`` into ``sample`` (``txt``, json ``caption`` and ``tags``, ``tags.txt``)."""
        row = self.lookup(uri)
        if row is None:
            return
        meta = sample.setdefault("json", {})
        if row.get("txt") is not None:
            sample["txt"] = row["txt"]
        if row.get("caption"):
            meta["caption"] = row["caption"]
        if row.get("tags") is not None:
            meta["tags"] = list(row["tags"])
            sample["tags.txt"] = format_tags(row["tags"])

    def __getstate__(self):  # workers build their own caches
        return {"set": self.set, "_cache": None}


def is_shard_set(path: str | os.PathLike) -> bool:
    """True when ``path`` is a local folder that reads as a shard set: it holds tars, or it is a caption set."""
    p = Path(path)
    return p.is_dir() and (any(p.glob("*.tar")) or CaptionSet.open(p) is not None)


def _footer_rows(url: str) -> int:
    from supirkit.datapipe.shard_table import parquet_rows

    return parquet_rows(url)


def finish_caption_inputs(layout: ShardSetLayout, inputs: list[str]) -> None:
    """At the end of a caption job: record each done table's rows, so that readers open one file."""
    cs = CaptionSet(layout.root)
    done = cs.done_units()
    counts = dict(zip(done, (int(c) for c in cs.rows(done)))) if done else {}
    write_caption_inputs(layout, inputs, [counts.get(u) for u in range(len(inputs))])


__all__ = ["CaptionSet", "CaptionJoin", "is_shard_set", "format_tags", "CAPTION_PREFIX", "INPUTS_FILE",
           "caption_output", "write_caption_inputs", "finish_caption_inputs"]
