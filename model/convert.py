"""Convert the official SUPIR-v0Q / v0F checkpoints to this model's adaptor folder.

Official key prefixes (PyTorch Lightning checkpoint, ``state_dict``), spec section 1.9:

* ``model.control_model.*``  GLVControl trunk, sgm UNet naming (810 tensors + an orphan ``mask_LQ``)
  -> ``trunk.*`` (diffusers naming)
* ``model.diffusion_model.project_modules.{0..11}.*``  connectors (118 tensors) -> ``project_modules.*``
  (same order and inner names: our ZeroSFT / ZeroCrossAttn mirror the official attribute names)
* ``first_stage_model.denoise_encoder.*``  DR encoder, sgm VAE-encoder naming (106 tensors)
  -> ``dr_encoder.encoder.*`` (diffusers ``Encoder`` naming; 1x1-conv attention weights become Linear)

Everything else (SDXL weights in merged checkpoints, EMA bookkeeping, the unused ``mask_LQ``) is skipped.
``python -m supirkit.model.convert CKPT OUT_DIR [--layout NAME]`` writes an adaptor folder that ``supirkit restore``
loads; the trunk layout is read from the checkpoint (``auto``: released or trimmed, or any layout of the model
config) unless ``--layout`` names one.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TRUNK_PREFIX = "model.control_model."
CONNECTOR_PREFIX = "model.diffusion_model.project_modules."
ENCODER_PREFIX = "first_stage_model.denoise_encoder."
IGNORED_TRUNK_KEYS = {"mask_LQ"}  # present in the released checkpoints, read by no code

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _resnet(rest: str, table: dict) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    raise KeyError(rest)


def trunk_key(key: str, layers_per_block: int = 2) -> str:
    """sgm GLVControl name -> ControlTrunk name."""
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
             "input_hint_block.0.": "hint_conv.", "input_blocks.0.0.": "conv_in."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)$", key)
    if m:
        n, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, j = divmod(n - 1, layers_per_block + 1)
        if j == layers_per_block:  # Downsample
            if part != 0 or not rest.startswith("op."):
                raise KeyError(key)
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if part == 0:
            return f"down_blocks.{level}.resnets.{j}.{_resnet(rest, _RESNET)}"
        if part == 1:
            return f"down_blocks.{level}.attentions.{j}.{rest}"
        raise KeyError(key)
    m = re.match(r"middle_block\.(\d)\.(.+)$", key)
    if m:
        part, rest = int(m.group(1)), m.group(2)
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{part // 2}.{_resnet(rest, _RESNET)}"
    raise KeyError(key)


def encoder_key(key: str) -> str:
    """sgm VAE Encoder name -> diffusers Encoder name."""
    for old, new in {"conv_in.": "conv_in.", "norm_out.": "conv_norm_out.", "conv_out.": "conv_out."}.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"down\.(\d+)\.block\.(\d+)\.(.+)$", key)
    if m:
        return f"down_blocks.{m.group(1)}.resnets.{m.group(2)}.{_resnet(m.group(3), _VAE_RESNET)}"
    m = re.match(r"down\.(\d+)\.downsample\.conv\.(.+)$", key)
    if m:
        return f"down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    m = re.match(r"mid\.block_(\d)\.(.+)$", key)
    if m:
        return f"mid_block.resnets.{int(m.group(1)) - 1}.{_resnet(m.group(2), _VAE_RESNET)}"
    m = re.match(r"mid\.attn_1\.(\w+)\.(.+)$", key)
    if m and m.group(1) in _VAE_ATTN:
        return f"mid_block.attentions.0.{_VAE_ATTN[m.group(1)]}.{m.group(2)}"
    raise KeyError(key)


def unwrap(checkpoint: dict) -> dict:
    """Lightning checkpoints keep the weights under ``state_dict``."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        return checkpoint["state_dict"]
    return checkpoint


def convert_official_checkpoint(state_dict: dict, layers_per_block: int = 2) -> dict:
    """Official SUPIR state dict -> {``trunk.*``, ``project_modules.*``, ``dr_encoder.encoder.*``}.

    Raises ``ValueError`` naming the first key under a SUPIR prefix that has no counterpart.
    """
    out = {}
    unknown = []
    for key, tensor in unwrap(state_dict).items():
        try:
            if key.startswith(TRUNK_PREFIX):
                rest = key[len(TRUNK_PREFIX):]
                if rest in IGNORED_TRUNK_KEYS:
                    continue
                out["trunk." + trunk_key(rest, layers_per_block)] = tensor
            elif key.startswith(CONNECTOR_PREFIX):
                out["project_modules." + key[len(CONNECTOR_PREFIX):]] = tensor
            elif key.startswith(ENCODER_PREFIX):
                new = encoder_key(key[len(ENCODER_PREFIX):])
                if ".attentions.0.to_" in new and new.endswith(".weight") and tensor.ndim == 4:
                    tensor = tensor[:, :, 0, 0]  # 1x1 conv -> Linear
                out["dr_encoder.encoder." + new] = tensor
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} SUPIR key(s) have no counterpart in this model, e.g. {unknown[0]!r}")
    return out


def checkpoint_depths(state_dict: dict, layers_per_block: int = 2) -> tuple[dict[int, int], int | None]:
    """Transformer depths of an official checkpoint's control trunk: ({level: depth}, middle depth), read from
    its ``transformer_blocks.K`` keys (released checkpoints: a full copy of SDXL's encoder; trimmed ones:
    fewer blocks)."""
    per_level: dict[int, int] = {}
    mid = None
    for key in unwrap(state_dict):
        m = re.match(rf"{re.escape(TRUNK_PREFIX)}input_blocks\.(\d+)\.1\.transformer_blocks\.(\d+)\.", key)
        if m:
            level = (int(m.group(1)) - 1) // (layers_per_block + 1)
            per_level[level] = max(per_level.get(level, 0), int(m.group(2)) + 1)
        m = re.match(rf"{re.escape(TRUNK_PREFIX)}middle_block\.1\.transformer_blocks\.(\d+)\.", key)
        if m:
            mid = max(mid or 0, int(m.group(1)) + 1)
    return per_level, mid


def layout_depths(layout, unet_config: dict) -> tuple[list[int], int]:
    """A trunk layout's depths per level and in the middle, ``null`` entries resolved to the UNet's own."""
    unet_depth = unet_config["transformer_layers_per_block"]
    levels = len(unet_config["block_out_channels"])
    unet_depth = [unet_depth] * levels if isinstance(unet_depth, int) else list(unet_depth)
    depth = list(layout.transformer_depth) if layout.transformer_depth is not None else unet_depth
    mid = layout.mid_transformer_depth if layout.mid_transformer_depth is not None else unet_depth[-1]
    return depth, mid


def match_layout(state_dict: dict, unet_config: dict, layouts: dict) -> str:
    """The name of the config layout whose depths are the checkpoint's (``--layout auto``)."""
    layers = unet_config["layers_per_block"]
    per_level, mid = checkpoint_depths(state_dict, layers if isinstance(layers, int) else layers[0])
    for name, layout in layouts.items():
        depth, lmid = layout_depths(layout, unet_config)
        if all(level < len(depth) and depth[level] == d for level, d in per_level.items()) and mid in (None, lmid):
            return name
    found = ", ".join(f"level {k}: {v}" for k, v in sorted(per_level.items()))
    raise ValueError(f"the checkpoint's trunk depths ({found}; middle {mid}) match no layout of the model config "
                     f"({', '.join(layouts)}); add one under trunk.layouts and pass --layout NAME")


def split_converted(converted: dict) -> tuple[dict, dict]:
    """(adaptor state dict, DR-encoder state dict)."""
    adaptor = {k: v for k, v in converted.items() if not k.startswith("dr_encoder.")}
    dr = {k[len("dr_encoder."):]: v for k, v in converted.items() if k.startswith("dr_encoder.")}
    return adaptor, dr


def load_checkpoint_file(path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # weights_only refuses pickled objects
        raise ValueError(f"{path}: cannot be read with weights_only=True ({type(exc).__name__}); "
                         "re-save its state_dict as .safetensors first") from None


def write_adaptor_folder(state_dict: dict, out_dir, unet_config: dict, vae_config: dict, layout=None,
                         sft_hidden_channels: int = 128, cross_attn_head_dim: int = 64) -> Path:
    """Build the adaptor (and DR encoder) on the meta device, assign the converted tensors, save."""
    import torch

    from supirkit.model.dr_encoder import DegradationRobustEncoder
    from supirkit.model.supir import DR_ENCODER_SUBFOLDER, SUPIRAdaptor, _layout_depths

    layers = unet_config["layers_per_block"]
    converted = convert_official_checkpoint(state_dict, layers if isinstance(layers, int) else layers[0])
    adaptor_sd, dr_sd = split_converted(converted)
    depth, mid = _layout_depths(layout)
    with torch.device("meta"):
        adaptor = SUPIRAdaptor(unet_config=unet_config, transformer_depth=depth, mid_transformer_depth=mid,
                               sft_hidden_channels=sft_hidden_channels, cross_attn_head_dim=cross_attn_head_dim)
    adaptor.load_state_dict(adaptor_sd, strict=True, assign=True)
    out = Path(out_dir)
    adaptor.save_pretrained(out, safe_serialization=True)
    if dr_sd:
        with torch.device("meta"):
            dr = DegradationRobustEncoder(**DegradationRobustEncoder.config_from_vae(vae_config))
        dr.load_state_dict(dr_sd, strict=True, assign=True)
        dr.save_pretrained(out / DR_ENCODER_SUBFOLDER, safe_serialization=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m supirkit.model.convert",
                                description="Convert an official SUPIR-v0Q/v0F checkpoint to an adaptor folder.")
    p.add_argument("checkpoint", help=".ckpt (read with weights_only=True) or .safetensors")
    p.add_argument("out", help="adaptor folder to write")
    p.add_argument("--config", default=None, help="model config (default: configs/model/supir.yaml)")
    p.add_argument("--unet-config", default=None, help="UNet config JSON (default: the model config's)")
    p.add_argument("--layout", default="auto", metavar="NAME",
                   help="trunk layout of the checkpoint, a key of the model config's trunk.layouts (released: the "
                        "published v0Q/v0F; trimmed: half the transformer blocks); auto (default): read from the "
                        "checkpoint's keys")
    args = p.parse_args(argv)
    from supirkit.datapipe.config import ConfigError
    from supirkit.model.config import load_model_config, read_json_config

    try:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint file")
        cfg = load_model_config(args.config)
        unet_cfg = read_json_config(args.unet_config or cfg.sdxl.unet_config)
        vae_cfg = read_json_config(cfg.sdxl.vae_config)
        if args.layout != "auto" and args.layout not in cfg.trunk.layouts:
            raise ValueError(f"--layout {args.layout}: not a layout of the model config "
                             f"({', '.join(cfg.trunk.layouts)})")
        sd = load_checkpoint_file(args.checkpoint)
        name = match_layout(sd, unet_cfg, cfg.trunk.layouts) if args.layout == "auto" else args.layout
        out = write_adaptor_folder(sd, args.out, unet_cfg, vae_cfg, layout=cfg.trunk.layouts[name],
                                   sft_hidden_channels=cfg.connectors.sft_hidden_channels,
                                   cross_attn_head_dim=cfg.connectors.cross_attn_head_dim)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: shape mismatch on load
        print(f"convert: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
