"""supirkit testset"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_io_args, check_output_folder, check_sources, load

HELP = "make a deterministic paired test set (HQ crop, LQ, parameters) from photos with a degradation profile"
DESCRIPTION = (HELP + ". Pairs are written as shards ({key}.png, {key}.lq.png, {key}.json) and as hq/ and lq/ "
               "PNG folders; each pair depends only on (profile, seed, key). Presets: --config "
               "testset/seesr_div2k.yaml (SeeSR's 3K DIV2K crops), testset/resshift_imagenet.yaml (ResShift's "
               "ImageNet-Test). Look at the pairs with: supirkit inspect OUT --degrade --html pairs.html")


def add_arguments(p):
    add_io_args(p, nargs="+")
    p.add_argument("--profile", metavar="NAME", help="degradation profile (configs/degrade name or YAML path); "
                                                     "shortcut for --set pairs.profile=NAME")
    p.add_argument("--count", type=int, metavar="N", help="at most N pairs (shortcut for --set pairs.count=N)")
    p.add_argument("--seed", type=int, help="shortcut for --set pairs.seed=N")
    add_config_args(p, "testset/default.yaml", example="crop.per_image=30")


def run(args) -> int:
    from supirkit.cli import UserError

    if args.count is not None and args.count < 1:
        raise UserError("--count must be >= 1")
    for flag, key in (("profile", "pairs.profile"), ("count", "pairs.count"), ("seed", "pairs.seed")):
        value = getattr(args, flag)
        if value is not None:
            args.overrides.append(f"{key}={value}")
    from supirkit.evaluation.testset import TestsetConfig, run_testset_job

    cfg = load(args, TestsetConfig)
    check_output_folder(args.out)
    check_sources(args.sources)
    result = run_testset_job(args.sources, args.out, cfg, fresh=args.fresh)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected.items())) or "none"
    print(f"testset: {result.samples} pairs ({cfg.pairs.profile}) in {result.units} shards under {args.out} "
          f"({result.skipped} already done); rejected: {reasons}")
    if result.failed:
        print(f"testset: {len(result.failed)} shard(s) failed; rerun the same command to retry them")
        return 1
    if cfg.export.folders:
        print(f"testset: HQ and LQ images in {args.out}/hq and {args.out}/lq")
    return 0
