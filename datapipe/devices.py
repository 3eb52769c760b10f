"""Where models run and in which precision: one vocabulary for every config, one resolver.

Every config that places a model takes ``device: auto | cpu | cuda | cuda:N`` (type ``Device``) and ``dtype:
auto | float32 | float16 | bfloat16`` (type ``DType``). ``auto`` means: the GPU when one is visible (under Ray,
the one the actor was given: Ray sets ``CUDA_VISIBLE_DEVICES``), else the CPU; and a dtype chosen by the
caller for a GPU (``gpu_default``: what the reference code uses for that model), float32 on the CPU.
torch is imported only when a value is resolved.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import StringConstraints

from supirkit.datapipe.errors import ConfigError

DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a CUDA device asked for without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name}: no CUDA device is visible here")
    return name


def resolve_dtype(name: str, device: str, gpu_default: str = "float16"):
    """A torch dtype: ``auto`` -> ``gpu_default`` on CUDA (``bfloat16_if_supported`` picks bf16 where the GPU has
    it, else fp16), float32 on the CPU; anything else as named."""
    import torch

    if name == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32
        if gpu_default == "bfloat16_if_supported":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        name = gpu_default
    return getattr(torch, name)


__all__ = ["DType", "Device", "resolve_device", "resolve_dtype"]
