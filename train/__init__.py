"""train: SUPIR training with accelerate (adaptor, or with ``stage: encoder`` the degradation-robust encoder).

    accelerate launch [--config_file configs/accelerate/X.yaml] -m supirkit.train --config configs/train/supir.yaml
    supirkit train --config configs/train/supir.yaml [--accelerate-config X] [--resume latest]

Public API (imported lazily: ``import train`` loads no torch):
``TrainConfig``/``load_train_config`` (config), ``train`` (the loop, call it in every process),
``MixtureStream`` (the deterministic data stream), ``list_checkpoints``/``resolve_resume`` (checkpoints).
The SUPIR model itself lives in ``train.model``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": ".config",
    "load_train_config": ".config",
    "train": ".loop",
    "RunResult": ".loop",
    "MixtureStream": ".data",
    "DataError": ".data",
    "list_checkpoints": ".checkpoint",
    "resolve_resume": ".checkpoint",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = ["DataError", "MixtureStream", "RunResult", "TrainConfig", "list_checkpoints", "load_train_config",
           "resolve_resume", "train"]
