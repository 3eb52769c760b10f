"""bench_scale, decode once: how many times ``curate`` decodes each input with the learned scorers on.

The job runs in this process (local executor) on photo-like JPEGs with the demo profile and every kind of
learned signal (a pyiqa metric on native tiles, with random weights; the tiny open_clip with the LAION-style
aesthetic head; CLIP embeddings for semantic grouping); every decode goes through one function
(``datapipe.decode._decode``), which is counted, by the pass that called it. ``run_at.py COMMIT`` runs the
same count against an earlier commit (before: the learned signals had a pass of their own, which read and
decoded every scored input again).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path


def make_inputs(folder: Path, n: int) -> None:
    from PIL import Image

    from supirkit.demo.samples import textured_photo

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = folder / f"photo_{i:03d}.jpg"
        if not p.is_file():
            Image.fromarray(textured_photo(2000 + i, 384, 512)).save(p, quality=95, subsampling=0)


def run(work: Path, n: int) -> dict:
    import supirkit.curation.job as job
    import supirkit.datapipe.decode as decode
    from supirkit.curation.config import CurateConfig
    from supirkit.datapipe.config import load_config
    from supirkit.tiny import build_all

    src = work / "photos"
    make_inputs(src, n)
    models = build_all(work / "tiny", names=["clip", "aesthetic"])
    cfg = load_config(CurateConfig, "curate/demo.yaml", [
        "runner.executor=local", "runner.progress=none", "report.enabled=false", "signals.device=cpu",
        "signals.iqa.metrics=[musiq]", "signals.iqa.pretrained=false", "signals.iqa.tile_size=128",
        "signals.aesthetic.enabled=true", f"signals.aesthetic.clip_model={models['clip']}",
        f"signals.aesthetic.head_weights={models['aesthetic']}", "dedup.semantic.enabled=true",
        "dedup.semantic.threshold=1.0",  # embeddings computed; the tiny random CLIP would group everything
        "rules.checks=[]"])  # every input accepted: the write pass decodes each one (its worst case)
    decodes: Counter = Counter()
    current = {"pass": "driver"}
    original, run_stage = decode._decode, job.run_stage

    def counted(*args, **kwargs):
        decodes[current["pass"]] += 1
        return original(*args, **kwargs)

    def tracked(job_pass, runner):
        current["pass"] = job_pass.desc
        try:
            return run_stage(job_pass, runner)
        finally:
            current["pass"] = "driver"

    decode._decode, job.run_stage = counted, tracked
    try:
        out = work / "out"
        t, c = time.perf_counter(), time.process_time()
        result = job.run_curate_job([str(src)], out, cfg, fresh=True)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        decode._decode, job.run_stage = original, run_stage
    f = result.funnel
    scored = f["decoded"]
    return {"inputs": f["inputs"], "scored": scored, "accepted": f["accepted"], "decodes": dict(decodes),
            "per_input": sum(decodes.values()) / f["inputs"], "wall_s": wall, "cpu_s": cpu}


def report(r: dict, before: dict | None = None) -> str:
    lines = ["Decode once: curate with a pyiqa metric, aesthetics and CLIP embeddings (local executor)", "",
             "| code | inputs | scored | accepted | decodes by pass | decodes per input | job CPU s |",
             "|---|---|---|---|---|---|---|"]
    for name, x in (("before", before), ("now", r)):
        if x is None:
            continue
        passes = ", ".join(f"{k} {v}" for k, v in sorted(x["decodes"].items()))
        lines.append(f"| {name} | {x['inputs']} | {x['scored']} | {x['accepted']} | {passes} | "
                     f"{x['per_input']:.2f} | {x['cpu_s']:.1f} |")
    return "\n".join(lines)
