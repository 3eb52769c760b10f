"""The training data stream: a weighted mixture of shard sets, drawn as a pure function of (seed, rank, index).

Sample ``i`` of rank ``r`` is chosen from a random generator seeded with ``(seed, r, i)`` and nothing else:

1. the mixture member, by weight;
2. a row of that member's rows owned by rank ``r`` (shards are split by rank; a set with fewer shards than
   ranks is split by rows), through the per-shard parquet indexes: only their row counts are read up
   front (one consolidated table, or the parquet footers), a shard's ``key`` column only when a row of it
   is drawn (a caption set: the rows of its caption tables, joined by key to the captioned shards);
3. the crop position and the horizontal flip;
4. whether the caption is dropped (classifier-free guidance);
5. the degradation, seeded by the draw: ``(seed, r, i)`` through ``degrade.draw_key`` (``data.degrade_seed:
   key``: by ``(seed, epoch, image key)``, with ``epoch`` derived from ``i``, as before).

Micro-batch ``m`` of rank ``r`` holds samples ``m*B .. m*B+B-1``. A run resumed at optimizer step ``s``
starts at micro-batch ``s * grad_accum`` and so sees exactly the batches an uninterrupted run would see, for
any number of loader workers (workers take micro-batches round robin; the DataLoader returns them in order).
Sampling is with replacement, as in webdataset's resampled mode; unreadable or too-small samples are
replaced by a new draw from the same seed (``attempt`` 1, 2, ...), so the replacement is deterministic too.

Images are read by random access (``datapipe.tario.TarReader``): the member offsets come from the shard's
index (or one scan of a foreign tar's headers), then just the members of the drawn key are read. Local paths
and fsspec URLs both work (URLs by range reads).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
from torch.utils.data import IterableDataset

from supirkit.datapipe.decode import DEFAULT_MAX_FILE_BYTES
from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS
from supirkit.datapipe.sources import open_binary
from supirkit.datapipe.tario import LRU, TarReader, find_index, image_keys, scan_members
from supirkit.train.config import MixtureMemberConfig, TrainDataConfig
from supirkit.train.seeds import VALIDATION_STREAM

log = logging.getLogger(__name__)

class DataError(RuntimeError):
    """The mixture cannot produce samples (no shards, no rows, every redraw failed)."""


# ----------------------------------------------------------------------------------------- shard indexes

class ShardSetIndex:
    """Row counts of every shard of one shard set and lazy per-shard key lists.

    The counts come from the set's consolidated table (``datapipe.shard_table``: one file for 25,000 shards)
    where it has one, else from the parquet footers, read in parallel; shards without a parquet index
    (written by other tools) are counted by scanning their tar once. Rows whose ``status`` column
    (img2dataset) is not ``success`` have no image; drawing one yields ``None`` as key and the caller draws
    again. A caption set (``datapipe.captions``) is indexed by its caption tables: their rows are the rows,
    their keys the keys, their captions the captions; the images come from the input shards by key.
    """

    def __init__(self, urls: list[str], threads: int = 16, counts=None, captions=None,
                 units: Optional[list[int]] = None):
        from supirkit.datapipe.shard_table import count_rows

        if not urls:
            raise DataError("shard set has no shards")
        self.urls = list(urls)
        self.counts = np.asarray(counts if counts is not None else count_rows(self.urls, threads), dtype=np.int64)
        self.captions, self.units = captions, units
        self._rows = LRU(64)

    @classmethod
    def open(cls, spec) -> "ShardSetIndex":
        """The index of what a mixture member's ``shards`` names: shards (folder, pattern, glob, list) or a
        caption set."""
        from supirkit.datapipe.captions import CaptionSet
        from supirkit.datapipe.tario import list_shards

        specs = [spec] if isinstance(spec, str) else list(spec)
        sets = [CaptionSet.open(s) for s in specs]
        if any(sets):
            if len(specs) > 1:
                raise DataError(f"{spec}: a caption set is read with its input shards; name it alone")
            units = sets[0].done_units()
            if not units:
                raise DataError(f"{spec}: the caption set has no finished caption table")
            return cls([sets[0].shard_url(u) for u in units], counts=sets[0].rows(units), captions=sets[0],
                       units=units)
        return cls(list_shards(spec))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def keys(self, shard: int) -> list[Optional[str]]:
        return self.rows(shard).column("key").to_pylist()

    def rows(self, shard: int):
        """One shard's rows as an Arrow table, read once per shard (``key``, and ``members``: the member
        offsets of each key, or for a caption set ``txt`` and ``tags``); a drawn row is converted alone."""
        return self._rows.get(shard, lambda: self._read_rows(shard))

    def entry(self, shard: int, row: int) -> tuple[Optional[str], Optional[dict]]:
        """``(key, members)`` of one row: its key (None: a row without an image) and, when the shard's
        index has them, its members' ``{ext: (offset, size)}`` (no second read of the index to find them)."""
        t = self.rows(shard)
        key = t.column("key")[row].as_py()
        if "status" in t.column_names and t.column("status")[row].as_py() != "success":
            return None, None
        if "members" not in t.column_names:
            return key, None
        members = t.column("members")[row].as_py() or []
        return key, {m["ext"]: (m["offset"], m["size"]) for m in members}

    def caption(self, shard: int, row: int) -> Optional[tuple[str, list[str]]]:
        """The caption set's caption and tags of one row; None when the set has no caption tables."""
        if self.captions is None:
            return None
        t = self.rows(shard)
        tags = t.column("tags")[row].as_py() if "tags" in t.column_names else None
        return (t.column("txt")[row].as_py() or "").strip(), [str(x) for x in tags or []]

    def _read_rows(self, shard: int):
        import pyarrow as pa

        if self.captions is not None:
            return self.captions.read(self.units[shard], ["key", "txt", "tags"])
        url = self.urls[shard]
        index = find_index(url)
        if index is None:
            return pa.table({"key": pa.array(image_keys(scan_members(url)), pa.string())})
        import pyarrow.parquet as pq

        with open_binary(index) as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in ("key", "members", "status") if c in pf.schema_arrow.names]
            return pf.read(columns=columns)

    def __getstate__(self):  # workers rebuild their caches
        state = dict(self.__dict__)
        state["_rows"] = LRU(64)
        return state


class RankView:
    """The rows of one shard set that belong to one rank: whole shards (``shard % world == rank``) when
    there are at least as many shards as ranks, else every ``world``-th row. ``locate(j)`` maps the
    rank's ``j``-th row to ``(shard, row)``."""

    def __init__(self, index: ShardSetIndex, rank: int, world: int, split: bool = True):
        self.index = index
        n = len(index.urls)
        counts = index.counts
        total = int(counts.sum())
        if not split or world <= 1:
            self.mode, self.shards, self.rank, self.world = "all", np.arange(n), 0, 1
        elif n >= world:
            self.mode, self.shards, self.rank, self.world = "shards", np.arange(rank, n, world), rank, world
        elif total >= world:
            self.mode, self.shards, self.rank, self.world = "rows", np.arange(n), rank, world
        else:  # fewer rows than ranks: every rank draws from all rows
            log.warning("shard set with %d rows is shared by all %d ranks", total, world)
            self.mode, self.shards, self.rank, self.world = "all", np.arange(n), 0, 1
        own = counts[self.shards]
        self._cum = np.concatenate([[0], np.cumsum(own)])
        if self.mode == "rows":
            self.count = (total - rank + world - 1) // world
        else:
            self.count = int(self._cum[-1])

    def locate(self, j: int) -> tuple[int, int]:
        if self.mode == "rows":
            j = j * self.world + self.rank
        pos = int(np.searchsorted(self._cum, j, side="right") - 1)
        return int(self.shards[pos]), int(j - self._cum[pos])


# ----------------------------------------------------------------------------------------------- stream

@dataclass(frozen=True)
class Draw:
    """Everything random about sample ``index`` (attempt ``attempt``) except the degradation."""

    index: int
    attempt: int
    member: int
    shard: int
    row: int
    u_top: float
    u_left: float
    flip: bool
    drop_caption: bool


def _caption(sample: dict, meta: dict) -> str:
    txt = sample.get("txt")
    if txt is not None:
        return txt.decode("utf-8", errors="replace").strip() if isinstance(txt, bytes) else str(txt).strip()
    caption = meta.get("caption")
    if isinstance(caption, dict):  # caption metadata (a failed caption holds an error, no text)
        caption = caption.get("text")
    return caption.strip() if isinstance(caption, str) else ""


def _tags(meta: dict) -> list[str]:
    """The tag prompts the caption job wrote next to the caption (json ``tags``); none: []."""
    tags = meta.get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


class PromptRule:
    """The shared prompt-assembly rule (``train.prompts``) with the restore config's positive prompt and
    separator, applied per member (``assemble``: caption + positive prompt; ``caption``: caption alone).
    The 77-token cut happens in the text encoders, exactly as when restoring."""

    def __init__(self, positive: str = "", separator: str = ", ", max_tokens: int = 77, source: str = "caption"):
        self.positive, self.separator, self.max_tokens = positive, separator, max_tokens
        self.source = source  # prompt.source: caption | tags | both (model.prompts.prompt_text)
        self._assembler = None

    @classmethod
    def from_restore_config(cls, restore_cfg) -> "PromptRule":
        p = restore_cfg.prompt
        return cls(p.positive, p.separator, p.max_tokens, p.source)

    def __call__(self, caption: str, mode: str, tags=()) -> str:
        if mode == "caption":
            return caption
        from supirkit.model.prompts import prompt_text

        caption = prompt_text(caption, tags, self.source, self.separator)
        if self._assembler is None:
            from supirkit.model.prompts import PromptAssembler

            self._assembler = PromptAssembler(None, self.positive, self.separator, self.max_tokens)
        return self._assembler(caption).text

    def __getstate__(self):
        return {"positive": self.positive, "separator": self.separator, "max_tokens": self.max_tokens,
                "source": self.source, "_assembler": None}


def load_restore_config(spec: str, overrides=()):
    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig

    return load_config(RestoreConfig, spec, list(overrides))


class MixtureStream(IterableDataset):
    """The sample/batch source of one rank (see module docstring). Picklable; iterable as micro-batches."""

    def __init__(self, data: TrainDataConfig, *, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1,
                 start_micro_batch: int = 0, stream: Optional[int] = None, prompt_rule: Optional[PromptRule] = None,
                 fixed_time_ids: Optional[list[float]] = None, degrader_factory: Optional[Callable] = None,
                 indexes: Optional[list[ShardSetIndex]] = None):

        self.data, self.seed, self.rank, self.world = data, int(seed), int(rank), int(world)
        self.stream = self.rank if stream is None else int(stream)
        self.batch_size, self.start_micro_batch = int(batch_size), int(start_micro_batch)
        self.members: list[MixtureMemberConfig] = list(data.mixture)
        if indexes is None:
            indexes = []
            for m in self.members:
                try:
                    indexes.append(ShardSetIndex.open(m.shards))
                except FileNotFoundError as exc:
                    raise DataError(f"mixture member {m.name!r}: {exc}") from None
                except DataError as exc:
                    raise DataError(f"mixture member {m.name!r}: {exc} ({m.shards})") from None
        self.indexes = indexes
        split = data.split_shards_by_rank and self.stream < VALIDATION_STREAM
        self.views = [RankView(ix, self.rank, self.world, split) for ix in self.indexes]
        for m, v in zip(self.members, self.views):
            if v.count == 0:
                raise DataError(f"mixture member {m.name!r} has no rows for rank {self.rank}")
        w = np.array([m.weight for m in self.members], dtype=np.float64)
        self.probs = w / w.sum()
        self._cum = np.cumsum(self.probs)
        self._cum[-1] = 1.0
        self.total_rows = sum(ix.total for ix in self.indexes)
        self.epoch_samples = data.epoch_samples or max(1, self.total_rows)
        if prompt_rule is None or fixed_time_ids is None:
            restore_cfg = load_restore_config(data.restore_config)
            prompt_rule = prompt_rule or PromptRule.from_restore_config(restore_cfg)
            fixed_time_ids = fixed_time_ids or restore_cfg.micro_conditioning.time_ids()
        self.prompt_rule = prompt_rule
        self.fixed_time_ids = [float(v) for v in fixed_time_ids]
        if len(self.fixed_time_ids) != 6:
            raise DataError(f"micro-conditioning needs 6 numbers, got {self.fixed_time_ids}")
        self.degrader_factory = degrader_factory or DegraderFactory(data.degrade, data.degrade_overrides)
        self._degrader = None
        hq_size = getattr(getattr(self.degrader(), "config", None), "hq_size", None)
        if hq_size is not None and hq_size != data.crop.size:
            raise DataError(f"degradation profile {data.degrade!r} takes {hq_size}px crops but data.crop.size is "
                            f"{data.crop.size}: change one, or set data.degrade_overrides: [hq_size=null]")
        self.reader = TarReader(max_member_bytes=DEFAULT_MAX_FILE_BYTES)

    # --------------------------------------------------------------------------- pure functions of i
    def plan(self, index: int, attempt: int = 0) -> Draw:
        rng = np.random.default_rng([self.seed, self.stream, int(index), int(attempt)])
        u = rng.random(6)
        member = int(np.searchsorted(self._cum, u[0], side="right"))
        member = min(member, len(self.members) - 1)
        view = self.views[member]
        j = min(int(u[1] * view.count), view.count - 1)
        shard, row = view.locate(j)
        return Draw(index=int(index), attempt=int(attempt), member=member, shard=shard, row=row,
                    u_top=float(u[2]), u_left=float(u[3]), flip=bool(u[4] < self.data.crop.hflip_prob),
                    drop_caption=bool(u[5] < self.data.caption_drop_prob))

    def epoch_of(self, index: int) -> int:
        """Samples drawn by all ranks before this one, in epochs (degradations change per epoch)."""
        return (int(index) * self.world + self.rank) // self.epoch_samples

    def degrader(self):
        if self._degrader is None:
            self._degrader = self.degrader_factory()
        return self._degrader

    def sample(self, index: int) -> dict:
        reasons = []
        for attempt in range(self.data.max_redraws + 1):
            draw = self.plan(index, attempt)
            try:
                return self._make(draw)
            except (*CORRUPT_INPUT_ERRORS, KeyError, _Skip, OSError) as exc:
                reasons.append(f"{type(exc).__name__}: {exc}")
        raise DataError(f"sample {index} of stream {self.stream}: {self.data.max_redraws + 1} draws failed: "
                        + "; ".join(reasons[-3:]))

    def _make(self, draw: Draw) -> dict:
        from supirkit.datapipe.decode import decode_rgb, decode_rgb_reduced
        from supirkit.datapipe.tario import sample_image, sample_meta

        member = self.members[draw.member]
        index = self.indexes[draw.member]
        key, members = index.entry(draw.shard, draw.row)
        if key is None:
            raise _Skip("row without image")
        url = index.urls[draw.shard]
        # a caption set's rows are its caption tables': the member offsets come from the captioned shard's index
        raw = self.reader.read(url, key, members if index.captions is None else None)
        _, data = sample_image(raw)
        if data is None:
            raise _Skip(f"{key}: no image member")
        if self.data.crop.resize_short_side:  # resized below: decoded at the DCT reduction that keeps the size
            img, header = decode_rgb_reduced(data, self.data.crop.resize_short_side, self.data.max_pixels)
        else:
            img, header = decode_rgb(data, self.data.max_pixels)
        meta = sample_meta(raw)
        crop = self.data.crop
        h0, w0 = header.height, header.width  # the image's own size, whatever the decode's reduction
        if crop.resize_short_side:
            s = crop.resize_short_side / min(h0, w0)
            img = _resize(img, max(1, round(h0 * s)), max(1, round(w0 * s)))
        c = crop.size
        h, w = img.shape[:2]
        if min(h, w) < c:
            if crop.small_images == "skip":
                raise _Skip(f"{key}: {w}x{h} is smaller than the {c} crop")
            s = c / min(h, w)
            img = _resize(img, max(c, math.ceil(h * s)), max(c, math.ceil(w * s)))
            h, w = img.shape[:2]
        top = min(int(draw.u_top * (h - c + 1)), h - c)
        left = min(int(draw.u_left * (w - c + 1)), w - c)
        hq = img[top:top + c, left:left + c]
        if draw.flip:
            hq = hq[:, ::-1]
        hq = np.ascontiguousarray(hq)
        if self.data.degrade_seed == "draw":  # an image drawn twice (with replacement) is degraded twice
            from supirkit.degrade import draw_key

            seeding = {"epoch": 0, "key": draw_key(self.stream, draw.index)}
        else:
            seeding = {"epoch": self.epoch_of(draw.index), "key": key}
        target, lq, _params = self.degrader()(hq, seed=self.seed, **seeding)
        target, lq = np.asarray(target), np.asarray(lq)
        if target.shape[:2] != (c, c):
            target = _resize(target, c, c)
        if lq.shape[:2] != (c, c):  # the LQ goes through the VAE beside the HQ: same size
            lq = _resize(lq, c, c)
        joined = index.caption(draw.shard, draw.row)  # a caption set's caption, joined by key
        caption, tags = joined if joined is not None else (_caption(raw, meta), _tags(meta))
        prompt = "" if draw.drop_caption else self.prompt_rule(caption, member.prompt, tags)
        return {"hq": np.ascontiguousarray(target, dtype=np.uint8), "lq": np.ascontiguousarray(lq, dtype=np.uint8),
                "caption": caption, "prompt": prompt, "time_ids": self._time_ids(h0, w0, top * h0 / h, left * w0 / w),
                "key": key, "member": draw.member, "index": draw.index, "attempt": draw.attempt}

    def _time_ids(self, h0: int, w0: int, top: float, left: float) -> list[float]:
        if self.data.micro_conditioning == "fixed":
            return list(self.fixed_time_ids)
        th, tw = self.fixed_time_ids[4:6]
        return [float(h0), float(w0), float(round(top)), float(round(left)), th, tw]

    def micro_batch(self, m: int) -> dict:
        b = self.batch_size
        batch = collate([self.sample(m * b + k) for k in range(b)])
        batch["micro_batch"] = int(m)
        return batch

    # --------------------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[dict]:
        import torch.utils.data as tud

        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        m = self.start_micro_batch + worker
        while True:
            yield self.micro_batch(m)
            m += workers

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]


class _Skip(Exception):
    """This draw cannot be used (no image, too small); draw again."""


class DegraderFactory:
    """Builds the degrader (profile name or YAML path, with ``--set`` style overrides)."""

    def __init__(self, spec: str, overrides=()):
        self.spec, self.overrides = spec, list(overrides)

    def __call__(self):
        from supirkit.degrade import Degrader

        return Degrader.from_spec(self.spec, self.overrides)


def collate(samples: list[dict]) -> dict:
    """uint8 images stay uint8 (4x less to move between processes); the loop converts on the device."""
    import torch

    hq = torch.from_numpy(np.stack([s["hq"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    lq = torch.from_numpy(np.stack([s["lq"] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return {
        "hq": hq, "lq": lq,
        "prompt": [s["prompt"] for s in samples],
        "caption": [s["caption"] for s in samples],
        "time_ids": torch.tensor([s["time_ids"] for s in samples], dtype=torch.float32),
        "key": [s["key"] for s in samples],
        "member": torch.tensor([s["member"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


def to_model_range(images_uint8, device, dtype):
    """uint8 B x 3 x H x W -> float in [-1, 1] on ``device``."""
    return images_uint8.to(device=device, non_blocking=True).to(dtype).div(127.5).sub(1.0)


def build_loader(stream: MixtureStream, num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False):
    """A DataLoader over whole micro-batches (the stream batches itself); order is deterministic."""
    from torch.utils.data import DataLoader

    from supirkit.degrade import worker_init_fn

    kwargs = {}
    if num_workers > 0:
        # one OpenCV thread per worker: the degradation scales by workers, not threads
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False, worker_init_fn=worker_init_fn)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


def build_stream(data: TrainDataConfig, *, seed: int, rank: int, world: int, batch_size: int,
                 start_micro_batch: int = 0,
                 stream: Optional[int] = None, indexes: Optional[list[ShardSetIndex]] = None) -> MixtureStream:
    return MixtureStream(data, seed=seed, rank=rank, world=world, batch_size=batch_size,
                         start_micro_batch=start_micro_batch, stream=stream, indexes=indexes)


__all__ = ["MixtureStream", "ShardSetIndex", "RankView", "Draw", "DataError", "collate",
           "build_loader", "build_stream", "to_model_range", "PromptRule", "DegraderFactory",
           "load_restore_config"]
