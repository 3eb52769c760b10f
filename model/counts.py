"""Parameter counts of the full-size model, built on the meta device from the shipped SDXL configs.

No weights are allocated and nothing is downloaded: ``configs/model/sdxl_unet.json`` and ``sdxl_vae.json``
hold SDXL base 1.0's UNet and VAE configs.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Reference figures from the spec (supir-model-and-training.md section 1.6), used by tests and printed
#: beside the measured counts.
EXPECTED = {
    "unet": 2_567_463_684,
    "trunk/released": 1_243_378_880,
    "trunk/trimmed": 597_763_520,
    "connectors": 54_797_440,
    "dr_encoder": 34_163_592,
}


@dataclass
class PartCount:
    part: str
    parameters: int
    tensors: int
    trainable: bool


def count(module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), len(params)


def build_meta_parts(model_config, layout_name: str):
    """(unet, SUPIRModel, DR encoder) of the full-size model on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from supirkit.model.config import read_json_config
    from supirkit.model.dr_encoder import DegradationRobustEncoder
    from supirkit.model.supir import SUPIRModel

    unet_cfg = read_json_config(model_config.sdxl.unet_config)
    vae_cfg = read_json_config(model_config.sdxl.vae_config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
    dr = DegradationRobustEncoder.from_vae(vae)
    layout = model_config.trunk.layouts[layout_name]
    model = SUPIRModel.from_unet(unet, layout, sft_hidden_channels=model_config.connectors.sft_hidden_channels,
                                 cross_attn_head_dim=model_config.connectors.cross_attn_head_dim, dr_encoder=dr)
    return unet, model, vae


def describe(model_config, layout_name: str) -> list[PartCount]:
    unet, model, vae = build_meta_parts(model_config, layout_name)
    rows = []
    for part, module, trainable in (
        ("sdxl_unet (frozen)", unet, False),
        ("sdxl_vae (frozen)", vae, False),
        ("trunk", model.adaptor.trunk, True),
        ("connectors", model.adaptor.project_modules, True),
        ("dr_encoder (own stage)", model.dr_encoder, False),
    ):
        n, t = count(module)
        rows.append(PartCount(part, n, t, trainable))
    return rows


def format_table(layout_name: str, rows: list[PartCount]) -> str:
    lines = [f"layout: {layout_name}", "| part | parameters | tensors | trained in adaptor stage |",
             "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.parameters:,} | {r.tensors} | {'yes' if r.trainable else 'no'} |")
    trainable = sum(r.parameters for r in rows if r.trainable)
    frozen = sum(r.parameters for r in rows if not r.trainable)
    lines.append(f"| **trainable (trunk + connectors)** | **{trainable:,}** | | |")
    lines.append(f"| frozen or trained separately | {frozen:,} | | |")
    return "\n".join(lines)
