"""Demo step: ``supirkit restore`` on one degraded sample with the adaptor the train step exported."""
from __future__ import annotations

from pathlib import Path


def step(ctx) -> dict:
    import numpy as np
    from PIL import Image

    adaptor = (ctx.outputs.get("train") or {}).get("adaptor") or str(ctx.out / "train" / "adaptor")
    if not (Path(adaptor) / "config.json").is_file():
        raise RuntimeError(f"{adaptor}: no trained adaptor (run the train step first)")
    from supirkit.degrade import Degrader

    source = sorted(p for p in Path(ctx.samples).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    with Image.open(source) as im:
        hq = np.asarray(im.convert("RGB").resize((128, 128), Image.BICUBIC))
    # the same degradation as in training: the supir profile, at this small size
    _, lq, _ = Degrader.from_profile("supir", ["hq_size=null", "output.size=lq"])(hq, seed=0, key=source.stem)
    work = ctx.out / "restore"
    work.mkdir(parents=True, exist_ok=True)
    lq_path = work / f"{source.stem}_lq.png"
    Image.fromarray(lq).save(lq_path)
    out = work / "restored"
    ctx.cli(["restore", lq_path, "--out", out, "--sdxl", ctx.models["sdxl"], "--adaptor", adaptor,
             "--prompt", "a photo", "--upscale", 4, "--set", "sampler.num_steps=4", "--set", "image.min_size=64"])
    restored = out / f"{lq_path.stem}.png"
    with Image.open(restored) as im:
        size = im.size
    return {"input": str(lq_path), "lq_size": f"{lq.shape[1]}x{lq.shape[0]}", "restored": str(restored),
            "size": f"{size[0]}x{size[1]}"}
