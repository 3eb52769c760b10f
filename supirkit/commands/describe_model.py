"""supirkit describe-model"""
from __future__ import annotations

from supirkit.commands._common import add_config_args

NAME = "describe-model"
HELP = "print frozen and trainable parameter counts of the full-size SUPIR model per trunk layout (no weights)"
DESCRIPTION = (HELP + ". The model is built on the meta device from the SDXL configs that ship under "
               "configs/model/: nothing is downloaded or allocated.")


def add_arguments(p):
    p.add_argument("--layout", action="append", metavar="NAME",
                   help="trunk layout(s) to describe (default: every layout in the config)")
    add_config_args(p, "model/supir.yaml", example="trunk.layout=trimmed")


def run(args) -> int:
    from supirkit.cli import UserError
    from supirkit.commands._common import load
    from supirkit.model.config import SupirModelConfig

    cfg = load(args, SupirModelConfig)
    names = args.layout or list(cfg.trunk.layouts)
    unknown = [n for n in names if n not in cfg.trunk.layouts]
    if unknown:
        raise UserError(f"unknown layout {unknown[0]!r}; the config has {', '.join(cfg.trunk.layouts)}")
    from supirkit.model.counts import describe, format_table

    for i, name in enumerate(names):
        try:
            rows = describe(cfg, name)
        except ValueError as exc:
            raise UserError(f"layout {name!r}: {exc}") from None
        if i:
            print()
        print(format_table(name + (" (selected for training)" if name == cfg.trunk.layout else ""), rows))
    return 0
