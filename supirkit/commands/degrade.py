"""supirkit degrade"""
from __future__ import annotations

from supirkit.commands._common import add_config_args

HELP = "look at the on-the-fly degradation (Real-ESRGAN second order) of a profile"
DESCRIPTION = (HELP + ". The degradation itself runs in the training data loader (degrade.Degrader); "
               "'preview' renders a contact sheet of LQ variants of one image with their parameters.")



def decode_guards():
    """The decode guards of the preview: the pipeline's ``decode`` defaults (checked before reading)."""
    from supirkit.datapipe.config import DecodeConfig

    return DecodeConfig()


def add_arguments(p):
    sub = p.add_subparsers(dest="degrade_command", metavar="ACTION")
    pv = sub.add_parser("preview", help="contact sheet of N LQ variants of one image (PNG)",
                        description="Degrade one image N times with a profile and write a contact sheet: the "
                                    "target first, then each LQ with its key parameters written under it. "
                                    "An image larger than the profile's crop is centre-cropped; for a .tar "
                                    "shard the first image sample is used.")
    pv.add_argument("source", metavar="IMAGE_OR_SHARD", help="an image file or a WebDataset .tar shard")
    pv.add_argument("--out", required=True, metavar="PNG", help="where to write the contact sheet")
    pv.add_argument("--n", type=int, default=8, help="number of LQ variants (default 8)")
    pv.add_argument("--seed", type=int, default=0, help="degradation seed (default 0)")
    pv.add_argument("--epoch", type=int, default=0, help="epoch the draws are made for (default 0)")
    pv.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    add_config_args(pv, "degrade/supir.yaml", example="hq_size=256")


def run(args) -> int:
    from supirkit.cli import UserError

    if getattr(args, "degrade_command", None) != "preview":
        raise UserError("choose an action: supirkit degrade preview IMAGE_OR_SHARD --out grid.png")
    if args.n < 1 or args.n > 256:
        raise UserError(f"--n must be between 1 and 256, got {args.n}")
    if args.tile < 32 or args.tile > 2048:
        raise UserError(f"--tile must be between 32 and 2048, got {args.tile}")
    from supirkit.commands._common import check_output_file, load
    from supirkit.degrade import DegradeConfig, Degrader
    from supirkit.inspection.degrade_views import contact_sheet, fit_crop

    check_output_file(args.out, "--out")
    degrader = Degrader(load(args, DegradeConfig))
    rgb, name = _read_source(args.source, UserError, decode_guards())
    hq = fit_crop(rgb, degrader.config.hq_size)
    contact_sheet(degrader, hq, n=args.n, seed=args.seed, epoch=args.epoch, key=name, tile=args.tile,
                  path=args.out)
    print(f"degrade preview: {args.n} variants of {name} ({hq.shape[1]}x{hq.shape[0]}) with profile "
          f"{degrader.config.name!r} -> {args.out}")
    return 0


def _decode(data: bytes, what: str, UserError, guards):
    """The shared decoder (pixel limit checked from the header, the conversion rule every stage uses)."""
    from supirkit.datapipe.decode import decode_rgb
    from supirkit.datapipe.errors import DecodeError

    try:
        return decode_rgb(data, guards.max_pixels)[0]
    except DecodeError as exc:
        if exc.reason == "too_many_pixels":
            raise UserError(f"{what}: too large to preview ({exc.detail} pixels)") from None
        raise UserError(f"{what}: cannot decode image ({exc})") from None


def _first_image_sample(source: str, UserError, guards):
    """(image bytes, key) of the first image sample of a shard, through the shared reader (unsafe names
    refused, sizes checked from the headers)."""
    from supirkit.datapipe.errors import CORRUPT_INPUT_ERRORS
    from supirkit.datapipe.tario import image_too_large, read_shard, sample_image

    def unsafe(name: str) -> None:
        raise UserError(f"{source}: refusing member {name!r} (absolute path or '..')")

    try:
        for sample in read_shard(source, on_unsafe=unsafe, max_member_bytes=guards.max_file_bytes):
            ext, data = sample_image(sample)
            if data is None and image_too_large(sample):
                raise UserError(f"{source}: member {sample['__key__']} is larger than {guards.max_file_bytes} bytes")
            if data is not None:
                return data, sample["__key__"]
    except CORRUPT_INPUT_ERRORS as exc:
        raise UserError(f"{source}: not a readable tar ({exc})") from None
    raise UserError(f"{source}: no image sample in this shard")


def _read_source(source: str, UserError, guards):
    """(RGB uint8 array, a name) from an image file or the first image sample of a .tar shard."""
    import os

    from supirkit.datapipe.errors import FileTooLarge
    from supirkit.datapipe.sources import read_bytes

    if not os.path.isfile(source):
        raise UserError(f"{source}: no such file")
    if source.lower().endswith(".tar"):
        data, key = _first_image_sample(source, UserError, guards)
        return _decode(data, f"{source}#{key}", UserError, guards), key
    try:
        data = read_bytes(source, max_bytes=guards.max_file_bytes)
    except FileTooLarge:
        raise UserError(f"{source}: larger than {guards.max_file_bytes} bytes") from None
    return _decode(data, source, UserError, guards), os.path.splitext(os.path.basename(source))[0]
