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
from typing import Iterable, Optional

import numpy as np

from supirkit.datapipe.config import config_hash
from supirkit.datapipe.devices import resolve_device, resolve_dtype
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.plan import Partition
from supirkit.datapipe.progress import report
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
from supirkit.negatives.sources import FILE_GROUP, SourceImage, SourcePlan, SourceReader

log = logging.getLogger("supirkit")

STAGE = "negatives"
INPUTS_FILE = "inputs.json"
#: image files per input group when the sources are files rather than shards
FILES_PER_GROUP = 1000
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
        def step_done(pipe, step, timestep, callback_kwargs):  # live progress: one denoising step of the batch
            report(steps=1)
            return callback_kwargs

        kwargs["callback_on_step_end"] = step_done
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

    def __init__(self, cfg: NegativesConfig, inputs: list[str], work: Path) -> None:
        self.cfg = cfg
        self.inputs = inputs
        self.work = work
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
            reader = SourceReader(plan, self.inputs, cfg, self.work)
            items: Iterable = ((specs[t], src) for t, src in reader.iter_sources(partition.index, specs, stats))
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
        stats.count("steps", _denoising_steps(gen))
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
    """The input groups, stored by the first run and reused on resume (source rule, step 1): the input shards
    when the sources are shard sets, else the listing's files planned into groups (``files:N``) of
    ``sources.files_per_group``, with each tar as a group of its own. Any source ``shard`` takes works."""
    from supirkit.datapipe.config import ShardingConfig
    from supirkit.datapipe.files import atomic_write_json, read_json
    from supirkit.datapipe.plan import load_partition, plan_partitions
    from supirkit.datapipe.sources import TAR, list_inputs
    from supirkit.datapipe.tario import list_shards

    path = work / INPUTS_FILE
    if path.is_file():
        return read_json(path)["shards"]
    try:
        shards = list_shards(sources)
    except FileNotFoundError:
        shards = []
    if shards and all(s.endswith(".tar") for s in shards):
        groups = shards
    else:
        n = plan_partitions(list_inputs(sources), work, ShardingConfig(samples_per_shard=FILES_PER_GROUP))
        groups = []
        for i in range(n):
            refs = load_partition(work, i).refs
            if len(refs) == 1 and refs[0].kind == TAR:
                groups.append(refs[0].uri)
            elif any(r.kind != TAR for r in refs):
                groups.append(f"{FILE_GROUP}{i}")
    if not groups:
        raise FileNotFoundError(f"no images or shards found in {' '.join(sources)}")
    atomic_write_json(path, {"sources": sources, "shards": groups})
    return groups


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
    stage = NegativesStage(cfg, inputs, layout.work)
    result = run_stage(Pass(stage, ShardOutput(layout.root, cfg.output.prefix), n, layout.work, chash, STAGE),
                       cfg.runner)
    write_job_summary(layout, STAGE, result, extra={"mode": gen.mode, "requested": gen.count,
                                                    "input_shards": len(inputs), "config_hash": chash,
                                                    "pattern": layout.pattern(cfg.output.prefix, n)})
    return result


__all__ = ["NegativesConfig", "NegativesStage", "SDXLGenerator", "PromptSampler",
           "SampleSpec", "ModelLoadError", "run_negatives_job", "sample_key", "sample_seed", "sample_spec",
           "partition_range", "n_partitions", "PAPER_PROMPT",
           "NEGATIVE_WORDS", "QUALITY", "SUBSET"]
