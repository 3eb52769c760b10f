"""supirkit negatives"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_io_args, check_model_ref, check_output_folder, finish, load

HELP = "make SUPIR's negative-quality samples with SDXL (img2img from any images at strength 0.5, or txt2img)"
DESCRIPTION = (HELP + ". Each sample is captioned with its negative-quality prompt and marked "
               '"quality": "negative"; the same config gives the same images under the same keys, and a '
               "rerun resumes shard by shard.")


def add_arguments(p):
    add_io_args(p, help="img2img sources, as for `supirkit shard`: shard sets, folders of images, globs, "
                "fsspec URLs, .parquet/.csv path lists, .tar (not needed with --set generate.mode=txt2img)")
    p.add_argument("--count", type=int, metavar="N", help="samples to make (default: generate.count of the config)")
    p.add_argument("--model", metavar="ID_OR_PATH",
                   help="SDXL diffusers pipeline: hub id or local folder (default: model.id of the config)")
    add_config_args(p, "negatives/default.yaml")


def run(args) -> int:
    from supirkit.cli import UserError
    from supirkit.datapipe.config import validate
    from supirkit.negatives.config import NegativesConfig
    from supirkit.negatives.job import ModelLoadError, run_negatives_job

    cfg = load(args, NegativesConfig)
    if args.count is not None or args.model is not None:
        data = cfg.model_dump()
        if args.count is not None:
            data["generate"]["count"] = args.count
        if args.model is not None:
            data["model"]["id"] = args.model
        cfg = validate(NegativesConfig, data, "--count/--model")
    check_output_folder(args.out)
    from supirkit.datapipe.sources import check_protocols

    check_protocols(args.sources)
    if args.sources or cfg.generate.mode == "txt2img":  # else the job's own "needs SRC" line comes first
        # before the output folder is bound to this config: a model that cannot load would leave a job
        # whose corrected rerun is refused as "a different config"
        check_model_ref("model.id", cfg.model.id, "model_index.json")
    try:
        result = run_negatives_job(args.sources, args.out, cfg, fresh=args.fresh)
    except (FileNotFoundError, ModelLoadError) as exc:
        raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return finish("negatives", result, args.out,
                  f"{result.samples} of {cfg.generate.count} samples ({cfg.generate.mode}) in {result.units} shards "
                  f"under {args.out} ({result.skipped} already done)", inputs=cfg.generate.count)
