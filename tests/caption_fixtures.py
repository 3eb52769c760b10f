"""Input shard sets for the caption tests: small images of mixed sizes, written with datapipe's ShardSink,
with their originals on disk (the json's ``source``), optionally with a corrupt sample."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

#: the tiny LLaVA's quick settings: local executor, 8 new tokens, batches of 4
FAST_CAPTION = ["--set", "runner.executor=local", "--set", "generation.max_new_tokens=8",
                "--set", "caption.batch_size=4"]


def caption_argv(shards, out, tiny_models, *extra, fast=FAST_CAPTION) -> list:
    """``supirkit caption`` of ``shards`` into ``out`` with the tiny LLaVA and the demo config (and the tiny
    SDXL's tokenizer for the token counts, where it was built), then ``extra``."""
    argv = ["caption", str(shards), "--out", str(out), "--model", str(tiny_models["llava"]),
            "--config", "caption/demo.yaml", *fast, *extra]
    if "sdxl" in tiny_models:
        argv += ["--set", f"tokens.tokenizer={tiny_models['sdxl']}"]
    return argv


SIZES = [(40, 64), (64, 40), (48, 48), (30, 90), (72, 56), (56, 72), (36, 36), (90, 30), (64, 64)]


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, quality=90) if fmt == "JPEG" else Image.fromarray(rgb).save(
        buf, format=fmt
    )
    return buf.getvalue()


def make_shards(root: Path, n_shards: int = 3, per_shard: int = 3, corrupt: bool = False, with_txt: bool = False,
                seed: int = 0) -> Path:
    """``root/originals`` (the sources) and ``root/shards`` (shard-00000i.tar + index + stats); returns the
    shard folder. The curated image is a 2x-downscaled copy of the original, as a curation step would make."""
    from PIL import Image

    from supirkit.datapipe.keys import content_key
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    rng = np.random.default_rng(seed)
    originals, shards = root / "originals", root / "shards"
    originals.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        sink = ShardSink(shards, "shard", s)
        for _ in range(per_shard):
            h, w = SIZES[k % len(SIZES)]
            original = rng.integers(0, 255, (2 * h, 2 * w, 3), dtype=np.uint8)
            src = originals / f"orig_{k:03d}.png"
            src.write_bytes(encode(original, "PNG"))
            curated = np.asarray(Image.fromarray(original).resize((w, h), Image.Resampling.BICUBIC))
            fmt, ext = ("JPEG", "jpg") if k % 2 == 0 else ("PNG", "png")
            data = encode(curated, fmt)
            key = content_key(data)
            sample = {"__key__": key, ext: data, "json": {"key": key, "source": str(src), "width": w, "height": h,
                                                            "curation": {"score": round(float(rng.random()), 3)}}}
            if with_txt:
                sample["txt"] = f"old caption {k}"
            sink.write(sample)
            k += 1
        if corrupt and s == 0:
            sink.write({"__key__": "badbytes0000", "jpg": b"this is not a jpeg at all", "json": {"source": "nowhere"}})
            sink.write({"__key__": "noimage00000", "json": {"source": "nowhere", "note": "metadata only"}})
        sink.commit(UnitStats())
    return shards
