"""Caption throughput: captions/s, and where the time goes (generate vs model load, image decode, writing).

Runs the real job (``captioning.run_caption_job``: shards in, read, decode, pad, processor, ``generate``, clean,
count, write shards out) at several batch sizes, every sample producing the same fixed number of new tokens
(``min_new_tokens = max_new_tokens``) so that batch sizes and backends compare on equal work.

CPU (default): the tiny random-weight LLaVA on curated-size 1024x1024 JPEGs. The absolute figures say
nothing about a real model; the ratios say how much batching and the pipeline around ``generate`` cost.

GPU (``--gpu``): LLaVA-1.5-13B built from its config (CLIP ViT-L/14-336 + 40-layer 5120-wide Llama, 576 image
tokens) with random weights in bf16, fixed 200 new tokens, for each backend (transformers; vLLM when
installed, with dummy weights from the same config). Anchor, named in the issue: ShareGPT4V's
Share-Captioner, 0.32 images/s per A100-class GPU; goal at least 10x (3.2 captions/s/GPU).
The tiny tokenizer stands in for LLaVA's (token ids only feed random embeddings); its prompt is longer than
the real one (char-level pieces), so prefill is slightly overstated.

    .venv/bin/python benchmarks/bench_caption.py                 # CPU, tiny model
    .venv/bin/python benchmarks/bench_caption.py --gpu           # GPU, full-size 13B, random weights
    .venv/bin/python benchmarks/bench_caption.py --input-path    # only decode + resize + pad vs the decode floors
Markdown table on stdout; JSON in bench_out/bench_caption.json (bench_caption_gpu.json for --gpu).
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "hf"))
os.environ.setdefault("TORCH_HOME", str(ROOT / ".cache" / "torch"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ANCHOR_IMAGES_PER_S = 0.32  # ShareGPT4V Share-Captioner: 1.2M captions in 44 A100 GPU-days
GOAL_RATIO = 10.0
OUT = ROOT / "bench_out"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared full-size builders beside this script
from _full_size import LLAVA_15_13B, build_llava, llava_folder  # noqa: E402


def make_shards(folder: Path, n: int, size: int, per_shard: int) -> Path:
    """``n`` curated-like JPEGs (size x size, smooth colour fields + texture) in shards of ``per_shard``."""
    import numpy as np
    from PIL import Image, ImageFilter

    from supirkit.datapipe.keys import content_key
    from supirkit.datapipe.sinks import ShardSink
    from supirkit.datapipe.stats import UnitStats

    rng = np.random.default_rng(0)
    if folder.exists():
        shutil.rmtree(folder)
    sink, index = None, 0
    for i in range(n):
        if sink is None:
            sink = ShardSink(folder, "shard", index)
        small = rng.integers(0, 255, (size // 32, size // 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        noise = Image.fromarray(rng.integers(0, 64, (size, size, 3), dtype=np.uint8)).filter(ImageFilter.BLUR)
        img = Image.blend(img, noise, 0.3)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        data = buf.getvalue()
        key = content_key(data)
        sink.write({"__key__": key, "jpg": data, "json": {"key": key, "width": size, "height": size}})
        if len(sink) == per_shard or i == n - 1:
            sink.commit(UnitStats())
            sink, index = None, index + 1
    return folder


def job_figures(out_dir: Path, wall: float) -> dict:
    """Throughput and the time split from the shards' stats (``timings_s``) of one job."""
    timings: dict = {}
    captions = new_tokens = 0
    meta = out_dir / "__supirkit__"
    # a caption set's unit markers (the default), or rewritten shards' stats (output.write=shards)
    markers = sorted((meta / "captions" / "_stats").glob("*.stats.json"))
    markers = markers or sorted((meta / "stats").glob("shard-*.json"))
    for sp in markers:
        st = json.loads(sp.read_text())
        for k, v in st.get("timings_s", {}).items():
            timings[k] = timings.get(k, 0.0) + v
        captions += st["counts"].get("captioned", 0)
        new_tokens += st["counts"].get("new_tokens", 0)
    load = timings.get("load_model", 0.0)
    work = max(wall - load, 1e-9)  # steady state: the job without the one-off model load

    def share(*names):
        return round(sum(timings.get(n, 0.0) for n in names) / wall, 3)

    return {"captions": captions, "new_tokens": new_tokens, "wall_s": round(wall, 3), "load_model_s": round(load, 3),
            "captions_per_s": round(captions / work, 3), "tokens_per_s": round(new_tokens / work, 1),
            "generate_s": round(timings.get("generate", 0.0), 3),
            "share_generate": share("generate"), "share_load": share("load_model"),
            "share_read_decode": share("read", "decode"), "share_preprocess": share("preprocess"),
            "share_decode_text_write": share("decode_text", "write"),
            # the main thread's remainder (shard listing, commit, parquet index); read+decode run beside it
            "share_other": round(1 - share("generate", "load_model", "preprocess", "decode_text", "write"), 3)}


def run_job(shards: Path, out: Path, overrides: list[str], backend_factory=None) -> dict:
    from supirkit.captioning.config import CaptionConfig
    from supirkit.captioning.job import run_caption_job
    from supirkit.datapipe.config import load_config

    cfg = load_config(CaptionConfig, "caption/default.yaml", overrides)
    t = time.perf_counter()
    job = run_caption_job([str(shards)], out, cfg, fresh=True, backend_factory=backend_factory)
    wall = time.perf_counter() - t
    if not job.ok:
        raise RuntimeError(f"caption job failed: {job.result.failed}")
    return job_figures(out, wall)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for _, k in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CPU

def bench_cpu(args) -> dict:
    from supirkit.tiny.llava import build_tiny_llava

    work = OUT / "caption_cpu"
    model = build_tiny_llava(work / "tiny_llava")
    rows = []
    for bs in args.batch_sizes:
        n = max(args.samples, bs * 2)
        shards = make_shards(work / f"in_{n}", n, args.size, per_shard=max(bs * 2, 8))
        overrides = [f"model.name={model}", "model.device=cpu", "model.dtype=float32", "runner.executor=local",
                     "runner.progress=none", f"model.cpu_threads={args.threads}", f"caption.batch_size={bs}",
                     f"generation.max_new_tokens={args.new_tokens}",
                     f"generation.min_new_tokens={args.new_tokens}", "tokens.tokenizer=null"]
        row = {"backend": "transformers", "batch": bs, **run_job(shards, work / f"out_bs{bs}", overrides)}
        rows.append(row)
        print(f"  batch {bs}: {row['captions_per_s']} captions/s, generate {row['share_generate']:.0%} of wall",
              file=sys.stderr, flush=True)
    base = rows[0]["captions_per_s"] or 1e-9
    for r in rows:
        r["speedup_vs_batch1"] = round(r["captions_per_s"] / base, 2) if rows[0]["batch"] == 1 else None
        r["ratio_vs_sharegpt4v"] = round(r["captions_per_s"] / ANCHOR_IMAGES_PER_S, 2)
    return {"mode": "cpu",
            "model": f"tiny LLaVA-1.5 (random weights, 56 px, 16 image tokens), {args.threads} torch thread(s)",
            "image_size": args.size, "new_tokens": args.new_tokens, "rows": rows}


# ----------------------------------------------------------------------------------------------- GPU

def common_overrides(folder: Path, new_tokens: int, device: str = "auto", dtype: str = "auto") -> list[str]:
    return [f"model.name={folder}", f"model.device={device}", f"model.dtype={dtype}", "runner.executor=local",
            "runner.progress=none", f"generation.max_new_tokens={new_tokens}",
            f"generation.min_new_tokens={new_tokens}", "tokens.tokenizer=null", "model.attn_implementation=sdpa"]


def measure_transformers(model, processor, folder: Path, batch: int, batches: int, size: int, new_tokens: int,
                         work: Path, device: str = "auto", dtype: str = "auto") -> dict:
    """The whole caption job on ``batches`` batches of ``batch`` images with an already built model (one model
    shared by every batch size): captions/s, new tokens/s and the time split, against ShareGPT4V's rate."""
    from supirkit.captioning.backends import TransformersCaptioner
    from supirkit.captioning.config import CaptionConfig
    from supirkit.datapipe.config import load_config

    n = batch * batches
    shards = make_shards(work / f"in_{n}_{size}", n, size, per_shard=n)
    overrides = common_overrides(folder, new_tokens, device, dtype) + [f"caption.batch_size={batch}"]
    cfg = load_config(CaptionConfig, "caption/default.yaml", overrides)

    def factory(cfg=cfg):
        return TransformersCaptioner(cfg.model, cfg.prompt, cfg.generation, model=model, processor=processor)

    row = {"backend": "transformers", "batch": batch, **run_job(shards, work / f"out_hf_{batch}", overrides, factory)}
    row["ratio_vs_sharegpt4v"] = round(row["captions_per_s"] / ANCHOR_IMAGES_PER_S, 2)
    row["meets_10x"] = row["ratio_vs_sharegpt4v"] >= GOAL_RATIO
    return row


def bench_gpu(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    from supirkit.captioning.backends import VLLMCaptioner
    from supirkit.captioning.config import CaptionConfig
    from supirkit.datapipe.config import load_config

    work = OUT / "caption_gpu"
    folder = work / "llava-1.5-13b-random"
    config, processor = llava_folder(folder, LLAVA_15_13B)
    n_tokens = args.new_tokens
    common = common_overrides(folder, n_tokens)
    rows = []

    t = time.perf_counter()
    model = build_llava(config, "cuda", torch.bfloat16)  # random weights, built on the GPU in bf16
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    print(f"  13B built in {build_s:.0f}s: {params / 1e9:.2f}B parameters", file=sys.stderr, flush=True)
    for bs in args.gpu_batch_sizes:
        row = measure_transformers(model, processor, folder, bs, args.gpu_batches, args.size, n_tokens, work)
        row["load_model_s"] = round(build_s, 1)
        rows.append(row)
        print(f"  transformers batch {bs}: {row['captions_per_s']} captions/s", file=sys.stderr, flush=True)
        torch.cuda.empty_cache()
    del model
    gc.collect()
    torch.cuda.empty_cache()

    try:
        import vllm  # noqa: F401
        have_vllm = True
    except ImportError:
        have_vllm = False
        rows.append({"backend": "vllm", "batch": "-", "note": "vllm not installed on this machine"})
    if have_vllm:
        for bs in args.vllm_batch_sizes:
            n = bs * args.gpu_batches
            shards = make_shards(work / f"in_{n}", n, args.size, per_shard=n)
            overrides = common + [f"caption.batch_size={bs}", "model.backend=vllm", "model.dtype=bfloat16",
                                  f"model.max_num_seqs={min(bs, 256)}", "model.max_model_len=2048"]
            cfg = load_config(CaptionConfig, "caption/default.yaml", overrides)
            engine = {}

            def factory(cfg=cfg, engine=engine):
                if "backend" not in engine:
                    engine["backend"] = VLLMCaptioner(cfg.model, cfg.prompt, cfg.generation,
                                                      engine_overrides={"load_format": "dummy"})
                return engine["backend"]

            t = time.perf_counter()
            factory()
            load_s = time.perf_counter() - t
            row = {"backend": "vllm", "batch": bs, **run_job(shards, work / f"out_vllm_{bs}", overrides, factory)}
            row["load_model_s"] = round(load_s, 1)
            rows.append(row)
            print(f"  vllm batch {bs}: {row['captions_per_s']} captions/s", file=sys.stderr, flush=True)
            del engine["backend"]
            gc.collect()
            torch.cuda.empty_cache()
    for r in rows:
        if "captions_per_s" in r:
            r["ratio_vs_sharegpt4v"] = round(r["captions_per_s"] / ANCHOR_IMAGES_PER_S, 2)
            r["meets_10x"] = r["ratio_vs_sharegpt4v"] >= GOAL_RATIO
    return {
        "mode": "gpu",
        "device": torch.cuda.get_device_name(0),
        "model": "LLaVA-1.5-13B architecture, random bf16 weights",
        "parameters": params,
        "image_size": args.size,
        "new_tokens": n_tokens,
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- main

COLUMNS = [("backend", "backend"), ("batch", "batch"), ("captions", "captions"), ("captions/s", "captions_per_s"),
           ("new tokens/s", "tokens_per_s"), ("generate", "share_generate"), ("model load", "share_load"),
           ("read+decode", "share_read_decode"), ("processor", "share_preprocess"),
           ("detok+write", "share_decode_text_write"), ("other", "share_other"),
           ("x vs batch 1", "speedup_vs_batch1"), ("x vs ShareGPT4V 0.32/s", "ratio_vs_sharegpt4v")]


def input_path(photos: str | None, rounds: int, max_side: int = 672) -> list[dict]:
    """The caption input path alone (``captioning.images.prepare_image``: decode, Lanczos to ``max_side``, pad),
    per CPU-second, against decoding the same bytes with the fastest decoder and with the old Pillow route
    (``_floor``), alternating in rounds. Sets: curated 1024x1024 q95 4:4:4 JPEGs (``caption.use: curated``)
    and larger originals (``use: original``: the JPEGs of ``photos``, else generated 2048x1536 q95)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _floor

    from supirkit.captioning.images import prepare_image
    from supirkit.demo.samples import textured_photo

    def jpeg(seed, h, w):
        buf = io.BytesIO()
        Image.fromarray(textured_photo(seed, h, w)).save(buf, format="JPEG", quality=95, subsampling=0)
        return buf.getvalue()

    sets = [("curated 1024x1024 q95 4:4:4", [jpeg(100 + i, 1024, 1024) for i in range(8)])]
    if photos:
        files = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        sets.append((f"originals: {len(files)} JPEGs of {photos}", [f.read_bytes() for f in files]))
    else:
        sets.append(("originals 2048x1536 q95 4:4:4", [jpeg(200 + i, 1536, 2048) for i in range(6)]))
    cands = {"fastest decoder (floor)": _floor.fastest, "decode_rgb Pillow route (old floor)": _floor.pillow,
             f"prepare_image (decode, Lanczos to {max_side}, pad)":
                 lambda d: np.asarray(prepare_image(d, "pad", max_side, (122, 116, 104), 10 ** 10))}
    rows = []
    for label, datas in sets:
        mp = sum(a.shape[0] * a.shape[1] for a in map(_floor.fastest, datas)) / 1e6
        cpu = {k: [] for k in cands}
        for fn in cands.values():
            fn(datas[0])  # imports and first-call costs outside the timings
        for _ in range(rounds):
            for name, fn in cands.items():
                cpu[name].append(_floor.decode_all(fn, datas)[0])
        best = {k: min(v) for k, v in cpu.items()}
        floor, pillow = best["fastest decoder (floor)"], best["decode_rgb Pillow route (old floor)"]
        for name in cands:
            rows.append({"set": label, "path": name, "images_per_cpu_s": len(datas) / best[name],
                         "mp_per_cpu_s": mp / best[name], "vs_floor": floor / best[name],
                         "vs_pillow_floor": pillow / best[name]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input-path", action="store_true",
                   help="only the caption input path (decode, resize, pad) against the decode floors, no job")
    p.add_argument("--photos", default=None, help="--input-path: folder of original JPEGs to use")
    p.add_argument("--rounds", type=int, default=5, help="--input-path: rounds")
    p.add_argument("--gpu", action="store_true", help="full-size LLaVA-1.5-13B (random weights) on the GPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="CPU batch sizes")
    p.add_argument("--samples", type=int, default=32, help="CPU: images per batch size (at least 2 batches)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU: torch threads (on a shared 2-core machine 1 is steadier and faster than 2)")
    p.add_argument("--size", type=int, default=1024, help="side of the curated JPEGs")
    p.add_argument("--new-tokens", type=int, default=None, help="fixed new tokens (CPU default 32, GPU 200)")
    p.add_argument("--gpu-batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--vllm-batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--gpu-batches", type=int, default=2, help="GPU: batches per measurement")
    args = p.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 200 if args.gpu else 32
    OUT.mkdir(exist_ok=True)
    if args.input_path:
        rows = input_path(args.photos, args.rounds)
        (OUT / "bench_caption_input.json").write_text(json.dumps(rows, indent=1))
        print("\n### caption input path, one thread, CPU time, best of", args.rounds, "rounds\n")
        print("| inputs | path | images per CPU-s | MP per CPU-s | vs floor | vs old Pillow floor |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['set']} | {r['path']} | {r['images_per_cpu_s']:.1f} | {r['mp_per_cpu_s']:.0f} | "
                  f"{r['vs_floor']:.2f} | {r['vs_pillow_floor']:.2f} |")
        return 0
    result = bench_gpu(args) if args.gpu else bench_cpu(args)
    result.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", python=platform.python_version(),
                  anchor={"name": "ShareGPT4V Share-Captioner", "images_per_s_per_gpu": ANCHOR_IMAGES_PER_S,
                          "goal_ratio": GOAL_RATIO},
                  command="python benchmarks/bench_caption.py" + (" --gpu" if args.gpu else ""))
    path = OUT / ("bench_caption_gpu.json" if args.gpu else "bench_caption.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"\n### caption ({result['mode']}: {result['model']}, {result['new_tokens']} new tokens per caption, "
          f"{result['image_size']}px JPEG inputs)\n")
    print(table(result["rows"], COLUMNS))
    print("\nShares are of the job's wall time; read+decode runs in a prefetch thread, overlapping generate.")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
