"""One GPU check: every GPU figure of the benchmarks in one short run (about 8 minutes on one H100/H200).

    .venv/bin/python benchmarks/gpu_check.py                   # CUDA present: the full check; else --dry
    .venv/bin/python benchmarks/gpu_check.py --dry             # the same code paths, tiny models, on CPU
    make gpu-check                                             # the same, with the project's environment

Parts, each in a process of its own with its own time budget (a slow part is stopped, keeps the cases it
finished, and cannot starve the rest; time a part leaves unused goes to the parts after it):

* curate: the learned scorers of configs/curate/full.yaml, images/s per GPU (_gpu_curate.py);
* caption: LLaVA-1.5-13B shapes, random bf16 weights, 200 new tokens, two batch sizes, captions/s and new
  tokens/s per GPU against ShareGPT4V's 0.32 images/s (_gpu_caption.py);
* negatives: SDXL img2img 1024 px, strength 0.5, 50 steps, batch 8, fp16, images/s per GPU (_gpu_negatives.py);
* train: the SUPIR step at 512 px, both trunk layouts, batch 4 and the largest that fits, checkpointing on and
  off, the attention and memory options, and the loader cores per GPU (_gpu_train.py);
* restore: 1024 px and 2048 px (tiled), 50 steps, seconds and peak memory, the options (_gpu_restore.py).

Models are built from their configs with random weights (nothing is downloaded; HF_HUB_OFFLINE=1), jobs run
on local executors (no Ray). Writes OUT/gpu_check.json and OUT/gpu_check.md (rewritten after every part) and
prints the markdown. On a machine whose Python lacks packages, install the wheels that
benchmarks/fetch_gpu_wheels.py fetched (benchmarks/README.md, "GPU check").
"""
from __future__ import annotations

import os

# Before any library reads them. NVML-based CUDA detection initialises no CUDA context in this process, so the
# part processes forked from it can use the GPU.
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Only this folder: supirkit itself comes from the installed package (the editable install here, the carried
# wheel on a GPU machine); the repository root on sys.path would shadow the wheel's subpackages.
sys.path.insert(0, str(HERE))

from _gpu_common import DRY, FULL, PARTS, Recorder, imported_distributions  # noqa: E402

#: Table columns per part: (header, key of the part's case rows).
COLUMNS = {
    "curate": [("input", "input"), ("batch", "batch"), ("images/s per GPU", "images_per_s"),
               ("peak GiB", "peak_gib"), ("setup s", "setup_s")],
    "caption": [("captions", "captions"), ("captions/s per GPU", "captions_per_s"),
                ("new tokens/s per GPU", "new_tokens_per_s"), ("x ShareGPT4V 0.32/s", "x_sharegpt4v"),
                ("generate share", "share_generate"), ("peak GiB", "peak_gib")],
    "negatives": [("images timed", "images_timed"), ("images/s per GPU", "images_per_s"),
                  ("time inside pipeline", "pipeline_share"), ("peak GiB", "peak_gib")],
    "train": [("s/step", "s_per_step"), ("samples/s per GPU", "samples_per_s"), ("peak GiB", "peak_gib"),
              ("x defaults", "x_defaults"), ("loader samples per CPU-s", "loader_samples_per_cpu_s"),
              ("samples per CPU-s", "samples_per_cpu_s"), ("cores per GPU", "cores_per_gpu")],
    "restore": [("tiled", "tiled"), ("seconds", "seconds"), ("peak GiB", "peak_gib"), ("x defaults", "x_defaults")],
}
SOFT_SHARE = 0.92  # a part plans its cases to end by this share of its budget; the rest is the hard margin


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()  # NVML-based (see above): no CUDA context here


def preload() -> None:
    """Import the heavy libraries once, here: every part process is forked with them already loaded."""
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import supirkit.datapipe.config  # noqa: F401  (before the bench scripts put the repository on sys.path)
    import supirkit.model.config  # noqa: F401


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform()}
    for name in ("transformers", "diffusers", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def part_process(part: str, sizes, path: Path, deadline: float, work: Path) -> None:
    """Body of one part's process: run it, record the outcome and what it imported."""
    import importlib

    rec = Recorder(path, part, deadline)
    try:
        import torch

        if sizes.dry:
            # tiny models gain nothing from more threads, and on a busy machine oversubscribed OpenMP threads
            # make each step many times slower
            torch.set_num_threads(1)
        elif torch.cuda.is_available():
            rec.info(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
        folder = work / part
        folder.mkdir(parents=True, exist_ok=True)
        importlib.import_module(f"_gpu_{part}").run(rec, sizes, folder)
        status = "ok"
    except Exception as exc:  # recorded in the results: the other parts still run
        status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        rec.data["traceback"] = traceback.format_exc()[-6000:]
        print(rec.data["traceback"], file=sys.stderr, flush=True)
    rec.finish(status, distributions=imported_distributions())


def run_parts(parts, sizes, total_s: float, work: Path, report) -> dict:
    """Each part in a forked process with its budget; unused time carries over to the parts after it."""
    import torch

    # fork shares the imported libraries (seconds per part); a CUDA context made here by some import would not
    # survive it, and spawn re-imports instead
    context = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else "fork")
    end = time.time() + total_s
    scale = min(1.0, total_s / sum(sizes.budgets_s[p] for p in parts))  # a shorter total shrinks every budget
    results = {}
    for i, part in enumerate(parts):
        later = scale * sum(sizes.budgets_s[p] for p in parts[i + 1:])
        budget = max(scale * sizes.budgets_s[part], end - time.time() - later)
        path = work / f"part-{part}.json"
        start = time.time()
        proc = context.Process(target=part_process, args=(part, sizes, path, start + SOFT_SHARE * budget, work),
                               name=f"gpu_check-{part}")
        proc.start()
        proc.join(budget)
        stopped = proc.is_alive()
        if stopped:
            proc.kill()
            proc.join()
        data = json.loads(path.read_text()) if path.is_file() else {"part": part, "cases": [], "notes": [], "info": {}}
        if stopped:
            data["status"] = f"stopped at its time limit ({budget:.0f} s); cases finished before are kept"
        elif data.get("status") == "running":
            data["status"] = f"failed: the process ended with exit code {proc.exitcode}"
        data.update(budget_s=round(budget, 1), wall_s=round(time.time() - start, 1))
        results[part] = data
        report(results)
    return results


def markdown(result: dict) -> str:
    mode = "dry run: tiny models on CPU, no GPU figures" if result["dry"] else "full size, random weights"
    device = next((p["info"].get("device") for p in result["parts"].values() if p["info"].get("device")), None)
    lines = [f"## GPU check ({mode})", "",
             f"Machine: {device or 'no GPU'}; {result['machine']['cpus']} CPUs; Python {result['machine']['python']}, "
             f"torch {result['machine']['torch']}, transformers {result['machine']['transformers']}, diffusers "
             f"{result['machine']['diffusers']}. Command: `{result['command']}`. Wall: {result['wall_s']:.0f} s."]
    for name, part in result["parts"].items():
        lines += ["", f"### {name}: {part.get('status')} ({part.get('wall_s', 0):.0f} s of "
                      f"{part.get('budget_s', 0):.0f})"]
        info = "; ".join(f"{k} {v}" for k, v in part.get("info", {}).items())
        if info:
            lines.append(f"\n{info}")
        rows = part.get("cases", [])
        cols = [(h, k) for h, k in COLUMNS[name] if any(k in r for r in rows)]
        lines += ["", "| case | " + " | ".join(h for h, _ in cols) + " | note |", "|---" * (len(cols) + 2) + "|"]
        for r in rows:
            note = r.get("skipped") or r.get("error") or ""
            cells = [_cell(r.get(k)) for _, k in cols]
            lines.append(f"| {r['case']} | " + " | ".join(cells) + f" | {note} |")
        lines += [f"\n{n}" for n in part.get("notes", [])]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def check_installed_copy() -> None:
    """On a machine where supirkit comes from the carried wheel: refuse a wheel older than this tree."""
    import supirkit

    installed = Path(supirkit.__file__).resolve().parent
    if installed.is_relative_to(ROOT):
        return  # the editable install: this tree itself
    from fetch_gpu_wheels import stale_files

    stale = stale_files(installed, ROOT)
    if stale:
        raise SystemExit(f"gpu_check: supirkit at {installed} is older than this tree ({len(stale)} files differ, "
                         f"e.g. {stale[0]}): rerun benchmarks/fetch_gpu_wheels.py and carry .whl/ again")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="tiny models on CPU: the same code paths, no GPU figures")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "gpu_check"), help="folder for the JSON and markdown")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--total-s", type=float, default=None,
                    help="wall-time budget of all parts together (default: 480 s; --dry: the parts' own budgets)")
    ap.add_argument("--work", default=None, help="scratch folder for models and shards (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.dry and not cuda_available():
        print("gpu_check: no CUDA device here: running --dry (tiny models on CPU; the GPU figures stay pending)",
              flush=True)
        args.dry = True
    if not args.dry:
        check_installed_copy()
    sizes = DRY if args.dry else FULL
    preload()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_check.py" + (" --dry" if args.dry else "")
    started = time.time()
    result = {"dry": args.dry, "command": command, "machine": machine(), "sizes": sizes.as_dict(), "parts": {}}

    def report(parts):
        result.update(parts=parts, wall_s=time.time() - started)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(result))

    try:
        total = args.total_s or (sum(sizes.budgets_s[p] for p in args.parts) if args.dry else 480.0)
        run_parts(args.parts, sizes, total, work, report)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    print(f"JSON: {out / 'gpu_check.json'}; markdown: {out / 'gpu_check.md'}")
    ok = all(p.get("status") == "ok" for p in result["parts"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
