"""Checkpoints of a training run: atomic ``accelerator.save_state`` folders, rotation, ``--resume latest``,
and the restore-ready adaptor export.

Layout under the run's output folder::

    checkpoints/step-00001000/    accelerate state (model, optimizer, scheduler, EMA, random states)
                                  + train_state.json, written last: the "complete" marker
    exports/step-00001000/        adaptor folder for ``supirkit restore`` (the model's own save function)
    adaptor/                      the latest export (replaced atomically)

A checkpoint is written under a temporary name and renamed when every process has written its part, so
a run killed mid-save leaves no folder that ``latest`` could pick. The output folder must be shared by all
nodes (accelerate writes each process's random state next to the model).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
_STEP_RE = re.compile(r"^step-(\d{8,})$")


def checkpoints_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{int(step):08d}"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(out)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def read_state(path: str | Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))


def resolve_resume(out: str | Path, spec: Optional[str]) -> Optional[Path]:
    """``None``: start fresh. ``latest``: newest complete checkpoint, or fresh when there is none yet
    (so the same command starts and resumes a run). A path: that checkpoint (must be complete)."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    p = Path(spec)
    if not p.is_dir() and (checkpoints_dir(out) / spec).is_dir():
        p = checkpoints_dir(out) / spec
    if not (p / STATE_FILE).is_file():
        raise FileNotFoundError(f"{spec}: not a complete checkpoint (no {STATE_FILE})")
    return p


def rotate(out: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and leftovers of interrupted saves."""
    found = list_checkpoints(out)
    removed = []
    for _, p in found[:max(0, len(found) - keep_last)]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    root = checkpoints_dir(out)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
    return removed


def save_checkpoint(accelerator, out: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Every process calls this (``save_state`` is collective under FSDP/DeepSpeed)."""
    root = checkpoints_dir(out)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": int(step), **state}, indent=1, sort_keys=True),
                                      encoding="utf-8")
        if final.exists():  # re-saving a step after a resume from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        removed = rotate(out, keep_last)
        if removed:
            log.info("checkpoint rotation removed %s", ", ".join(p.name for p in removed))
    accelerator.wait_for_everyone()
    return final


def training_hash(cfg) -> str:
    """What must not change when a run is resumed: model, data, optimiser and the schedule."""
    from supirkit.datapipe.config import config_hash

    return config_hash(cfg, exclude=("output_dir", "checkpoint", "logging", "validation", "runtime"))


# ------------------------------------------------------------------------------------- partial checkpoints
# A checkpoint of the adaptor stage holds only what is trained (the adaptor: ~1/3 of the full model at SDXL
# size); the frozen SDXL weights are reloaded from model.pretrained, so K checkpoints do not cost K SDXLs.

def _strip_wrapper(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def keep_only(prefix: str):
    """A ``save_state`` pre-hook that drops every model weight outside ``prefix`` (the frozen parts)."""

    def hook(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if _strip_wrapper(k).startswith(prefix)}

    return hook


def missing_trained_weights(ckpt: Path, trainable: list[str], prefix: str) -> list[str]:
    """The trained weights a partial checkpoint lacks (it is loaded with strict=False: check first)."""
    from safetensors import safe_open

    files = sorted(Path(ckpt).glob("model*.safetensors"))
    if not files:  # written with safe_serialization=False
        return []
    with safe_open(str(files[0]), framework="pt") as f:
        have = {_strip_wrapper(k) for k in f.keys()}
    return [prefix + n for n in trainable if prefix + n not in have]


def export_folder(out: str | Path, step: int, save_fn, extra: Optional[dict] = None) -> Path:
    """Write an export with ``save_fn(folder)`` (the model developer's save function: for the adaptor a
    restore-ready folder, for the DR encoder a folder with ``dr_encoder/``) under ``exports/step-N``, then
    make it the run's ``adaptor/`` (replaced atomically). Main process only."""
    out = Path(out)
    target = out / "exports" / step_name(step)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_fn(tmp)
    (tmp / "training.json").write_text(json.dumps({"step": int(step), **(extra or {})}, indent=1, sort_keys=True),
                                       encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    latest, latest_tmp, old = out / "adaptor", out / ".tmp-adaptor", out / ".old-adaptor"
    shutil.rmtree(latest_tmp, ignore_errors=True)
    shutil.copytree(target, latest_tmp)
    shutil.rmtree(old, ignore_errors=True)
    if latest.exists():
        os.replace(latest, old)
    os.replace(latest_tmp, latest)
    shutil.rmtree(old, ignore_errors=True)
    return target


__all__ = ["list_checkpoints", "resolve_resume", "rotate", "save_checkpoint", "export_folder", "read_state",
           "STATE_FILE", "step_name", "training_hash", "keep_only", "missing_trained_weights"]
