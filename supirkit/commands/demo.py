"""supirkit demo"""
from __future__ import annotations

HELP = "run every stage end to end on generated sample images and tiny models (local Ray, CPU)"


def add_arguments(p):
    p.add_argument("--out", default="demo_out", metavar="DIR", help="where the demo writes (default: demo_out)")
    p.add_argument("--only", nargs="*", metavar="STEP", help="run only these steps (after samples and models)")
    p.add_argument("--sample-size", type=int, default=384, help="short side of the generated photos")


def run(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from supirkit.demo import run_demo

    run_demo(args.out, only=args.only, sample_size=args.sample_size)
    return 0
