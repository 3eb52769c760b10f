"""gpu_check part ``curate``: the learned scorers of ``configs/curate/full.yaml`` (pyiqa MUSIQ, TOPIQ-NR and
CLIP-IQA on native-resolution tiles; open_clip ViT-L-14 embeddings with the LAION aesthetic head) with random
weights, each in images/s per GPU on curation-sized inputs (the scorer's own tiling / resizing included, the
decode and the cheap signals not: those run on CPU before)."""
from __future__ import annotations

import time

from _gpu_common import Recorder, Sizes, Timed, device_of

#: CLIP RN50's shapes (pyiqa's clip_model.CLIP arguments; clipiqa's default backbone), and a tiny one for the
#: dry run. pyiqa's CLIP loader infers the shapes from the state dict, so a random one loads like the real file.
CLIP_RN50 = dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=512,
                 transformer_heads=8, transformer_layers=12)
CLIP_RN_TINY = dict(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                    vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                    transformer_heads=1, transformer_layers=1)
#: open_clip ViT-L-14's embedding width and the LAION improved-aesthetic-predictor MLP widths.
AESTHETIC_DIMS = [768, 1024, 128, 64, 16, 1]


def random_clip_rn(path, shape: dict):
    """A TorchScript archive of a CLIP ResNet with random weights, the format of OpenAI's RN50.pt: pyiqa's
    loader takes the weights of such an archive (a plain state dict it fails to read after its TorchScript
    attempt has consumed the file)."""
    import warnings

    import torch
    from pyiqa.archs.clip_model import CLIP

    class Weights(CLIP):
        def forward(self, x):  # only the parameters matter; tracing keeps every submodule
            return x

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        torch.jit.save(torch.jit.trace(Weights(**shape).eval(), torch.zeros(1)), str(path))
    return str(path)


def random_aesthetic_head(path, dims):
    import torch
    from safetensors.torch import save_file

    from supirkit.curation.signals.models import aesthetic_head

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in aesthetic_head(dims).state_dict().items()}, str(path))
    return str(path)


def scorers(cfg, sizes: Sizes, work) -> list:
    """One scorer per learned signal of the config, with random weights in place of the downloaded ones."""
    from supirkit.curation.signals.models import ClipScorer, IQAScorer
    from supirkit.tiny.clip import EMBED_DIM, build_tiny_clip

    s = cfg.signals
    device = str(device_of(sizes))
    options = {"clipiqa": {"backbone": random_clip_rn(work / "clip_rn.pt", CLIP_RN_TINY if sizes.dry else CLIP_RN50)}}
    out = [IQAScorer(m, pretrained=False, tiles=s.iqa.tiles, tile_size=s.iqa.tile_size, batch_size=s.iqa.batch_size,
                     device=device, options=options.get(m)) for m in s.iqa.metrics]
    if s.aesthetic.enabled or cfg.dedup.semantic.enabled:
        clip = str(build_tiny_clip(work / "tiny_clip")) if sizes.dry else s.aesthetic.clip_model
        dims = [EMBED_DIM, 64, 32, 16, 8, 1] if sizes.dry else AESTHETIC_DIMS
        head = random_aesthetic_head(work / "aesthetic.safetensors", dims) if s.aesthetic.enabled else None
        # clip_weights None: open_clip builds the named model with random weights
        out.append(ClipScorer(clip, None, head, s.aesthetic.enabled, cfg.dedup.semantic.enabled,
                              s.aesthetic.batch_size, device))
    return out


def run(rec: Recorder, sizes: Sizes, work) -> None:
    from supirkit.curation import CurateConfig
    from supirkit.curation.signals import ImageView
    from supirkit.datapipe import load_config
    from supirkit.demo.samples import textured_photo

    device = device_of(sizes)
    cfg = load_config(CurateConfig, "curate/full.yaml",
                      ["runner.executor=local", "signals.iqa.pretrained=false", *sizes.curate_overrides])
    w, h = sizes.curate_size
    distinct = [textured_photo(i, h, w) for i in range(min(8, sizes.curate_images))]
    views = [ImageView(distinct[i % len(distinct)]) for i in range(sizes.curate_images)]
    rec.info(inputs=f"{sizes.curate_images} images {w}x{h}", iqa_tiles=cfg.signals.iqa.tiles,
             iqa_tile_size=cfg.signals.iqa.tile_size, clip_model=cfg.signals.aesthetic.clip_model)
    together = 0.0
    for scorer in scorers(cfg, sizes, work):
        name = getattr(scorer, "metric", None) or f"aesthetic + embedding ({cfg.signals.aesthetic.clip_model})"
        if not rec.fits(name, 8):
            continue
        t = time.perf_counter()
        batch = getattr(scorer, "batch_size", 8)
        try:
            scorer.setup(str(device))
            setup_s = time.perf_counter() - t
            scorer.score_batch(views[:batch])  # warm-up
            with Timed(device) as timed:
                rows = scorer.score_batch(views)
        except Exception as exc:  # one scorer's failure (a library version, a missing file) is its own row
            rec.case(name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        assert len(rows) == len(views)
        together += timed.s
        rec.case(f"{name}", input=_input(scorer), batch=batch, images_per_s=round(len(views) / timed.s, 2),
                 setup_s=round(setup_s, 1), peak_gib=timed.peak_gib)
        del scorer
    if together:
        rec.case("all learned scorers, one after the other", images_per_s=round(len(views) / together, 2))


def _input(scorer) -> str:
    if hasattr(scorer, "tile_size"):
        return f"{scorer.tiles} tiles of {scorer.tile_size} px"
    return f"{getattr(scorer, 'image_size', '?')} px centre crop"
