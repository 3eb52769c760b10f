"""Negative-quality samples made with SDXL (``supirkit negatives``; SUPIR paper §3.2 and App. A.4).

SUPIR adds about 100K deliberately bad images to its corpus, captioned with negative-quality words, so that
the model learns what "bad quality" looks like and a negative prompt can steer sampling away from it.
The paper makes them by SDXL image-to-image (SDEdit) from training images at strength 0.5 with the prompt
``oil painting, cartoon, blurring, dirty, messy, low quality, frames, deformed, lowres, over-smooth``;
the caption of each sample is its prompt. Text-to-image is available too (the paper found it gives
meaningless images, App. A.4).

Determinism. Sample ``i`` of a job with seed ``S`` has the key ``neg-S-iiiiiiiii`` and the seed
``sample_seed(S, i)`` (SHA-256 of both); its prompt and crop come from generators seeded with that seed,
and its diffusion noise from a CPU ``torch.Generator`` seeded with it. Output shard ``j`` holds samples
``[j*n, (j+1)*n)`` (``n = output.samples_per_shard``), so the same config gives the same samples under the
same keys, shard by shard, and a killed job resumes shard by shard (``run_stage``). Byte-identical images
need the same hardware, library versions and thread count (floating-point sums are ordered differently
otherwise); the batch composition, which also matters, is fixed by the config.

Source rule (img2img). No index of all inputs is ever loaded:
1. the input shards ``S_0..S_{M-1}`` are ``list_shards(SRC...)`` in sorted order, frozen in
   ``OUT/__supirkit__/work/inputs.json`` by the first run (a shard added later cannot move samples between outputs);
2. output shard ``j`` reads ``k = sources.input_shards_per_partition`` input shards: slot ``u`` in
   ``0..k-1`` has global number ``g = j*k + u``, reads input shard ``S[P[g mod M]]`` (``P`` a permutation
   of ``0..M-1`` seeded by the job seed) and is in round ``r = g div M`` of that shard;
3. sample ``t`` of output shard ``j`` (``i = j*n + t``) uses slot ``t mod k`` and is its ``q = t div k``-th
   sample; the slot's members are the input shard's keys sorted, in an order ``Q`` seeded by the job seed
   and the shard's position, and the sample takes member ``Q[(r*c + q) mod m]`` (``c = ceil(n/k)`` members
   per slot and round, ``m`` members in the shard): successive rounds over one shard take fresh members
   until the shard is used up, then wrap;
4. a member that cannot be read or decoded is recorded as a rejection and replaced by the next member in
   ``Q`` after those the output shard uses (deterministic, since the failure is).
Only each chosen input shard's parquet index (its ``key`` column) and one sequential pass over its tar are
read; decoded sources are cut to the output aspect ratio (centre or seeded random crop) and resized to the
output size (area filter down, bicubic up). Samples are generated in batches in the order the tar yields
their sources.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from supirkit.datapipe.config import config_hash
from supirkit.datapipe.devices import resolve_device, resolve_dtype
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.runner import Pass, prepare_output, run_stage, write_job_summary
from supirkit.datapipe.sinks import ShardOutput, ShardSink
from supirkit.datapipe.stage import Stage
from supirkit.datapipe.stats import JobResult, UnitStats
from supirkit.negatives.config import (
    NEGATIVE_WORDS,
    PAPER_PROMPT,
    SDXL_BASE,
    GenerateConfig,
    NegativesConfig,
    NegativesModelConfig,
    NegativesPromptConfig,
)

log = logging.getLogger("supirkit")

STAGE = "negatives"
INPUTS_FILE = "inputs.json"
QUALITY = "negative"
SUBSET = "negatives"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelLoadError(RuntimeError):
    """The SDXL pipeline could not be loaded (wrong id or folder, missing files offline)."""


# ------------------------------------------------------------------------------------------ per sample

def sample_key(job_seed: int, index: int) -> str:
    return f"neg-{job_seed}-{index:09d}"


def sample_seed(job_seed: int, index: int) -> int:
    """A 63-bit seed per sample, stable across Python/NumPy versions (SHA-256, not ``hash``)."""
    digest = hashlib.sha256(f"supirkit-negatives:{job_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class PromptSampler:
    """Chooses a sample's prompt: an entry of the configured list, or a set of negative-quality words."""

    def __init__(self, cfg: NegativesPromptConfig) -> None:
        self.cfg = cfg

    def prompt(self, seed: int) -> str:
        rng = np.random.default_rng([seed, 0])
        cfg = self.cfg
        if cfg.mode == "list":
            return cfg.list[int(rng.integers(len(cfg.list)))] if len(cfg.list) > 1 else cfg.list[0]
        k = int(rng.integers(cfg.words_min, cfg.words_max + 1))
        chosen = sorted(rng.choice(len(cfg.words), size=k, replace=False).tolist())
        return ", ".join(cfg.words[i].strip() for i in chosen)  # list order: prompts read alike


@dataclass
class SampleSpec:
    """Everything about one sample that is fixed before any pixel is made."""

    index: int
    key: str
    seed: int
    prompt: str


def sample_spec(cfg: NegativesConfig, sampler: PromptSampler, index: int) -> SampleSpec:
    seed = sample_seed(cfg.generate.seed, index)
    return SampleSpec(index, sample_key(cfg.generate.seed, index), seed, sampler.prompt(seed))


def partition_range(index: int, samples_per_shard: int, count: int) -> range:
    return range(index * samples_per_shard, min((index + 1) * samples_per_shard, count))


def n_partitions(count: int, samples_per_shard: int) -> int:
    return math.ceil(count / samples_per_shard)


# ------------------------------------------------------------------------------------------ source rule

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
            out.append(SlotPick(t, int(self._shard_order[g % self.m_inputs]), (g // self.m_inputs) * self.per_round + q))
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


def fit_to_size(rgb: np.ndarray, width: int, height: int, crop: str, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
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
    """Streams the chosen members of the input shards of one output shard, replacing unreadable ones."""

    def __init__(self, plan: SourcePlan, inputs: list[str], cfg: NegativesConfig) -> None:
        self.plan, self.inputs, self.cfg = plan, inputs, cfg

    def iter_sources(self, partition: int, specs: dict[int, SampleSpec], stats: UnitStats) -> Iterator[tuple[int, SourceImage]]:
        """Yields (t, source) for every sample t of the partition that got a usable source."""
        by_input: dict[int, list[SlotPick]] = {}
        for pick in self.plan.picks(partition, len(specs)):
            by_input.setdefault(pick.input, []).append(pick)
        for input_pos, picks in by_input.items():  # in order of first use: each tar is read once
            yield from self._read_input(input_pos, picks, specs, stats)

    def _read_input(self, input_pos: int, picks: list[SlotPick], specs: dict,
                    stats: UnitStats) -> Iterator[tuple[int, SourceImage]]:
        from supirkit.datapipe.keys import display_source

        url = self.inputs[input_pos]
        tar_display = display_source(url)
        with stats.timer("read_index"):
            keys = shard_keys(url)
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
            corrupt = yield from self._pass(url, tar_display, want, specs, stats)
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

    def _pass(self, url: str, tar_display: str, want: dict[str, list[int]], specs: dict, stats: UnitStats):
        """One sequential read of a tar: yields the wanted members' samples; the lists of the members that
        gave a source are emptied, the others keep their samples. Returns True if the tar is corrupt."""
        from supirkit.datapipe.decode import DecodeError, decode_rgb
        from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS
        from supirkit.datapipe.inputs import MEMBER_SEP
        from supirkit.datapipe.keys import display_source
        from supirkit.datapipe.tario import image_too_large, read_shard, sample_image

        dec, gen = self.cfg.sources.decode, self.cfg.generate
        found: set[str] = set()
        stream = read_shard(url, max_member_bytes=dec.max_file_bytes)
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
            src = f"{tar_display}{MEMBER_SEP}{display_source(key)}"
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
                                 "listed in the shard's index but not in its tar")
        return corrupt


# ------------------------------------------------------------------------------------------ the model

class _DropVaeUpcastWarning(logging.Filter):
    """SDXL pipelines move their VAE to fp32 and back around every encode/decode (``force_upcast``), and
    diffusers warns about that cast each time: one line per batch that says nothing to the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


def _quiet_vae_upcast_warning() -> None:
    target = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _DropVaeUpcastWarning) for f in target.filters):
        target.addFilter(_DropVaeUpcastWarning())


class SDXLGenerator:
    """One SDXL pipeline (image-to-image or text-to-image) and the call that makes a batch of samples."""

    def __init__(self, model: NegativesModelConfig, gen: GenerateConfig, negative_prompt: Optional[str]) -> None:
        import diffusers.utils
        import torch
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        self.gen, self.negative_prompt = gen, negative_prompt
        self.device = resolve_device(model.device)
        self.dtype = resolve_dtype(model.dtype, self.device, gpu_default="float16")
        if self.device == "cpu" and model.cpu_threads:
            torch.set_num_threads(model.cpu_threads)
        cls = StableDiffusionXLImg2ImgPipeline if gen.mode == "img2img" else StableDiffusionXLPipeline
        # newer diffusers name the argument `dtype` and deprecate `torch_dtype`
        dtype_arg = "dtype" if hasattr(diffusers.utils, "_resolve_dtype") else "torch_dtype"
        try:
            # use_safetensors: never unpickle weight files
            pipe = cls.from_pretrained(model.id, variant=model.variant, use_safetensors=True,
                                       **{dtype_arg: self.dtype})
        except Exception as exc:
            raise ModelLoadError(f"cannot load an SDXL pipeline from {model.id!r}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        pipe.set_progress_bar_config(disable=True)
        _quiet_vae_upcast_warning()
        self.pipe = pipe.to(self.device)
        self.scheduler = type(pipe.scheduler).__name__

    def __call__(self, specs: list[SampleSpec], images: Optional[list[np.ndarray]] = None) -> np.ndarray:
        """uint8 images (B, H, W, 3); every sample's noise comes from its own seeded CPU generator, so a
        sample does not depend on which device draws it."""
        import torch
        from PIL import Image

        gen = self.gen
        kwargs = dict(prompt=[s.prompt for s in specs], num_inference_steps=gen.steps,
                      guidance_scale=gen.guidance_scale, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed(s.seed) for s in specs])
        if self.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(specs)
        if gen.mode == "img2img":
            kwargs.update(image=[Image.fromarray(im) for im in images], strength=gen.strength)
        else:
            kwargs.update(height=gen.height, width=gen.width)
        with torch.inference_mode():
            out = self.pipe(**kwargs).images
        out = np.asarray(out, dtype=np.float32)
        if not np.isfinite(out).all():  # e.g. fp16 overflow: a systemic fault, the shard is retried
            raise FloatingPointError("the pipeline returned non-finite pixels (try model.dtype bfloat16 or float32)")
        return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------ the stage

class NegativesStage(Stage[Partition]):
    """Output shard j = samples [j*n, (j+1)*n), generated in batches by one SDXL pipeline per worker."""

    name = STAGE
    needs_gpu = True  # one pipeline per actor; on a cluster without GPUs the actors take none

    def __init__(self, cfg: NegativesConfig, inputs: list[str]) -> None:
        self.cfg = cfg
        self.inputs = inputs
        self.generator: Optional[SDXLGenerator] = None

    def setup(self) -> None:
        self.generator = SDXLGenerator(self.cfg.model, self.cfg.generate, self.cfg.prompts.negative_prompt)

    def load_partition(self, work_dir: Path, index: int) -> Partition:
        """Partition ``j`` is a range of sample numbers (see ``partition_range``), not a file listing."""
        return Partition(index, [], index * self.cfg.output.samples_per_shard)

    def first_input(self, partition: Partition) -> str:
        return f"sample {partition.first_order}"

    def process(self, partition: Partition, sink: ShardSink, stats: UnitStats) -> None:
        cfg = self.cfg
        sampler = PromptSampler(cfg.prompts)
        indices = partition_range(partition.index, cfg.output.samples_per_shard, cfg.generate.count)
        specs = {t: sample_spec(cfg, sampler, i) for t, i in enumerate(indices)}
        batch: list[tuple[SampleSpec, Optional[SourceImage]]] = []
        if cfg.generate.mode == "img2img":
            plan = SourcePlan(len(self.inputs), cfg.generate.seed, cfg.output.samples_per_shard,
                              cfg.sources.input_shards_per_partition)
            items: Iterable = ((specs[t], src) for t, src in SourceReader(plan, self.inputs, cfg).iter_sources(
                partition.index, specs, stats))
        else:
            items = ((specs[t], None) for t in range(len(specs)))
        for item in items:
            batch.append(item)
            if len(batch) >= cfg.generate.batch_size:
                self._run_batch(batch, sink, stats)
                batch = []
        if batch:
            self._run_batch(batch, sink, stats)
        stats.extra["sample_range"] = [indices.start, indices.stop]

    def _run_batch(self, batch: list, sink: ShardSink, stats: UnitStats) -> None:
        from supirkit.datapipe.decode import encode_image

        cfg, gen, out_cfg = self.cfg, self.cfg.generate, self.cfg.output
        specs = [b[0] for b in batch]
        images = [b[1].rgb for b in batch] if gen.mode == "img2img" else None
        with stats.timer("pipeline"):
            pixels = self.generator(specs, images)
        stats.count("batches")
        for (spec, src), rgb in zip(batch, pixels):
            with stats.timer("encode"):
                if out_cfg.codec == "png":
                    data = encode_image(rgb, "png", out_cfg.png_compress_level)
                else:
                    data = encode_image(rgb, "jpg", out_cfg.jpeg_quality)
            meta = sample_metadata(cfg, spec, src, self.generator.scheduler, rgb.shape[1], rgb.shape[0])
            with stats.timer("write"):
                sink.write({"__key__": spec.key, out_cfg.codec: data, "json": meta, "txt": spec.prompt})
            stats.count("generated")


def sample_metadata(cfg: NegativesConfig, spec: SampleSpec, src: Optional[SourceImage], scheduler: str,
                    width: int, height: int) -> dict:
    gen, out = cfg.generate, cfg.output
    img2img = gen.mode == "img2img"
    return {
        "key": spec.key, "index": spec.index, "subset": SUBSET, "quality": QUALITY,
        "source": src.source if src else f"sdxl-txt2img:{spec.key}",
        "source_key": src.key if src else None,
        "source_width": src.width if src else None, "source_height": src.height if src else None,
        "source_crop": src.crop if src else None,
        "orig_width": width, "orig_height": height,
        "prompt": spec.prompt, "negative_prompt": cfg.prompts.negative_prompt,
        "mode": gen.mode, "seed": spec.seed, "job_seed": gen.seed,
        "strength": gen.strength if img2img else None, "steps": gen.steps,
        "denoising_steps": _denoising_steps(gen), "guidance": gen.guidance_scale,
        "model": cfg.model.id, "scheduler": scheduler, "dtype": cfg.model.dtype,
        "encoded": out.codec, "jpeg_quality": out.jpeg_quality if out.codec == "jpg" else None,
    }


def _denoising_steps(gen: GenerateConfig) -> int:
    """How many scheduler steps actually run (diffusers' img2img runs int(steps * strength))."""
    return min(int(gen.steps * gen.strength), gen.steps) if gen.mode == "img2img" else gen.steps


# ------------------------------------------------------------------------------------------ the job

def check_model_ref(model_id: str) -> None:
    """Fail before any work on a model reference that can be neither a local pipeline nor a hub id."""
    p = Path(os.path.expanduser(model_id))
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise ConfigError(f"model.id: {model_id} is not a diffusers pipeline folder (no model_index.json)")
        return
    if not _HUB_ID.match(model_id):
        raise ConfigError(f"model.id: {model_id!r} is neither an existing folder nor a hub id like {SDXL_BASE}")


def freeze_inputs(work: Path, sources: list[str]) -> list[str]:
    """The input shard list, stored by the first run and reused on resume (source rule, step 1)."""
    from supirkit.datapipe.files import atomic_write_json, read_json
    from supirkit.datapipe.tario import list_shards

    path = work / INPUTS_FILE
    if path.is_file():
        return read_json(path)["shards"]
    try:
        shards = list_shards(sources)
    except FileNotFoundError as exc:
        raise FileNotFoundError(str(exc)) from None
    if not shards:
        raise FileNotFoundError(f"no shards found in {' '.join(sources)}")
    atomic_write_json(path, {"sources": sources, "shards": shards})
    return shards


def run_negatives_job(sources: Iterable[str] | None, out: str | Path, cfg: NegativesConfig,
                      fresh: bool = False) -> JobResult:
    """The whole ``supirkit negatives`` job (resumable); returns its statistics."""
    srcs = [os.fsdecode(s) for s in (sources or [])]
    gen = cfg.generate
    if gen.mode == "img2img" and not srcs:
        raise FileNotFoundError("img2img needs input shard sets (SRC); or use --set generate.mode=txt2img")
    if gen.mode == "txt2img" and srcs:
        log.warning("negatives: txt2img ignores the %d SRC given", len(srcs))
        srcs = []
    check_model_ref(cfg.model.id)
    chash = config_hash(cfg)
    layout = prepare_output(out, STAGE, chash, fresh, sources=srcs)
    inputs = freeze_inputs(layout.work, srcs) if gen.mode == "img2img" else []
    n = n_partitions(gen.count, cfg.output.samples_per_shard)
    stage = NegativesStage(cfg, inputs)
    result = run_stage(Pass(stage, ShardOutput(layout.root, cfg.output.prefix), n, layout.work, chash, STAGE),
                       cfg.runner)
    write_job_summary(layout, STAGE, result, extra={"mode": gen.mode, "requested": gen.count,
                                                    "input_shards": len(inputs), "config_hash": chash,
                                                    "pattern": layout.pattern(cfg.output.prefix, n)})
    return result


__all__ = ["NegativesConfig", "NegativesStage", "SDXLGenerator", "SourcePlan", "SourceReader", "PromptSampler",
           "SampleSpec", "ModelLoadError", "run_negatives_job", "sample_key", "sample_seed", "sample_spec",
           "partition_range", "n_partitions", "fit_to_size", "shard_keys", "PAPER_PROMPT",
           "NEGATIVE_WORDS", "QUALITY", "SUBSET"]
