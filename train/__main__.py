"""``python -m supirkit.train --config configs/train/supir.yaml``: what ``accelerate launch -m supirkit.train``
runs in every process.

``supirkit train`` builds this same command line and hands it to accelerate's launcher.
"""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m supirkit.train", description="Train SUPIR's adaptor or its DR encoder.")
    p.add_argument("--config", metavar="FILE", default=None, help="training config (default: configs/train/supir.yaml)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override any config key, e.g. --set schedule.max_steps=100 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides output_dir)")
    p.add_argument("--stage", choices=["adaptor", "encoder"], help="override the config's stage")
    p.add_argument("--resume", metavar="latest|DIR", help="continue from the newest checkpoint (latest) or from DIR")
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="stop after step N (checkpointed; the LR schedule still spans schedule.max_steps)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from supirkit.datapipe.config import ConfigError
    from supirkit.train.config import load_train_config

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.stage:
        overrides.append(f"stage={args.stage}")
    try:
        cfg = load_train_config(args.config, overrides)
    except ConfigError as exc:
        print(f"train: config error: {exc}", file=sys.stderr)
        return 2
    rank = _rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[train r{rank}] %(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "diffusers", "transformers", "PIL", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from supirkit.train.data import DataError
    from supirkit.train.setup import SetupError
    from supirkit.train.trainer import train

    try:
        result = train(cfg, resume=args.resume, stop_at_step=args.stop_at_step)
    except (DataError, SetupError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        state = "stopped" if result.stopped_early else "finished"
        print(f"train: {state} at step {result.step}; output in {result.output_dir}"
              + (f"; adaptor exported to {result.export}" if result.export else ""))
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


if __name__ == "__main__":
    sys.exit(main())
