"""The degradation pipelines and the ``Degrader`` that runs a profile on one HQ crop.

Each call is split in two pure steps: ``sample_params`` draws every random choice of the sample into a
plain dict (a function of (seed, epoch, key) and the profile only), then the pixels are degraded from
that dict, with the per-pixel noise drawn from its own generator streams. Nothing reads or writes global
random state, so the output is the same in any worker, in any order, after any restart.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from supirkit.degrade.classical import run_classical, sample_classical
from supirkit.degrade.config import DegradeConfig
from supirkit.degrade.jpeg import jpeg_roundtrip, quality_to_int, to_uint8
from supirkit.degrade.kernels import (
    kernel_from_params,
    sample_blur_kernel,
    sample_sinc,
    separable_factor,
    weighted_index,
)
from supirkit.degrade.noise import add_gaussian_noise, add_poisson_noise

# degrade.filters, degrade.resize and degrade.sharpen (OpenCV) are imported where pixels are touched, so that
# building a Degrader, validating a profile or sampling parameters does not load OpenCV.

Params = dict[str, Any]
_PERSON = b"supirkit-degrade"  # domain separation: these streams differ from any other hash of the key


def seed_sequence(seed: int, epoch: int, key: Any) -> np.random.SeedSequence:
    """A SeedSequence from a hash of (seed, epoch, key). ``key`` is used as ``str(key)`` (bytes: UTF-8)."""
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).decode("utf-8", "surrogateescape")
    blob = json.dumps([int(seed), int(epoch), str(key)], separators=(",", ":")).encode()
    digest = hashlib.blake2b(blob, digest_size=16, person=_PERSON).digest()
    return np.random.SeedSequence(int.from_bytes(digest, "little"))


def draw_key(stream: int, index: int) -> str:
    """The ``key`` of a training draw (``train.data``): sample ``index`` of stream (rank) ``stream``. Seeding
    the degradation by the draw, not by the image, gives an image drawn twice (sampling is with replacement)
    two different degradations, and stays a pure function of (seed, rank, index), so resuming repeats it."""
    return f"draw:{int(stream)}:{int(index)}"


def _generators(seed: int, epoch: int, key: Any, n: int) -> list[np.random.Generator]:
    # Child 0 draws the parameters; the others feed pixel noise, one per noise step, so the parameter
    # draws never depend on how many pixels an image has.
    return [np.random.Generator(np.random.PCG64(s)) for s in seed_sequence(seed, epoch, key).spawn(n)]


# ------------------------------------------------------------------------------------------------ sampling
def _choice(rng: np.random.Generator, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    return options[weighted_index(rng, weights)]


def _sample_resize(rng: np.random.Generator, cfg) -> Params:
    direction = _choice(rng, ("up", "down", "keep"), (cfg.probs.up, cfg.probs.down, cfg.probs.keep))
    if direction == "up":
        scale = float(rng.uniform(1.0, cfg.range[1]))
    elif direction == "down":
        scale = float(rng.uniform(cfg.range[0], 1.0))
    else:
        scale = 1.0
    return {"direction": direction, "scale": scale, "mode": _choice(rng, cfg.modes)}


def _sample_noise(rng: np.random.Generator, cfg) -> Params:
    if rng.random() < cfg.gaussian_prob:
        sigma = float(rng.uniform(*cfg.gaussian_sigma))
        return {"kind": "gaussian", "sigma": sigma, "gray": bool(rng.random() < cfg.gray_prob)}
    scale = float(rng.uniform(*cfg.poisson_scale))
    return {"kind": "poisson", "scale": scale, "gray": bool(rng.random() < cfg.gray_prob)}


def _sample_jpeg(rng: np.random.Generator, cfg) -> Params:
    q = float(rng.uniform(*cfg.quality))
    return {"quality": q, "quality_int": quality_to_int(q, cfg.to_int)}


def _sample_stage(rng: np.random.Generator, cfg) -> Params:
    blur = sample_blur_kernel(rng, cfg.blur) if rng.random() < cfg.blur_prob else None
    return {"blur": blur, "resize": _sample_resize(rng, cfg.resize), "noise": _sample_noise(rng, cfg.noise),
            "jpeg": _sample_jpeg(rng, cfg.jpeg)}


def sample_realesrgan(rng: np.random.Generator, cfg) -> Params:
    """Every random choice of the second-order pipeline, drawn per sample. ``cfg``: RealESRGANConfig."""
    first = _sample_stage(rng, cfg.first)
    second = _sample_stage(rng, cfg.second)
    # drawn only when the profile makes it random, so profiles without it keep their random streams
    if cfg.second_order_prob < 1.0 and not rng.random() < cfg.second_order_prob:
        second = None  # ResShift's second_order_prob: the whole second stage is skipped
    f = cfg.final
    sinc = sample_sinc(rng, f.sinc_kernel_sizes, f.sinc_cutoff) if rng.random() < f.sinc_prob else None
    order = "sinc_then_jpeg" if rng.random() < f.sinc_first_prob else "jpeg_then_sinc"
    final = {"order": order, "sinc": sinc, "resize_mode": _choice(rng, f.resize_modes),
             "jpeg": _sample_jpeg(rng, f.jpeg)}
    return {"first": first, "second": second, "final": final}


def sample_codeformer(rng: np.random.Generator, cfg) -> Params:
    """Every random choice of DiffBIR's CodeFormer-style pipeline. ``cfg``: CodeFormerConfig."""
    blur = sample_blur_kernel(rng, cfg.blur)
    downsample = float(rng.uniform(*cfg.downsample))
    sigma = float(rng.uniform(*cfg.noise_sigma))
    noise = {"kind": "gaussian", "sigma": sigma, "gray": bool(rng.random() < cfg.noise_gray_prob)}
    return {"blur": blur, "downsample": downsample, "noise": noise, "jpeg": _sample_jpeg(rng, cfg.jpeg)}


# ------------------------------------------------------------------------------------------------ pixels
def _blur(img: np.ndarray, kernel: Optional[Params]) -> np.ndarray:
    if kernel is None:
        return img
    from supirkit.degrade.filters import plan_filter

    return plan_filter(kernel_from_params(kernel), separable_factor(kernel)).apply(img)


def _noise(img: np.ndarray, p: Params, rng: np.random.Generator, poisson_levels: str) -> np.ndarray:
    if p["kind"] == "gaussian":
        return add_gaussian_noise(img, p["sigma"], p["gray"], rng)
    return add_poisson_noise(img, p["scale"], p["gray"], rng, poisson_levels)


def _at_least_one(h: int, w: int) -> tuple[int, int]:
    return max(1, h), max(1, w)


def _jpeg(img: np.ndarray, p: Params, codec: str) -> np.ndarray:
    """libjpeg at the integer quality, or the reference's DiffJPEG at the float quality (``quirks.jpeg_codec``)."""
    if codec == "diffjpeg":
        from supirkit.degrade.diffjpeg import diffjpeg_roundtrip

        return diffjpeg_roundtrip(img, p["quality"])
    return jpeg_roundtrip(img, p["quality_int"])


def run_realesrgan(img: np.ndarray, p: Params, cfg, quirks, noise_rngs) -> tuple[np.ndarray, dict]:
    """Second-order degradation of a float32 RGB image (Real-ESRGAN ``feed_data`` L83-163), per sample."""
    from supirkit.degrade.resize import resize

    ori_h, ori_w = img.shape[:2]
    sizes = {}
    # first order
    out = _blur(img, p["first"]["blur"])
    r = p["first"]["resize"]
    size = _at_least_one(int(ori_h * r["scale"]), int(ori_w * r["scale"]))  # torch: floor(in * scale_factor)
    if r["scale"] != 1.0:
        src_scale = r["scale"] if quirks.first_resize_coords == "scale_factor" else None
        out = resize(out, size, r["mode"], src_scale=src_scale)
    sizes["first"] = list(out.shape[:2])
    out = _noise(out, p["first"]["noise"], noise_rngs[0], quirks.poisson_levels)
    out = _jpeg(out, p["first"]["jpeg"], quirks.jpeg_codec)
    # second order; its resize is relative to the original size (model L116-125)
    if p["second"] is not None:
        out = _blur(out, p["second"]["blur"])
        r = p["second"]["resize"]
        size = _at_least_one(int(ori_h / cfg.scale * r["scale"]), int(ori_w / cfg.scale * r["scale"]))
        if size != out.shape[:2]:
            out = resize(out, size, r["mode"])
        sizes["second"] = list(out.shape[:2])
        out = _noise(out, p["second"]["noise"], noise_rngs[1], quirks.poisson_levels)
    # final: [resize to LQ size + sinc] and JPEG, in the sampled order (model L146-163)
    f = p["final"]
    lq_size = _at_least_one(int(ori_h / cfg.scale), int(ori_w / cfg.scale))
    if f["order"] == "sinc_then_jpeg":
        out = _resize_if_needed(out, lq_size, f["resize_mode"])
        out = _blur(out, f["sinc"])
        out = _jpeg(out, f["jpeg"], quirks.jpeg_codec)
    else:
        out = _jpeg(out, f["jpeg"], quirks.jpeg_codec)
        out = _resize_if_needed(out, lq_size, f["resize_mode"])
        out = _blur(out, f["sinc"])
    sizes["lq"] = list(out.shape[:2])
    return out, sizes


def run_codeformer(img: np.ndarray, p: Params, cfg, noise_rng) -> tuple[np.ndarray, dict]:
    """DiffBIR's CodeFormer-style degradation (``codeformer.py`` L98-123): blur, down, noise, JPEG, back."""
    h, w = img.shape[:2]
    out = _blur(img, p["blur"])
    s = p["downsample"]
    out = _resize_if_needed(out, _at_least_one(int(h // s), int(w // s)), cfg.downsample_mode)
    sizes = {"down": list(out.shape[:2])}
    out = add_gaussian_noise(out, p["noise"]["sigma"], p["noise"]["gray"], noise_rng)
    out = jpeg_roundtrip(out, p["jpeg"]["quality_int"])
    out = _resize_if_needed(out, (h, w), cfg.resize_back_mode)
    sizes["lq"] = list(out.shape[:2])
    return out, sizes


def _resize_if_needed(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    from supirkit.degrade.resize import resize

    return img if tuple(img.shape[:2]) == tuple(size) else resize(img, size, mode)


def worker_init_fn(worker_id: int = 0) -> None:
    """For ``DataLoader(worker_init_fn=...)``: one OpenCV thread per worker process. OpenCV otherwise
    starts a thread pool per worker for each filter, and N workers x M threads oversubscribe the cores
    (the degradation scales by adding workers, not threads)."""
    import cv2

    cv2.setNumThreads(1)


# ------------------------------------------------------------------------------------------------ Degrader
class Degrader:
    """Runs one degradation profile: ``target, lq, params = degrader(hq, seed=, epoch=, key=)``.

    ``hq``: the HQ training crop, HxWx3 uint8 RGB (the data pipeline crops; the degrader does not).
    ``target``: what the model should reproduce (the crop, or its unsharp-masked version when the
    profile says ``sharpen.target_sharpened``), HxWx3 uint8 RGB.
    ``lq``: the degraded image at the profile's output size, uint8 RGB.
    ``params``: every random choice made for this sample, a JSON-able dict.
    """

    def __init__(self, config: DegradeConfig):
        self.config = config

    # construction -------------------------------------------------------------------------------
    @classmethod
    def from_profile(cls, name: str, overrides: Iterable[str] = ()) -> "Degrader":
        """A shipped profile by name (``configs/degrade/<name>.yaml``), e.g. ``"supir"``."""
        from supirkit.datapipe.config import load_config

        return cls(load_config(DegradeConfig, f"degrade/{name}.yaml", overrides))

    @classmethod
    def from_config(cls, path: str | Path, overrides: Iterable[str] = ()) -> "Degrader":
        """A profile from a YAML file; ``overrides`` are ``key.path=value`` strings as ``--set`` takes."""
        from supirkit.datapipe.config import load_config

        return cls(load_config(DegradeConfig, path, overrides))

    @classmethod
    def from_spec(cls, spec: "str | Path | DegradeConfig | Degrader", overrides: Iterable[str] = ()) -> "Degrader":
        """Whatever names a profile: a Degrader (returned as is), a DegradeConfig, a YAML path (ends in
        .yaml/.yml or contains a path separator) or a shipped profile name such as ``"supir"``."""
        import os

        if isinstance(spec, Degrader):
            if overrides:
                raise ValueError("overrides need a profile name, a path or a config, not a built Degrader")
            return spec
        if isinstance(spec, DegradeConfig):
            if not overrides:
                return cls(spec)
            return cls.from_dict(spec.model_dump(), f"<{spec.name}>").with_overrides(overrides)
        text = str(spec)
        if isinstance(spec, Path) or text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
            return cls.from_config(text, overrides)
        return cls.from_profile(text, overrides)

    def with_overrides(self, overrides: Iterable[str]) -> "Degrader":
        """A new Degrader with ``key.path=value`` overrides applied to this profile (validated again)."""
        from supirkit.datapipe.config import apply_overrides, validate

        data = apply_overrides(self.config.model_dump(), list(overrides))
        return Degrader(validate(DegradeConfig, data, f"<{self.config.name}>"))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "Degrader":
        from supirkit.datapipe.config import validate

        return cls(validate(DegradeConfig, data, source))

    # sizes ----------------------------------------------------------------------------------------
    def output_size(self, hq_h: int, hq_w: int) -> tuple[int, int]:
        """(height, width) of the LQ for an HQ crop of that size."""
        size = self.config.output.size
        if size == "hq":
            return hq_h, hq_w
        if size == "lq":
            s = self.config.scale
            if s is None:
                return hq_h, hq_w
            return _at_least_one(int(hq_h / s), int(hq_w / s))
        if hq_h <= hq_w:
            return size, max(1, round(hq_w * size / hq_h))
        return max(1, round(hq_h * size / hq_w)), size

    # sampling -------------------------------------------------------------------------------------
    def sample_params(self, seed: int = 0, epoch: int = 0, key: Any = "") -> Params:
        """The random choices for (seed, epoch, key), without touching any pixel."""
        rng = _generators(seed, epoch, key, 1)[0]
        return self._sample(rng, seed, epoch, key)

    def _sample(self, rng: np.random.Generator, seed, epoch, key) -> Params:
        cfg = self.config
        if cfg.pipeline == "realesrgan":
            body = sample_realesrgan(rng, cfg.realesrgan)
        elif cfg.pipeline == "classical":
            body = sample_classical(rng, cfg.classical)
        else:
            body = sample_codeformer(rng, cfg.codeformer)
        return {"profile": cfg.name, "pipeline": cfg.pipeline, "seed": int(seed), "epoch": int(epoch),
                "key": key.decode("utf-8", "surrogateescape") if isinstance(key, (bytes, bytearray)) else str(key),
                **body}

    # running --------------------------------------------------------------------------------------
    def _check(self, hq: np.ndarray) -> None:
        if not isinstance(hq, np.ndarray) or hq.dtype != np.uint8 or hq.ndim != 3 or hq.shape[2] != 3:
            got = f"{type(hq).__name__} {getattr(hq, 'dtype', '')} {getattr(hq, 'shape', '')}"
            raise ValueError(f"hq must be an HxWx3 uint8 RGB array, got {got}")
        n = self.config.hq_size
        if n is not None and hq.shape[:2] != (n, n):
            raise ValueError(f"hq must be {n}x{n} (profile {self.config.name!r} hq_size), got "
                             f"{hq.shape[0]}x{hq.shape[1]}: crop in the data pipeline, or set hq_size")

    def __call__(self, hq: np.ndarray, *, seed: int = 0, epoch: int = 0,
                 key: Any = "") -> tuple[np.ndarray, np.ndarray, Params]:
        self._check(hq)
        cfg = self.config
        rngs = _generators(seed, epoch, key, 3)
        params = self._sample(rngs[0], seed, epoch, key)
        sh = cfg.sharpen
        sharpened = None
        if sh.lq_from_sharpened or sh.target_sharpened:
            from supirkit.degrade.sharpen import unsharp_mask

            sharpened = unsharp_mask(hq, sh.kernel_size, sh.sigma, sh.weight, sh.threshold)
        if sh.lq_from_sharpened:
            base = sharpened
        else:
            base = hq.astype(np.float32)
            base *= np.float32(1.0 / 255.0)
        if cfg.pipeline == "realesrgan":
            out, sizes = run_realesrgan(base, params, cfg.realesrgan, cfg.quirks, rngs[1:])
        elif cfg.pipeline == "classical":
            out, sizes = run_classical(base, params, cfg.classical, rngs[1])
        else:
            out, sizes = run_codeformer(base, params, cfg.codeformer, rngs[1])
        out_size = self.output_size(*hq.shape[:2])
        out = _resize_if_needed(out, out_size, cfg.output.mode)
        lq = to_uint8(out)  # lq = clamp(round(out * 255), 0, 255)
        target = to_uint8(sharpened) if sh.target_sharpened else hq
        params["sharpened_lq"] = bool(sh.lq_from_sharpened)
        params["sharpened_target"] = bool(sh.target_sharpened)
        params["sizes"] = {"hq": list(hq.shape[:2]), **sizes, "out": list(lq.shape[:2])}
        return target, lq, params

    def as_transform(self, *, seed: int = 0, epoch: int = 0, image_key: Optional[str] = None,
                     target_key: str = "target", lq_key: str = "lq", params_key: str = "params",
                     params_format: str = "json") -> "DegradeTransform":
        """A callable mapping a sample dict (webdataset style: ``__key__`` + a decoded RGB uint8 image) to
        the same dict plus ``target``, ``lq`` and ``params``. See ``DegradeTransform``."""
        return DegradeTransform(self, seed=seed, epoch=epoch, image_key=image_key, target_key=target_key,
                                lq_key=lq_key, params_key=params_key, params_format=params_format)


_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "image", "img", "hq")


class DegradeTransform:
    """Sample-dict transform for webdataset pipelines and Dataset ``__getitem__``.

    The key of a sample is ``sample["__key__"]`` (or ``sample["key"]``, or ``sample["__index__"]``).
    The epoch is fixed at construction; call ``set_epoch(e)`` before each epoch's iterator is created
    (DataLoader workers copy the transform when the iterator starts, as with ``DistributedSampler``).
    ``params_format="json"`` stores the params as a JSON string, which the default collate batches as a
    list of strings; ``"dict"`` keeps the dict.
    """

    def __init__(self, degrader: Degrader, *, seed: int, epoch: int, image_key: Optional[str],
                 target_key: str, lq_key: str, params_key: str, params_format: str):
        if params_format not in ("json", "dict"):
            raise ValueError(f"params_format must be 'json' or 'dict', got {params_format!r}")
        self.degrader = degrader
        self.seed, self.epoch = int(seed), int(epoch)
        self.image_key = image_key
        self.target_key, self.lq_key, self.params_key = target_key, lq_key, params_key
        self.params_format = params_format

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _image(self, sample: dict) -> np.ndarray:
        if self.image_key is not None:
            return sample[self.image_key]
        for name in _IMAGE_KEYS:
            value = sample.get(name)
            if isinstance(value, np.ndarray):
                return value
        raise KeyError(f"no decoded image in sample (looked for {', '.join(_IMAGE_KEYS)}); pass image_key=")

    @staticmethod
    def _key(sample: dict):
        for name in ("__key__", "key", "__index__"):
            if name in sample:
                return sample[name]
        raise KeyError("sample has no '__key__' (or 'key'): the degradation is seeded from it")

    def __call__(self, sample: dict) -> dict:
        target, lq, params = self.degrader(self._image(sample), seed=self.seed, epoch=self.epoch,
                                           key=self._key(sample))
        out = dict(sample)
        out[self.target_key] = target
        out[self.lq_key] = lq
        out[self.params_key] = json.dumps(params, sort_keys=True) if self.params_format == "json" else params
        return out
