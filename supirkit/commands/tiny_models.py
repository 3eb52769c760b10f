"""supirkit tiny-models"""
from __future__ import annotations

NAME = "tiny-models"
HELP = "build tiny random-weight checkpoints (SDXL, LLaVA, open_clip, aesthetic head) in the real formats"


def add_arguments(p):
    p.add_argument("out", metavar="OUT", help="folder to write the checkpoints into")
    p.add_argument("--only", nargs="*", metavar="NAME", help="build only these (sdxl, llava, clip, aesthetic)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from supirkit.cli import UserError
    from supirkit.tiny import BUILDERS, build_all

    unknown = sorted(set(args.only or []) - set(BUILDERS))
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    built = build_all(args.out, seed=args.seed, names=args.only)
    for name, path in built.items():
        print(f"{name:<10} {path}")
    return 0
