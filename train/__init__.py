"""train: SUPIR training with accelerate (adaptor, or with ``stage: encoder`` the degradation-robust encoder).

    accelerate launch [--config_file configs/accelerate/X.yaml] -m supirkit.train --config configs/train/supir.yaml
    supirkit train --config configs/train/supir.yaml [--accelerate-config X] [--resume latest]

Public API (imported lazily: ``import supirkit.train`` loads no torch):
``TrainConfig``/``load_train_config`` (config), ``Trainer`` / ``train`` (the run, call it in every process),
``OBJECTIVES`` / ``register_objective`` (what is trained, by stage), ``EMAModel``,
``MixtureStream`` (the deterministic data stream), ``list_checkpoints``/``resolve_resume`` (checkpoints).
The SUPIR model, sampler and restore pipeline live in ``supirkit.model``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": ".config",
    "load_train_config": ".config",
    "train": ".trainer",
    "Trainer": ".trainer",
    "RunResult": ".trainer",
    "OBJECTIVES": ".objectives",
    "register_objective": ".objectives",
    "EMAModel": ".ema",
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


__all__ = ["DataError", "EMAModel", "MixtureStream", "OBJECTIVES", "RunResult", "TrainConfig", "Trainer",
           "list_checkpoints", "load_train_config", "register_objective", "resolve_resume", "train"]
