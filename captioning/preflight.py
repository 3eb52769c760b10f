"""Checks a caption job makes before it touches any shard: the checkpoint is a LLaVA, and GPU-only options
(vLLM, 8/4-bit loading) can run where the job will run. Each failure is one line for the user."""
from __future__ import annotations

from supirkit.captioning.config import CaptionConfig


def check_model(cfg: CaptionConfig) -> None:
    """Fail before any shard is touched when the checkpoint cannot be a LLaVA (one line for the user)."""
    from transformers import AutoConfig

    from supirkit.captioning.backends import SUPPORTED_MODEL_TYPES, BackendError

    name = cfg.model.name
    try:
        config = AutoConfig.from_pretrained(name, revision=cfg.model.revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"model {name!r} cannot be loaded: {first}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise BackendError(f"model {name!r} is a {config.model_type!r} checkpoint; expected one of "
                           f"{', '.join(SUPPORTED_MODEL_TYPES)} (LLaVA-1.5 / LLaVA-NeXT)")


def check_backend(cfg: CaptionConfig) -> None:
    """Fail before any shard is touched when a GPU-only option cannot run where the job will run: the vLLM
    backend and 8/4-bit loading (bitsandbytes) need their package and a CUDA GPU. Without this check the
    error would surface inside every worker as a failed shard, with the advice to rerun."""
    import importlib.util

    from supirkit.captioning.backends import BackendError

    m = cfg.model
    if m.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendError("model.backend vllm needs the vllm package, which is not installed here "
                           "(pip install 'supirkit[vllm]', GPU only); or use model.backend transformers")
    if m.backend == "vllm" and m.quantization == "8bit":
        raise BackendError("vLLM quantizes in flight to 4-bit only: use model.quantization 4bit or "
                           "model.backend transformers")
    if m.backend == "vllm" and cfg.generation.num_beams != 1:
        raise BackendError("model.backend vllm samples one sequence per image: set generation.num_beams 1")
    if m.backend == "transformers" and m.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise BackendError(f"model.quantization {m.quantization} needs the bitsandbytes package, which is not "
                           "installed here (pip install 'supirkit[quant]'); or use model.quantization none")
    if m.backend != "vllm" and m.quantization == "none":
        return
    what = "model.backend vllm" if m.backend == "vllm" else f"model.quantization {m.quantization}"
    if m.device == "cpu":
        raise BackendError(f"{what} runs on a CUDA GPU only, but model.device is cpu")
    if cfg.runner.executor == "local" or m.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"{what} runs on a CUDA GPU only and none is visible here; use model.quantization "
                               "none and model.backend transformers on CPU")
    elif cfg.runner.num_gpus_per_actor == 0:
        raise BackendError(f"{what} runs on a CUDA GPU only, but runner.num_gpus_per_actor is 0")
    else:
        import ray

        from supirkit.datapipe.executors import ensure_ray

        ensure_ray(cfg.runner)
        if not ray.cluster_resources().get("GPU", 0):
            raise BackendError(f"{what} runs on a CUDA GPU only, and the Ray cluster has no GPU")


__all__ = ["check_model", "check_backend"]
