"""Demo step: what the training degradation does, as pictures.

A contact sheet of LQ variants of one curated crop (``supirkit degrade preview``, ``supir`` profile), and
HQ/LQ pair rows for a few sample photos under the DiffBIR CodeFormer-style profile (``render_pairs``).
"""
from __future__ import annotations

from pathlib import Path

_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def _images(folder: Path) -> list[Path]:
    # The demo folder mixes good photos (photo_*) with deliberately bad files: show the photos first.
    found = [p for p in Path(folder).iterdir() if p.suffix.lower() in _EXTS]
    return sorted(found, key=lambda p: (not p.name.startswith("photo_"), p.name))


def _first_source(ctx) -> str:
    curated = (ctx.outputs.get("curate") or {}).get("shards")
    if curated:
        tars = sorted(Path(curated).glob("*.tar"))
        if tars:
            return str(tars[0])
    images = _images(ctx.samples)
    if not images:
        raise RuntimeError(f"no images under {ctx.samples} to degrade")
    return str(images[0])


def _sample_photos(folder: Path, n: int) -> list:
    import numpy as np
    from PIL import Image

    photos = []
    for path in _images(folder):
        try:  # the demo folder holds deliberately broken files too
            with Image.open(path) as im:
                photos.append(np.asarray(im.convert("RGB")))
        except Exception:
            continue
        if len(photos) == n:
            break
    return photos


def step(ctx) -> dict:
    from supirkit.inspection.degrade_views import render_pairs

    out = ctx.out / "degrade"
    out.mkdir(parents=True, exist_ok=True)
    source = _first_source(ctx)
    sheet = out / "supir_variants.png"
    ctx.cli(["degrade", "preview", source, "--out", sheet, "--n", 6, "--tile", 192, "--seed", 0])
    photos = _sample_photos(Path(ctx.samples), 3)
    pairs = out / "codeformer_pairs.png"
    if photos:
        render_pairs(photos, "diffbir_codeformer", seed=0, tile=192, path=pairs)
    return {"contact_sheet": str(sheet), "pairs": str(pairs) if photos else None, "source": source,
            "profiles": "supir, diffbir_codeformer"}
