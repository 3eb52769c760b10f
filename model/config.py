"""The SUPIR model config (``configs/model/supir.yaml``): which SDXL, which trunk layout, connector widths.

Training, restoring and ``supirkit describe-model`` all read this one schema. It imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from supirkit.captioning.config import TaggerConfig
from supirkit.datapipe.config import CONFIG_ROOT, ConfigError, Schema, resolve_config_path
from supirkit.datapipe.devices import Device, DType
from supirkit.model.runtime import RuntimeOptions

DEFAULT_CONFIG = "model/supir.yaml"


class TrunkLayoutConfig(Schema):
    """Transformer depths of the control trunk; ``null`` = copy the UNet's own depth.

    The released SUPIR v0 weights use a full copy of SDXL's encoder and middle block ([., 2, 10], middle 10).
    The paper's "trim half of the ViT blocks" matches the commented line in the official yaml
    ([1, 1, 4], middle 4) [I: which blocks are kept is unpublished; we keep ``transformer_blocks[:k]``].
    """

    transformer_depth: Optional[list[int]] = Field(
        None, description="Per level (entry 0 is unused by SDXL: level one has no attention)."
    )
    mid_transformer_depth: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _positive(self):
        if self.transformer_depth is not None and any(d < 1 for d in self.transformer_depth):
            raise ValueError("transformer_depth entries must be >= 1")
        return self


class SDXLConfig(Schema):
    unet_config: str = Field("model/sdxl_unet.json", description="UNet config JSON (path or name under configs/).")
    vae_config: str = Field("model/sdxl_vae.json", description="VAE config JSON (path or name under configs/).")


class TrunkConfig(Schema):
    layout: str = Field("released", description="Key of `layouts` used for training and restoring.")
    layouts: dict[str, TrunkLayoutConfig] = Field(
        default_factory=lambda: {
            "released": TrunkLayoutConfig(),
            "trimmed": TrunkLayoutConfig(transformer_depth=[1, 1, 4], mid_transformer_depth=4),
        }
    )

    @model_validator(mode="after")
    def _layout_known(self):
        if self.layout not in self.layouts:
            raise ValueError(f"layout {self.layout!r} is not one of {sorted(self.layouts)}")
        return self

    def selected(self) -> TrunkLayoutConfig:
        return self.layouts[self.layout]


class ConnectorConfig(Schema):
    sft_hidden_channels: int = Field(128, ge=1, description="ZeroSFT mlp_shared width (official: 128).")
    cross_attn_head_dim: int = Field(64, ge=1, description="ZeroCrossAttn head width (official: 64).")


class SupirModelConfig(Schema):
    sdxl: SDXLConfig = Field(default_factory=SDXLConfig)
    trunk: TrunkConfig = Field(default_factory=TrunkConfig)
    connectors: ConnectorConfig = Field(default_factory=ConnectorConfig)
    control_scale: float = Field(1.0, ge=0.0, le=2.0, description="Connector blend used in training [I: 1].")
    gradient_checkpointing: bool = True


def load_model_config(path=None, overrides=()) -> SupirModelConfig:
    from supirkit.datapipe.config import load_config

    return load_config(SupirModelConfig, path, overrides, default=DEFAULT_CONFIG)


def read_json_config(name: str) -> dict:
    """Read a JSON config shipped under ``configs/`` (or any path); drops ``_``-prefixed keys."""
    path = resolve_config_path(name)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    return {k: v for k, v in data.items() if not k.startswith("_")}


__all__ = [
    "CONFIG_ROOT",
    "DEFAULT_NEGATIVE",
    "DEFAULT_POSITIVE",
    "SupirModelConfig",
    "PromptRuleConfig",
    "RestoreConfig",
    "SamplerConfig",
    "TrunkLayoutConfig",
    "load_model_config",
    "read_json_config",
]


# ---------------------------------------------------------------------------------------------- restore
# Prompt strings are SUPIR's CLI/Gradio defaults (test.py:L34-43), kept verbatim.
DEFAULT_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - realistic "
    "maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, hyper "
    "sharpness, perfect without deformations."
)
DEFAULT_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
    "artifacts, deformed, lowres, over-smooth"
)
CAPTION_INSTRUCTION = "Describe this image and its style in a very detailed manner."


class PromptRuleConfig(Schema):
    """One rule for training and restoring: caption, separator, positive prompt, truncation at 77 tokens."""

    positive: str = DEFAULT_POSITIVE
    negative: str = DEFAULT_NEGATIVE
    separator: str = Field(", ", description="Between caption and positive prompt [I: official uses none].")
    max_tokens: int = Field(77, ge=2, le=77, description="Text encoder context, BOS and EOS included.")
    source: Literal["caption", "tags", "both"] = Field(
        "caption", description="What describes the image before the positive prompt: the caption (SUPIR), the "
                               "tag list (SeeSR), or the caption then the tags.")


class CaptionerConfig(Schema):
    instruction: str = CAPTION_INSTRUCTION
    max_new_tokens: int = Field(512, ge=1, le=4096)
    do_sample: bool = True
    temperature: float = Field(0.2, gt=0.0, le=5.0)
    top_p: float = Field(0.7, gt=0.0, le=1.0)
    image_short_side: int = Field(512, ge=16, description="Short side of the image the captioner reads.")
    input: Literal["official", "stage1"] = Field(
        "official", description="official: the LQ resized to image_short_side, through the DR encoder and the "
                                "decoder (test.py); stage1: the stage-1 image at working size, resized")
    dtype: DType = "auto"


class SamplerConfig(Schema):
    """Official RestoreEDMSampler knobs; defaults are SUPIR's test.py (CLI) values."""

    num_steps: int = Field(50, ge=1, le=1000, description="edm_steps")
    restore_cfg: float = Field(-1.0, ge=-1.0, le=20.0, description="tau_r (s_stage1); <= 0 turns guidance off")
    s_churn: float = Field(5.0, ge=0.0)
    s_noise: float = Field(1.01, ge=0.0)
    s_tmin: float = Field(0.0, ge=0.0)
    s_tmax: Optional[float] = Field(None, ge=0.0, description="null = infinity")
    cfg_scale: float = Field(4.0, ge=0.0, le=30.0, description="s_cfg: CFG as sigma -> 0")
    cfg_scale_start: float = Field(1.0, ge=0.0, le=30.0, description="spt_linear_CFG: CFG at sigma_max")
    linear_cfg: bool = True
    control_scale: float = Field(1.0, ge=0.0, le=2.0, description="s_stage2")
    control_scale_start: float = Field(0.0, ge=0.0, le=2.0, description="spt_linear_s_stage2")
    linear_control_scale: bool = False
    guidance_min_sigma: float = Field(0.05, ge=0.0, description="guidance applies while the next sigma is above")
    guidance_latent: Literal["reencode_sample", "reencode_mode", "dr_latent"] = Field(
        "reencode_sample", description="x_center: official = SDXL encoder sample of the decoded stage-1 image")


class TilingConfig(Schema):
    mode: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: untiled, as the official CLI, unless the device runs out of memory, then "
                            "tiled; always: tiled whenever the latent exceeds one tile; never: untiled")
    tile_size: int = Field(128, ge=8, description="latent pixels (x8 image pixels)")
    tile_stride: int = Field(64, ge=1)
    weights: Literal["official", "centred"] = Field(
        "official", description="blending Gaussian: official (rows centred at n/2, columns at (n-1)/2, "
                                "TiledRestoreEDMSampler) or centred ((n-1)/2 on both axes)")


class RestoreImageConfig(Schema):
    upscale: float = Field(1.0, gt=0.0, le=16.0)
    min_size: int = Field(1024, ge=64, description="short side is raised to this before sampling")
    size_multiple: int = Field(64, ge=8, description="working size rounded to this (official: 64)")
    color_fix: Literal["wavelet", "adain", "none"] = "wavelet"


class MicroConditioningConfig(Schema):
    """SDXL size conditioning; the official pipeline fixes it regardless of the image size."""

    original_size: list[int] = Field(default_factory=lambda: [1024, 1024], min_length=2, max_length=2)
    crop_top_left: list[int] = Field(default_factory=lambda: [0, 0], min_length=2, max_length=2)
    target_size: list[int] = Field(default_factory=lambda: [1024, 1024], min_length=2, max_length=2)

    def time_ids(self) -> list[int]:
        return [*self.original_size, *self.crop_top_left, *self.target_size]


class RuntimeConfig(RuntimeOptions):
    """Device, precision and seed of a restore, plus the attention and memory options (``model/runtime.py``)."""

    device: Device = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: DType = Field(
        "auto", description="UNet + adaptor; auto = float16 on CUDA (official), float32 on CPU")
    vae_dtype: DType = Field(
        "auto", description="auto = bfloat16 on CUDA (official: fp16 gives NaN in the VAE), float32 on CPU")
    seed: int = Field(1234, ge=0)


class RestoreConfig(Schema):
    prompt: PromptRuleConfig = Field(default_factory=PromptRuleConfig)
    captioner: CaptionerConfig = Field(default_factory=CaptionerConfig)
    tagger: TaggerConfig = Field(
        default_factory=TaggerConfig, description="tag prompts (--tagger), on the stage-1 image"
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    image: RestoreImageConfig = Field(default_factory=RestoreImageConfig)
    micro_conditioning: MicroConditioningConfig = Field(default_factory=MicroConditioningConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
