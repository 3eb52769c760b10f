"""supirkit restore"""
from __future__ import annotations

from supirkit.commands._common import add_config_args

HELP = "restore images with SDXL and a trained SUPIR adaptor (optionally captioned by LLaVA)"
DESCRIPTION = (HELP + ". Each IMAGE becomes OUT/<stem>.png plus OUT/<stem>.json (caption, prompt, settings). "
               "Without --prompt or --captioner the caption is empty and only the positive quality prompt is used. "
               "Sampling is set in the config (configs/restore/default.yaml; --set KEY=VALUE): steps, restoration "
               "guidance (sampler.restore_cfg), the linear CFG and control-scale schedules "
               "(sampler.cfg_scale_start/cfg_scale, control_scale_start/control_scale), tiled sampling "
               "(tiling.tile_size/tile_stride, latent units), the colour fix (image.color_fix) and the positive and "
               "negative prompts (prompt.positive/negative). The released SUPIR-v0Q/v0F weights become an adaptor "
               "folder with: python -m supirkit.model.convert SUPIR-v0Q.ckpt ADAPTOR_DIR")


def add_arguments(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to restore")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--sdxl", required=True, metavar="ID_OR_PATH", help="SDXL base pipeline (hub id or folder)")
    p.add_argument("--adaptor", required=True, metavar="DIR", help="SUPIR adaptor folder (config.json + weights)")
    p.add_argument("--captioner", metavar="ID_OR_PATH", help="LLaVA-1.5 checkpoint to caption each image")
    p.add_argument("--prompt", metavar="TEXT", help="use TEXT as the caption (the positive prompt is appended)")
    p.add_argument(
        "--tagger",
        metavar="ID_OR_PATH",
        help="tag each image (SeeSR-style tag prompts): an open_clip model "
        "with --set tagger.vocabulary=FILE, or a transformers "
        "classifier with --set tagger.backend=classifier",
    )
    p.add_argument("--tags", metavar="LIST", help="comma-separated tags to use instead of a tagger")
    p.add_argument("--prompt-source", choices=("caption", "tags", "both"),
                   help="what describes the image: the caption, the tags or both (shortcut for --set prompt.source=)")
    p.add_argument("--upscale", type=float, metavar="X", help="shortcut for --set image.upscale=X")
    p.add_argument("--seed", type=int, help="shortcut for --set runtime.seed=N")
    add_config_args(p, "restore/default.yaml", example="sampler.num_steps=30")


def run(args) -> int:
    from pathlib import Path

    from supirkit.cli import UserError
    from supirkit.commands._common import check_model_ref, check_output_folder, load
    from supirkit.model.config import RestoreConfig

    if args.upscale is not None:
        args.overrides.append(f"image.upscale={args.upscale}")
    if args.seed is not None:
        args.overrides.append(f"runtime.seed={args.seed}")
    if args.tagger:
        args.overrides.append(f"tagger.model={args.tagger}")
    if args.prompt_source:
        args.overrides.append(f"prompt.source={args.prompt_source}")
    cfg = load(args, RestoreConfig)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags is not None else None
    if cfg.prompt.source != "caption" and tags is None and not cfg.tagger.model:
        raise UserError(f"prompt.source is {cfg.prompt.source}: give --tags or --tagger")
    if tags is not None and args.tagger:
        raise UserError("give --tags or --tagger, not both")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such image file")
    if not (Path(args.adaptor) / "config.json").is_file():
        raise UserError(f"{args.adaptor}: not an adaptor folder (no config.json)")
    if args.prompt is not None and args.captioner:
        raise UserError("give --prompt or --captioner, not both")
    check_output_folder(args.out)
    check_model_ref("--sdxl", args.sdxl, "model_index.json")
    if args.captioner:
        check_model_ref("--captioner", args.captioner)
    if cfg.tagger.model and cfg.prompt.source != "caption":
        from supirkit.captioning.backends import BackendError
        from supirkit.captioning.tags import check_tagger

        try:
            check_tagger(cfg.tagger)
        except BackendError as exc:
            raise UserError(str(exc)) from None
    from supirkit.model.restore import restore_images

    try:
        written = restore_images(args.images, args.out, args.sdxl, args.adaptor, cfg, captioner=args.captioner,
                                 prompt=args.prompt, tags=tags)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    for path in written:
        print(path)
    return 0
