"""supirkit shard"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_io_args, check_output_folder, check_sources, finish, load

HELP = "pack images (folders, globs, URLs, path lists, tars) into lossless WebDataset shards"
DESCRIPTION = (HELP + ". With --from-manifest and --where, select rows of a scores table and write a new "
               "shard set from the sources they name, without recomputing any score.")


def add_arguments(p):
    add_io_args(p)
    p.add_argument("--from-manifest", metavar="PARQUET", help="scores/index table (file or folder) to select from")
    p.add_argument("--where", metavar="EXPR", help='condition on its columns, e.g. "sharpness > 0.4 and width >= 2048"')
    add_config_args(p, "shard/default.yaml")


def run(args) -> int:
    import os

    from supirkit.cli import UserError

    if not args.sources and not args.from_manifest:
        raise UserError("give at least one SRC or --from-manifest")
    if args.where and not args.from_manifest:
        raise UserError("--where needs --from-manifest")
    from supirkit.datapipe.conditions import Condition
    from supirkit.datapipe.pack import ShardConfig, run_shard_job

    cfg = load(args, ShardConfig)
    check_output_folder(args.out)
    check_sources(args.sources)
    if args.from_manifest:
        from supirkit.datapipe.sources import is_url, strip_file_scheme

        if not is_url(args.from_manifest) and not os.path.exists(strip_file_scheme(args.from_manifest)):
            raise UserError(f"--from-manifest {args.from_manifest}: no such file or folder")
    if args.where:
        Condition(args.where)  # fail before any work on a bad expression
    result = run_shard_job(args.sources, args.out, cfg, fresh=args.fresh, manifest=args.from_manifest,
                           where=args.where)
    return finish("shard", result, args.out, f"{result.samples} samples in {result.units} shards under {args.out} "
                  f"({result.skipped} already done)")
