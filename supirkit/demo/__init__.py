"""``supirkit demo``: the whole flow on generated samples and tiny models, on local Ray.

Each stage contributes one step module (``supirkit/demo/<stage>.py`` with ``step(ctx) -> dict``); the
flow runs the steps that exist, in pipeline order, and ends with a summary of every stage's outputs.
"""
from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

STEPS = ["curate", "caption", "negatives", "inspect", "degrade", "train", "restore"]


@dataclass
class DemoContext:
    out: Path
    samples: Path
    models: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    def cli(self, argv: list[str]) -> int:
        """Run a supirkit subcommand in this process; a non-zero exit stops the demo."""
        from supirkit.cli import main

        code = main([str(a) for a in argv])
        if code != 0:
            raise RuntimeError(f"supirkit {' '.join(map(str, argv))} exited with {code}")
        return code


def available_steps() -> list[str]:
    found = []
    for name in STEPS:
        try:
            module = importlib.import_module(f"supirkit.demo.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"supirkit.demo.{name}":
                continue
            raise
        if hasattr(module, "step"):
            found.append(name)
    return found


def run_demo(out: str | Path, only: list[str] | None = None, sample_size: int = 384) -> dict:
    from supirkit.demo.samples import make_sample_folder
    from supirkit.tiny import build_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ctx = DemoContext(out=out, samples=out / "samples")
    truth = make_sample_folder(ctx.samples, size=sample_size)
    ctx.outputs["samples"] = {"folder": str(ctx.samples), "files": len(truth)}
    print(f"[demo] samples: {len(truth)} generated images under {ctx.samples}", flush=True)
    models_dir = out / "tiny-models"
    ctx.models = build_all(models_dir)
    ctx.outputs["tiny-models"] = {k: str(v) for k, v in ctx.models.items()}
    print(f"[demo] tiny models: {', '.join(ctx.models)} under {models_dir}", flush=True)
    for name in available_steps():
        if only and name not in only:
            continue
        t = time.time()
        print(f"[demo] --- {name} ---", flush=True)
        module = importlib.import_module(f"supirkit.demo.{name}")
        result = module.step(ctx) or {}
        result["seconds"] = round(time.time() - t, 1)
        ctx.outputs[name] = result
    ctx.outputs["total_seconds"] = round(time.time() - t0, 1)
    (out / "demo_summary.json").write_text(json.dumps(ctx.outputs, indent=1, default=str))
    print("\n[demo] summary")
    for name, result in ctx.outputs.items():
        if isinstance(result, dict):
            items = ", ".join(f"{k}={v}" for k, v in result.items())
            print(f"  {name:<11} {items}")
    print(f"  total       {ctx.outputs['total_seconds']} s; full summary in {out / 'demo_summary.json'}")
    return ctx.outputs
