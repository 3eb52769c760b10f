"""Random-weight builds of pyiqa metrics, for tests and throughput measurements on machines without weights.

``pyiqa.create_metric(name, pretrained=False)`` skips only the metric's own head weights: several
metrics still fetch a backbone unconditionally (LPIPS and DISTS: torchvision's ImageNet VGG/AlexNet;
MANIQA and TOPIQ: a timm model; CLIP-IQA: OpenAI's CLIP file, whose architecture is read from the file
itself). While ``random_backbones()`` is active those three entry points build the same architecture
with random weights instead:

* every torchvision model builder gets ``weights=None``;
* ``timm.create_model`` gets ``pretrained=False``;
* pyiqa's CLIP ``load(name)`` builds ``CLIP`` from the published architecture of ``name`` (``CLIP_ARCHS``).

The patches are undone when the block ends. Scores from such a metric mean nothing; its shapes, code
path and cost are the real ones.
"""
from __future__ import annotations

import contextlib
import functools
import sys

#: OpenAI CLIP architectures (the hyper-parameters ``build_model`` reads from each checkpoint):
#: embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length,
#: vocab_size, transformer_width, transformer_heads, transformer_layers
CLIP_ARCHS = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def random_clip(name, device="cpu", jit=False, download_root=None):
    """Stand-in for pyiqa's ``clip_model.load``: the named CLIP architecture with random weights (a local
    model file, e.g. a random model saved by the GPU check, is loaded as it is)."""
    import os

    from pyiqa.archs.clip_model import CLIP

    if os.path.isfile(str(name)):
        return random_clip._random_stands_for(name, device=device, jit=jit, download_root=download_root)
    if name not in CLIP_ARCHS:
        raise ValueError(f"no random-weight build of CLIP {name!r}; known: {', '.join(CLIP_ARCHS)}")
    return CLIP(*CLIP_ARCHS[name]).float().to(device).eval()


def _without_weights(builder):
    @functools.wraps(builder)
    def build(*args, **kwargs):
        kwargs["weights"] = None
        kwargs.pop("pretrained", None)
        return builder(*args, **kwargs)

    build._random_stands_for = builder
    return build


def _not_pretrained(create_model):
    @functools.wraps(create_model)
    def create(*args, **kwargs):
        kwargs["pretrained"] = False
        return create_model(*args, **kwargs)

    create._random_stands_for = create_model
    return create


def _restore_imported_names() -> None:
    """An architecture module imported inside the block may hold a stand-in under its own name
    (``from torchvision.models import vgg16``): give it the original back."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("pyiqa.archs.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            original = getattr(value, "_random_stands_for", None)
            if original is not None:
                setattr(module, attr, original)


@contextlib.contextmanager
def random_backbones():
    """Build torchvision, timm and CLIP backbones with random weights while the block runs."""
    import torchvision.models as tvm

    saved: list[tuple[object, str, object]] = []

    def swap(owner, attr, value):
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    for name in tvm.list_models(module=tvm):
        swap(tvm, name, _without_weights(getattr(tvm, name)))
    try:
        import timm

        swap(timm, "create_model", _not_pretrained(timm.create_model))
    except ImportError:
        pass
    import pyiqa.archs.clip_model as clip_model

    original_load = clip_model.load
    random_clip._random_stands_for = original_load
    swap(clip_model, "load", random_clip)
    # architecture modules that already imported ``load`` by name (``from .clip_model import load``)
    for module in [m for n, m in list(sys.modules.items()) if n.startswith("pyiqa.archs.") and m is not None]:
        if getattr(module, "load", None) is original_load:
            swap(module, "load", random_clip)
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)
        _restore_imported_names()
