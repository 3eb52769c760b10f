"""Argument shapes shared by every stage command: inputs and output on the command line, the rest
from a config (``--config FILE``, default: the stage's file under ``configs/``) with ``--set key=value``."""
from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"YAML config (default: configs/{default})")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override any config key, e.g. --set runner.executor=local (repeatable)")
    p.set_defaults(_default_config=default)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: a local path (on a cluster: storage every node mounts)")
    p.add_argument("--fresh", action="store_true",
                   help="delete what an earlier run left in --out and start over (else: resume)")


def load(args: argparse.Namespace, schema):
    from datapipe.config import load_config

    return load_config(schema, args.config, args.overrides, default=args._default_config)
