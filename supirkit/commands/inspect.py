"""supirkit inspect"""
from __future__ import annotations

from supirkit.commands._common import add_config_args

HELP = "summarize a shard, a shard set or a manifest; show samples, a contact sheet or an HTML page"
DESCRIPTION = (HELP + ". PATH is a .tar, a folder of shards (supirkit, img2dataset or any WebDataset), a brace "
               "pattern such as 'out/shard-{000000..000009}.tar', or a manifest (.parquet file or folder).")


def add_arguments(p):
    p.add_argument("path", metavar="PATH", help="shard, shard folder, brace pattern, glob, or manifest parquet")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N samples' metadata and captions")
    p.add_argument("--grid", metavar="PNG", help="write a contact sheet: image, key, caption start, scores")
    p.add_argument("--html", metavar="HTML", help="write a self-contained page to browse samples")
    p.add_argument("--n", type=int, default=None, metavar="N",
                   help="samples in --grid/--html (default: samples.n of the config)")
    p.add_argument("--seed", type=int, default=None,
                   help="choose samples at random (reproducibly) instead of the first ones")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    p.add_argument("--no-summary", action="store_true", help="skip the summary (it reads every shard's index)")
    p.add_argument("--degrade", metavar="CONFIG", nargs="?", const="", default=None,
                   help="in --grid/--html show HQ/LQ pairs instead of the image alone: with CONFIG, the training "
                        "pair this degradation profile (e.g. degrade/supir.yaml) makes from each sample; alone, "
                        "the pairs a test set holds (supirkit testset)")
    add_config_args(p, "inspect/default.yaml", example="grid.thumb=192")


#: ``--degrade`` without a profile: show the pairs stored in the samples (test sets)
STORED_PAIRS = object()


def degrade_pair_fn(config: str):
    """``make_pair(rgb, key) -> (target, lq)`` for ``--degrade CONFIG``: the profile's HQ crop (centre
    crop of the decoded image, enlarged first when smaller, as ``supirkit degrade preview`` does) and its
    degradation drawn for (seed 0, epoch 0, the sample's key), so a page shows what training would draw
    for that sample in epoch 0. ``datapipe.inspection.make_pair_tiles`` takes any such function; datapipe
    itself never imports degrade."""
    from supirkit.degrade import Degrader

    degrader = Degrader.from_config(config)
    side = degrader.config.hq_size

    def make_pair(rgb, key):
        target, lq, _ = degrader(_centre_crop(rgb, side), seed=0, epoch=0, key=key)
        return target, lq

    return make_pair


def _centre_crop(rgb, side):
    """A side x side centre crop; an image with a shorter side below ``side`` is enlarged (bicubic) first."""
    if side is None:
        return rgb
    import numpy as np
    from PIL import Image

    h, w = rgb.shape[:2]
    if min(h, w) < side:
        scale = side / min(h, w)
        rgb = np.asarray(Image.fromarray(rgb).resize((max(side, round(w * scale)), max(side, round(h * scale))),
                                                    Image.Resampling.BICUBIC))
        h, w = rgb.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(rgb[y:y + side, x:x + side])


def run(args) -> int:
    import sys

    from supirkit.cli import UserError
    from supirkit.commands._common import check_output_file, load
    from supirkit.datapipe.config import ConfigError
    from supirkit.inspection import InspectConfig, open_collection

    cfg = load(args, InspectConfig)
    if args.show < 0 or (args.n is not None and args.n < 1):
        raise UserError("--show must be >= 0 and --n >= 1")
    make_pair = None
    if args.degrade is not None:  # before any reading: a bad profile fails at once
        if not (args.grid or args.html):
            raise UserError("--degrade shows pairs in --grid or --html; give one of them")
        try:
            make_pair = degrade_pair_fn(args.degrade) if args.degrade else STORED_PAIRS
        except ConfigError as exc:
            raise UserError(f"--degrade: {exc}") from None
    check_output_file(args.grid, "--grid")
    check_output_file(args.html, "--html")
    try:
        coll = open_collection(args.path)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    unreadable: list[dict] = []
    code = _show(args, cfg, coll, make_pair, unreadable)
    if (coll.urls and {bad["shard"] for bad in unreadable} >= set(coll.urls)
            and not any(bad["read"] for bad in unreadable)):  # nothing could be read at all: not a shard
        first = unreadable[0]
        what = "not a readable tar shard" if len(coll.urls) == 1 else f"none of its {len(coll.urls)} shards is readable"
        raise UserError(f"{args.path}: {what} ({first['shard']}: {first['error']})")
    seen = set()
    for bad in unreadable:  # each damaged shard once, by name; the rest was reported above
        if bad["shard"] not in seen:
            seen.add(bad["shard"])
            print(f"inspect: unreadable shard {bad['shard']}: {bad['error']}", file=sys.stderr)
    if seen:
        print(f"inspect: {len(seen)} of {len(coll.urls)} shard(s) could not be read whole; the others are "
              "reported above", file=sys.stderr)
        return 1
    return code


def _show(args, cfg, coll, make_pair, unreadable: list) -> int:
    import json

    from supirkit.inspection import (
        format_sample,
        format_summary,
        iter_samples,
        make_pair_tiles,
        make_tiles,
        summarize,
        write_grid,
        write_html,
    )
    from supirkit.inspection.degrade_views import make_stored_pair_tiles

    summary_text = ""
    if not args.no_summary:
        summary = summarize(coll, cfg.summary.reservoir, cfg.summary.max_distinct)
        unreadable.extend(summary.get("unreadable", []))
        summary_text = format_summary(summary)
        print(json.dumps(summary, indent=1, default=str) if args.json else summary_text)
    seed = args.seed if args.seed is not None else cfg.samples.seed
    limits = dict(max_file_bytes=cfg.decode.max_file_bytes, unreadable=unreadable)
    if args.show:
        for sample in iter_samples(coll, args.show, seed, **limits):
            print()
            print(format_sample(sample))
    n = args.n or cfg.samples.n

    def tiles_for(thumb: int):
        samples = iter_samples(coll, n, seed, **limits)
        if make_pair is STORED_PAIRS:
            return make_stored_pair_tiles(samples, thumb, cfg.decode.max_pixels)
        if make_pair is not None:
            return make_pair_tiles(samples, thumb, make_pair, cfg.decode.max_pixels)
        return make_tiles(samples, thumb, cfg.decode.max_pixels)

    if args.grid:
        tiles = tiles_for(cfg.grid.thumb)
        path = write_grid(tiles, args.grid, cfg.grid.thumb, cfg.grid.columns, cfg.grid.caption_lines,
                          cfg.grid.scores or None)
        print(f"inspect: contact sheet of {len(tiles)} samples -> {path}")
    if args.html:
        tiles = tiles_for(cfg.html.thumb)
        path = write_html(tiles, args.html, f"supirkit inspect: {args.path}", summary_text, cfg.grid.scores or None)
        print(f"inspect: page with {len(tiles)} samples -> {path}")
    return 0
