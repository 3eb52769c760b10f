"""supirkit evaluate"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_output_args

HELP = "score restored images against references (PSNR, SSIM, LPIPS, DISTS, MUSIQ, MANIQA, CLIP-IQA, NIQE)"
DESCRIPTION = (HELP + ". PRED and REF are folders of images (matched by file stem) or shards (matched by sample "
               "key; a `supirkit testset` folder is read as shards). Writes per_image.parquet, summary.csv, "
               "summary.md (the papers' table layout, conventions stated), summary.json and report.html (best and "
               "worst crops per metric). Weights are read from local files only; missing ones are listed, one "
               "line per metric, before any image is read.")


def add_arguments(p):
    p.add_argument("pred", metavar="PRED", help="restored images: folder of files, shard, shard folder or pattern")
    p.add_argument("--ref", metavar="REF", help="references, same forms (a testset folder: its HQ crops); without "
                                                "it only no-reference metrics run")
    add_output_args(p)
    p.add_argument("--metrics", metavar="LIST", help="comma-separated, e.g. psnr,ssim,lpips (shortcut for "
                                                     "--set metrics.names=[...])")
    p.add_argument("--convention", metavar="PRESET", help="PSNR/SSIM convention preset: pyiqa_ycbcr (default), "
                                                          "basicsr or rgb")
    p.add_argument("--crop-border", type=int, metavar="N", help="pixels cut from every side for PSNR/SSIM "
                                                                "(BasicSR uses the scale factor)")
    p.add_argument("--method", metavar="NAME", help="row name in the summary table (default: PRED's folder name)")
    add_config_args(p, "evaluate/default.yaml", example="metrics.device=cpu")


def _convention_overrides(args) -> list[str]:
    from supirkit.cli import UserError
    from supirkit.metrics.conventions import PRESETS, preset

    if args.convention is None and args.crop_border is None:
        return []
    if args.crop_border is not None and args.crop_border < 0:
        raise UserError("--crop-border must be >= 0")
    if args.convention is not None and args.convention not in PRESETS:
        raise UserError(f"--convention {args.convention}: unknown; known: {', '.join(sorted(PRESETS))}")
    out = []
    if args.convention is not None:
        for metric, conv in preset(args.convention).items():
            out += [f"metrics.conventions.{metric}.{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in conv.model_dump().items() if k != "crop_border"]
    if args.crop_border is not None:
        out += [f"metrics.conventions.{m}.crop_border={args.crop_border}" for m in ("psnr", "ssim")]
    return out


def run(args) -> int:
    import os

    from supirkit.cli import UserError
    from supirkit.commands._common import check_output_folder, load

    if args.metrics:
        args.overrides.append(f"metrics.names=[{args.metrics}]")
    if args.method:
        args.overrides.append(f"report.method={args.method}")
    args.overrides.extend(_convention_overrides(args))
    from supirkit.evaluation.evaluate import EvaluateConfig, run_evaluate

    cfg = load(args, EvaluateConfig)
    check_output_folder(args.out)
    for flag, path in (("PRED", args.pred), ("--ref", args.ref)):
        if path is not None and not os.path.exists(path) and "{" not in path:
            raise UserError(f"{flag} {path}: no such file or folder")
    from supirkit.metrics import MissingWeights, build_metrics, metric_info

    m = cfg.metrics
    try:
        names = [n for n in m.names if args.ref or metric_info(n).mode == "NR"]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:  # every model first, from local files: missing weights are listed before any image is read
        suite = build_metrics(names, device=m.device, pretrained=m.pretrained, conventions=m.conventions,
                              options=m.options, batch_size=m.batch_size)
    except MissingWeights as exc:
        raise UserError(str(exc)) from None
    try:
        result = run_evaluate(args.pred, args.ref, args.out, cfg, fresh=args.fresh, suite=suite)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if result.dropped_metrics:
        print(f"evaluate: no --ref, so the full-reference metrics were left out: {', '.join(result.dropped_metrics)}")
    print((result.out / "summary.md").read_text(encoding="utf-8").split("\n\n")[1])
    print(f"evaluate: {result.evaluated} images ({result.failed} with an error) -> {result.out} "
          f"(per_image.parquet, summary.csv, summary.md, report.html)")
    if result.missing_pred:
        print(f"evaluate: {len(result.missing_pred)} reference(s) have no restored image (listed in summary.json)")
    if result.missing_ref:
        print(f"evaluate: {len(result.missing_ref)} restored image(s) have no reference (listed in summary.json)")
    return 0
