"""What a run needs before its first step: the checks that fail in one line, the optimizer and LR schedule."""
from __future__ import annotations

from supirkit.datapipe.errors import SupirkitError
from supirkit.train.config import TrainConfig


class SetupError(SupirkitError, RuntimeError):
    """The run cannot start as configured (a one-line message for the user, no traceback)."""


def check_optimizer(cfg: TrainConfig, on_cuda: bool):
    """The 8-bit AdamW module, or None for torch's AdamW; a ``SetupError`` when 8-bit Adam cannot run here.
    Called before SDXL is loaded (minutes at full size) so that a missing package fails at once."""
    if not cfg.optim.use_8bit_adam:
        return None
    if not on_cuda:
        raise SetupError("optim.use_8bit_adam needs a CUDA GPU (bitsandbytes); set it to false on CPU")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise SetupError("optim.use_8bit_adam needs bitsandbytes: pip install 'supirkit[quant]' "
                         "or set optim.use_8bit_adam=false") from None
    return bnb


def check_logging(cfg: TrainConfig) -> None:
    """accelerate drops a tracker whose package is missing with only a warning: refuse instead."""
    import importlib.util

    backend = cfg.logging.backend
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise SetupError(f"logging.backend {backend} needs the {backend} package: pip install {backend}, "
                         "or choose another backend (tensorboard, wandb, none)")


def build_optimizer(cfg: TrainConfig, params, on_cuda: bool):
    import torch

    o = cfg.optim
    bnb = check_optimizer(cfg, on_cuda)
    if bnb is not None:
        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)


def build_scheduler(cfg: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    s = cfg.schedule
    return get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.max_steps)


__all__ = ["SetupError", "check_optimizer", "check_logging", "build_optimizer", "build_scheduler"]
