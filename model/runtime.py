"""Attention and memory options of the SUPIR model, shared by training and restoring (one schema, one apply).

``RuntimeOptions`` is a config section (``runtime:`` in ``configs/restore/default.yaml`` and
``configs/train/*.yaml``); ``apply_runtime_options`` applies it to the built models once, before the first step:

* ``attention``: which kernel PyTorch's scaled-dot-product attention uses in the UNet and the control trunk,
  through torch's standard switch (``torch.nn.attention.sdpa_kernel``). ``sdpa`` lets torch choose (flash
  attention where the shapes and dtype allow it). ``flash`` / ``efficient`` / ``cudnn`` / ``math`` pin one
  kernel; a call the pinned kernel cannot run fails instead of silently falling back.
* ``compile_unet``: ``torch.compile`` of the UNet's and the trunk's transformer blocks (diffusers' regional
  compilation, ``compile_repeated_blocks``): the same speed-up as compiling the whole UNet at a fraction of
  the compile time, and it works although SUPIR calls the UNet's blocks one by one rather than ``unet()``.
* ``channels_last``: NHWC weights for the convolutions (UNet, trunk, DR encoder, VAE).
* ``vae_slicing`` / ``vae_tiling``: diffusers' ``AutoencoderKL.enable_slicing`` (one batch item at a time)
  and ``enable_tiling`` (images above the VAE's 1024-px tile in overlapping tiles; lower peak memory for
  large restores, at the cost of small blending differences). The DR encoder is never tiled.

This module imports no torch at load time: configs validate without it.
"""
from __future__ import annotations

import functools
import logging
from typing import Literal, Optional

from pydantic import Field

from supirkit.datapipe.config import Schema
from supirkit.datapipe.errors import ConfigError

log = logging.getLogger(__name__)

ATTENTION_KERNELS = ("sdpa", "flash", "efficient", "cudnn", "math")
_CUDA_ONLY = ("efficient", "cudnn")


class RuntimeOptions(Schema):
    """How the model runs; none of these changes what is computed beyond floating-point rounding, except
    ``vae_tiling`` (tile blending)."""

    attention: Literal["sdpa", "flash", "efficient", "cudnn", "math"] = Field(
        "sdpa", description="SDPA kernel of the UNet and trunk: sdpa = torch chooses; the others pin one kernel.")
    compile_unet: bool = Field(False, description="torch.compile the UNet's and trunk's transformer blocks.")
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]] = None
    compile_backend: str = Field("inductor", description="torch.compile backend (eager: trace only, for checks).")
    channels_last: bool = Field(False, description="NHWC memory format for the convolutions.")
    vae_slicing: bool = Field(False, description="VAE encodes/decodes one batch item at a time.")
    vae_tiling: bool = Field(False, description="VAE works in overlapping tiles above its tile size (1024 px).")


def check_runtime_options(options: RuntimeOptions, device) -> None:
    """GPU-only choices fail here, in one line, before any model is touched."""
    kind = getattr(device, "type", str(device or "cpu")).split(":")[0]
    if options.attention in _CUDA_ONLY and kind != "cuda":
        raise ConfigError(f"runtime.attention={options.attention} needs a CUDA device (this run is on {kind}); "
                          "use sdpa, flash or math")


def sdpa_backends(kernel: str):
    """torch ``SDPBackend`` list for a kernel name (None: torch chooses)."""
    if kernel == "sdpa":
        return None
    from torch.nn.attention import SDPBackend

    return [{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]]


@functools.lru_cache(maxsize=None)
def _pinned_processor_class():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class PinnedKernelAttnProcessor(AttnProcessor2_0):
        """diffusers' SDPA processor with the kernel pinned around each call. Why a processor and not one
        global switch: the pin must hold wherever the block runs (also when gradient checkpointing recomputes
        it in backward) and must not reach the VAE's and text encoders' attention, whose head sizes and masks
        the flash kernel refuses. SDXL's ``AttnProcessor2_0`` does not consult diffusers' own
        ``set_attention_backend`` (only its newer dispatcher-based processors do)."""

        def __init__(self, backends):
            super().__init__()
            self.backends = backends

        def __call__(self, *args, **kwargs):
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(self.backends):
                return super().__call__(*args, **kwargs)

    return PinnedKernelAttnProcessor


def attention_processor(kernel: str):
    """The diffusers attention processor for ``kernel`` (torch's own choice for ``sdpa``)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    backends = sdpa_backends(kernel)
    return AttnProcessor2_0() if backends is None else _pinned_processor_class()(backends)


def _denoiser_parts(model) -> list:
    """The UNet and the adaptor of a ``SUPIRModel``; a bare diffusers UNet; nothing for other modules."""
    if model is None:
        return []
    if hasattr(model, "unet") and hasattr(model, "adaptor"):
        return [model.unet, model.adaptor]
    if hasattr(model, "compile_repeated_blocks") and getattr(model, "_repeated_blocks", None):
        return [model]
    return []


def set_attention(model, kernel: str) -> int:
    """Give every diffusers ``Attention`` of the UNet and trunk the processor for ``kernel``; returns how many."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    processor = attention_processor(kernel)
    ours = (AttnProcessor2_0, _pinned_processor_class())
    n = 0
    for part in _denoiser_parts(model):
        for module in part.modules():
            # only SDXL's plain SDPA processor (or our pinned one) is swapped; another processor is kept
            if isinstance(module, Attention) and type(module.processor) in ours:
                module.set_processor(processor)
                n += 1
    return n


def compile_blocks(model, options: RuntimeOptions) -> int:
    """Regional ``torch.compile`` of the transformer blocks (diffusers ``compile_repeated_blocks``)."""
    kwargs = {"backend": options.compile_backend}
    if options.compile_mode:
        kwargs["mode"] = options.compile_mode
    parts = _denoiser_parts(model)
    for part in parts:
        part.compile_repeated_blocks(**kwargs)
    return len(parts)


def apply_runtime_options(options: RuntimeOptions, model=None, vae=None, device=None) -> list[str]:
    """Apply ``options`` to a built ``SUPIRModel`` (or UNet) and its VAE; returns what was switched on.

    Call once after building the models and before the first step (and before wrapping them for DDP)."""
    import torch

    check_runtime_options(options, device)
    applied = []
    if set_attention(model, options.attention) and options.attention != "sdpa":
        applied.append(f"attention={options.attention}")
    elif options.attention != "sdpa":
        log.warning("runtime.attention=%s: this model has no UNet attention to pin", options.attention)
    if options.channels_last:
        for module in (model, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if vae is not None and options.vae_slicing:
        vae.enable_slicing()
        applied.append("vae_slicing")
    if vae is not None and options.vae_tiling:
        vae.enable_tiling()
        applied.append("vae_tiling")
    if options.compile_unet:
        if compile_blocks(model, options):
            applied.append(f"compile_unet ({options.compile_backend}, {options.compile_mode or 'default'})")
        else:
            log.warning("runtime.compile_unet: this model has no UNet/trunk transformer blocks to compile")
    if applied:
        log.info("runtime options: %s", ", ".join(applied))
    return applied


__all__ = ["ATTENTION_KERNELS", "RuntimeOptions", "apply_runtime_options", "check_runtime_options",
           "attention_processor", "compile_blocks", "sdpa_backends", "set_attention"]
