"""Tiny, seeded, random-weight models built offline for tests and the demo.

Each builder writes the same on-disk format as the real checkpoint, so the code under test loads it
through the very same ``from_pretrained`` path it uses for the real one. Real-run configs name the real
checkpoints instead.
"""
from __future__ import annotations

import importlib
from pathlib import Path

#: name -> (module, builder function); each builder takes (out_dir, seed=0) and returns the folder/file.
BUILDERS = {
    "sdxl": ("supirkit.tiny.sdxl", "build_tiny_sdxl"),
    "llava": ("supirkit.tiny.llava", "build_tiny_llava"),
    "clip": ("supirkit.tiny.clip", "build_tiny_clip"),
    "aesthetic": ("supirkit.tiny.clip", "build_tiny_aesthetic_head"),
}


def available() -> list[str]:
    names = []
    for name, (mod, fn) in BUILDERS.items():
        try:
            if hasattr(importlib.import_module(mod), fn):
                names.append(name)
        except ImportError:
            continue
    return names


def build(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    mod, fn = BUILDERS[name]
    return Path(getattr(importlib.import_module(mod), fn)(Path(out_dir), seed=seed))


def build_all(out_dir: str | Path, seed: int = 0, names: list[str] | None = None) -> dict[str, Path]:
    """Build every available tiny model under ``out_dir/<name>``; returns name -> path."""
    out = Path(out_dir)
    built = {}
    for name in names or available():
        built[name] = build(name, out / name, seed=seed)
    return built
