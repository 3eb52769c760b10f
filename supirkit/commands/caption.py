"""supirkit caption"""
from __future__ import annotations

from supirkit.commands._common import add_config_args, add_io_args, check_model_ref, check_output_folder, finish, load

HELP = ("caption every sample of a shard set with LLaVA: a caption table per shard keyed by sample key (no copy "
        "of the images); output.write=shards rewrites the shards with .txt")
DESCRIPTION = (HELP + ". Photos not in tars (folders, globs, path lists, URLs, as `shard` takes them) go into "
               "new shards with their captions. Input shard i becomes output shard i; rerunning the "
               "same command resumes, redoing only unfinished shards. Defaults follow SUPIR: "
               "llava-hf/llava-1.5-13b-hf, \"Describe this image and its style in a very detailed manner.\", "
               "temperature 0.2, top_p 0.7, up to 512 new tokens.")


def add_arguments(p):
    add_io_args(p, nargs="+", name="shards", metavar="SRC",
                help="shard folder, brace pattern (shard-{000000..000009}.tar), glob or .tar files; or photos: any "
                     "source `supirkit shard` takes")
    p.add_argument("--model", metavar="ID_OR_PATH",
                   help="LLaVA-1.5 / LLaVA-NeXT checkpoint id or local folder (overrides model.name)")
    p.add_argument("--source", choices=["curated", "original"], default=None,
                   help="image to caption: the sample's own (curated training crop) or the original it was cut "
                        "from, named by the sample json's 'source' (overrides image.use; default: curated)")
    add_config_args(p, "caption/default.yaml")


def run(args) -> int:
    from supirkit.captioning.backends import BackendError
    from supirkit.captioning.config import CaptionConfig
    from supirkit.captioning.job import run_caption_job
    from supirkit.cli import UserError

    cfg = load(args, CaptionConfig)
    if args.model or args.source:
        data = cfg.model_dump()
        if args.model:
            data["model"]["name"] = args.model
        if args.source:
            data["image"]["use"] = {"curated": "curated", "original": "source"}[args.source]
        cfg = CaptionConfig.model_validate(data)
    check_output_folder(args.out)
    from supirkit.datapipe.sources import check_protocols

    check_protocols(args.shards)
    check_model_ref("model.name", cfg.model.name)
    try:
        job = run_caption_job(args.shards, args.out, cfg, fresh=args.fresh)
    except FileNotFoundError as exc:
        raise UserError(str(exc).strip("'\"")) from None
    except BackendError as exc:
        raise UserError(str(exc)) from None
    result, report = job.result, job.summary
    for warning in report["warnings"]:
        print(f"caption: warning: {warning}")
    return finish("caption", result, args.out,
                  f"{report['captions']} captions in {result.units} shards under {args.out} ({result.skipped} "
                  f"already done); CLIP tokens mean {report.get('clip_tokens_mean')}, {report['over_limit_share']:.0%} "
                  f"over {report['clip_token_limit']} ({report['clip_tokens_method']})")
