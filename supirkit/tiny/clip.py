"""Tiny open_clip model and LAION-style aesthetic head, random weights, for tests and the demo.

The CLIP folder holds ``supirkit-tiny-clip.json`` (an open_clip model config; the model's name is the
file stem) and ``open_clip_model.safetensors``; the aesthetics scorer registers the config with
``open_clip.add_model_config`` and loads the weights with ``open_clip.create_model(name, pretrained=path)``,
the same path a real ViT-L-14 checkpoint takes.
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_NAME = "supirkit-tiny-clip"
EMBED_DIM = 32
TINY_CLIP_CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny CLIP folder; returns it."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f"{MODEL_NAME}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out


def build_tiny_aesthetic_head(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the MLP head (LAION layout, input = the tiny CLIP's embedding size); returns the file."""
    import torch
    from safetensors.torch import save_file

    from supirkit.curation.signals.models import aesthetic_head

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    head = aesthetic_head([EMBED_DIM, 64, 32, 16, 8, 1])
    path = out / "aesthetic_head.safetensors"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    return path
