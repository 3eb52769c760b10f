"""supirkit degrade"""
from __future__ import annotations

import posixpath

from supirkit.commands._common import add_config_args

HELP = "look at the on-the-fly degradation (Real-ESRGAN second order) of a profile"
DESCRIPTION = (HELP + ". The degradation itself runs in the training data loader (degrade.Degrader); "
               "'preview' renders a contact sheet of LQ variants of one image with their parameters.")

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_MAX_PIXELS = 178_956_970
_MAX_BYTES = 512 * 1024 * 1024  # the pipeline's decode.max_file_bytes default: checked before reading


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
    rgb, name = _read_source(args.source, UserError)
    hq = fit_crop(rgb, degrader.config.hq_size)
    contact_sheet(degrader, hq, n=args.n, seed=args.seed, epoch=args.epoch, key=name, tile=args.tile,
                  path=args.out)
    print(f"degrade preview: {args.n} variants of {name} ({hq.shape[1]}x{hq.shape[0]}) with profile "
          f"{degrader.config.name!r} -> {args.out}")
    return 0


def _decode(data: bytes, what: str, UserError):
    """The shared decoder (pixel limit checked from the header, the conversion rule every stage uses)."""
    from supirkit.datapipe.decode import DecodeError, decode_rgb

    try:
        return decode_rgb(data, _MAX_PIXELS)[0]
    except DecodeError as exc:
        if exc.reason == "too_many_pixels":
            raise UserError(f"{what}: too large to preview ({exc.detail} pixels)") from None
        raise UserError(f"{what}: cannot decode image ({exc})") from None


def _safe_member(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name:
        return False
    return ".." not in posixpath.normpath(name).split("/") and ".." not in name.split("/")


def _read_source(source: str, UserError):
    """(RGB uint8 array, a name) from an image file or the first image sample of a .tar shard."""
    import os
    import tarfile

    if not os.path.isfile(source):
        raise UserError(f"{source}: no such file")
    if source.lower().endswith(".tar"):
        try:
            with tarfile.open(source, "r:") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.lower().endswith(_IMAGE_EXTS):
                        continue
                    if not _safe_member(member.name):
                        raise UserError(f"{source}: refusing member {member.name!r} (absolute path or '..')")
                    if member.size > _MAX_BYTES:
                        raise UserError(f"{source}: member {member.name!r} is larger than {_MAX_BYTES} bytes")
                    f = tar.extractfile(member)
                    data = f.read() if f is not None else b""
                    key = member.name.rsplit(".", 1)[0]
                    return _decode(data, f"{source}:{member.name}", UserError), key
        except tarfile.TarError as exc:
            raise UserError(f"{source}: not a readable tar ({exc})") from None
        raise UserError(f"{source}: no image sample in this shard")
    if os.path.getsize(source) > _MAX_BYTES:
        raise UserError(f"{source}: larger than {_MAX_BYTES} bytes")
    with open(source, "rb") as fh:
        data = fh.read()
    return _decode(data, source, UserError), os.path.splitext(os.path.basename(source))[0]

