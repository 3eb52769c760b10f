"""supirkit curate"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_io_args, check_output_folder, check_sources, finish, load

HELP = "score, deduplicate and select high-resolution photos; write curated training shards"
DESCRIPTION = (HELP + ". Accepted images become training crops in shards at the top of OUT; every input gets a "
               "row in the scores table OUT/__supirkit__/scores (with the rule that rejected it), beside "
               "report/report.html and summary.json. With --select-only, new thresholds re-select from the scores "
               "without rescoring.")


def add_arguments(p):
    add_io_args(p)
    p.add_argument("--select-only", action="store_true",
                   help="re-select from the scores in OUT (rules, dedup, output changed); never rescores")
    add_config_args(p, "curate/default.yaml")


def run(args) -> int:
    from supirkit.cli import UserError

    if not args.sources and not args.select_only:
        raise UserError("give at least one SRC, or --select-only to re-select an existing run")
    from supirkit.curation import CurateConfig, run_curate_job
    from supirkit.datapipe.stats import JobResult

    cfg = load(args, CurateConfig)
    check_output_folder(args.out)
    if not args.select_only:
        check_sources(args.sources)
    result = run_curate_job(args.sources, args.out, cfg, fresh=args.fresh, select_only=args.select_only)
    f = result.funnel
    job = result.write or JobResult()
    job.failed = result.failed
    return finish("curate", job, args.out, f"{f.get('accepted', 0)} of {f.get('inputs', 0)} inputs accepted -> "
                  f"{f.get('training_samples', 0)} training samples in {args.out}", inputs=f.get("inputs", 0))
