"""Benchmark: the 20M run rehearsed on one machine (issue 16) - a million inputs, twenty million rows, 25,000
shards, and decoding once.

    .venv/bin/python benchmarks/bench_scale.py inputs  [--inputs 1000000 --small 100000]   # shard + curate
    .venv/bin/python benchmarks/bench_scale.py rows    [--rows 20000000 --embedded 2000000]  # global steps
    .venv/bin/python benchmarks/bench_scale.py shards  [--shards 25000 --rows-per-shard 800]  # training loader
    .venv/bin/python benchmarks/bench_scale.py decodes [--images 40]                        # decodes per input
    .venv/bin/python benchmarks/run_at.py COMMIT benchmarks/bench_scale.py decodes          # the same, before
    .venv/bin/python benchmarks/bench_scale.py all --quick                                  # every part, small

``inputs`` (``_scale_inputs``): ``shard`` and ``curate`` over N distinct tiny images on a Ray of 2 CPUs started
for the run, every input through the whole path; wall time by phase, per-input bookkeeping against the work
and the decode floor, driver and worker peak RSS (and at N/10, for the slope), files per 1,000 inputs.
``rows`` (``_scale_rows``): exact / near / semantic grouping (driver only, then per-bucket Ray tasks on 2
workers) and selection on 20M-row synthetic score tables with planted duplicates; wall time, peak RSS,
recall. ``shards`` (``_scale_shards``): the loader's index over 25,000 index-only shards; startup and RSS,
per-sample bookkeeping against the loader's per-sample time measured in the same run. ``decodes``
(``_scale_decodes``): decodes per input with the learned scorers on. Figures, commands and the projections
to 80M inputs / 20M samples / 25,000 shards: benchmarks/README.md ("scale") and docs/cluster.md.

Writes bench_out/scale-PART.json (PART: inputs, rows, shards, decodes) and prints markdown.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["inputs", "rows", "shards", "decodes", "all"], nargs="?", default="all")
    p.add_argument("--work", help="folder for the generated data (default: a temporary one, removed)")
    p.add_argument("--quick", action="store_true", help="small sizes: a check that every part runs")
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=None, help="second, smaller input count (default inputs/10)")
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--embedded", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--planted", type=int, default=10_000)
    p.add_argument("--shards", type=int, default=25_000)
    p.add_argument("--rows-per-shard", type=int, default=800)
    p.add_argument("--draws", type=int, default=3000)
    p.add_argument("--images", type=int, default=40)
    a = p.parse_args()
    if a.quick:
        a.inputs, a.small, a.rows, a.embedded, a.dim, a.planted = 20_000, 2_000, 50_000, 5_000, 64, 200
        a.shards, a.draws, a.images = 500, 500, 12
    a.small = a.inputs // 10 if a.small is None else a.small
    parts = ["inputs", "rows", "shards", "decodes"] if a.part == "all" else [a.part]
    out_dir = ROOT / "bench_out"
    out_dir.mkdir(exist_ok=True)
    with (contextlib.nullcontext(a.work) if a.work else tempfile.TemporaryDirectory(prefix="bench-scale-")) as tmp:
        work = Path(tmp)
        for part in parts:
            folder = work / part
            folder.mkdir(parents=True, exist_ok=True)
            if part == "inputs":
                import _scale_inputs as m

                result = m.run(folder, a.inputs, a.small)
                text = m.report(result)
            elif part == "rows":
                import _scale_rows as m

                result = m.run(folder, a.rows, a.embedded, a.dim, a.planted)
                text = m.report(result)
            elif part == "shards":
                import _scale_shards as m

                result = m.run(folder, a.shards, a.rows_per_shard, a.draws)
                text = m.report(result)
            else:
                import _scale_decodes as m

                result = m.run(folder, a.images)
                text = m.report(result)
            result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
            (out_dir / f"scale-{part}.json").write_text(json.dumps(result, indent=1, default=str))
            print(f"\n### scale: {part}\n\n{text}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
