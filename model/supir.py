"""SUPIR over diffusers' SDXL ``UNet2DConditionModel``: frozen UNet + trainable trunk + connectors.

``SUPIRAdaptor`` holds everything SUPIR trains (the control trunk and the 12 ``project_modules``) and is a
diffusers ``ModelMixin``/``ConfigMixin``: it saves as ``config.json`` + ``diffusion_pytorch_model.safetensors``.
``SUPIRModel`` wires it to a frozen SDXL UNet (official ``LightGLVUNet.forward``, ``SUPIR_v0.py:L600-666``):

* the frozen encoder runs under ``no_grad`` (no activations kept), the middle block and decoder run with
  frozen weights but grad-enabled activations, so gradients reach the connectors and the trunk;
* the connector after the middle block (ZeroSFT, no concat), 9 ZeroSFTs in place of the decoder's skip
  concatenations, 2 ZeroCrossAttn after the last attention of the two upsampling decoder levels.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.checkpoint import checkpoint

from supirkit.model.connectors import plan_connectors
from supirkit.model.dr_encoder import DegradationRobustEncoder
from supirkit.model.trunk import ControlTrunk, check_sdxl_like, resolve_depths, sdxl_down_path, sdxl_embedding

log = logging.getLogger(__name__)

DR_ENCODER_SUBFOLDER = "dr_encoder"

# UNet config keys that fix the shapes the adaptor was built for (checked when an adaptor is attached).
_ARCH_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
              "cross_attention_dim", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
              "norm_num_groups", "use_linear_projection")


def _plain(value):
    """JSON-friendly copy of a (Frozen)dict config: tuples -> lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class SUPIRAdaptor(ModelMixin, ConfigMixin):
    """The trainable part of SUPIR: control trunk + connectors (official ``project_modules`` order)."""

    _supports_gradient_checkpointing = True
    #: what diffusers' regional compilation compiles (``compile_repeated_blocks``), as in the SDXL UNet
    _repeated_blocks = ["BasicTransformerBlock"]
    config_name = "config.json"

    @register_to_config
    def __init__(self, unet_config: dict, transformer_depth: list[int] | None = None,
                 mid_transformer_depth: int | None = None, sft_hidden_channels: int = 128,
                 cross_attn_head_dim: int = 64):
        super().__init__()
        cfg = _plain(dict(unet_config))
        check_sdxl_like(cfg)
        self.trunk = ControlTrunk(cfg, transformer_depth, mid_transformer_depth)
        layers = cfg["layers_per_block"]
        if isinstance(layers, list):
            if len(set(layers)) != 1:
                raise ValueError("SUPIR connectors need the same layers_per_block on every level")
            layers = layers[0]
        self.project_modules, self.joins, self.control_channels = plan_connectors(
            cfg["block_out_channels"], layers, sft_hidden_channels, cross_attn_head_dim)

    def parts(self) -> dict[str, nn.Module]:
        return {"trunk": self.trunk, "connectors": self.project_modules}


class SUPIRModel(nn.Module):
    """Frozen SDXL UNet controlled by a SUPIR adaptor; predicts epsilon like the UNet it wraps.

    ``dr_encoder`` (optional, frozen here) is the degradation-robust VAE encoder that makes the LQ latent;
    it is trained on its own (see ``dr_encoder.py``) and travels in the adaptor folder.
    """

    def __init__(self, unet, adaptor: SUPIRAdaptor, dr_encoder=None, control_scale: float = 1.0):
        super().__init__()
        check_compatible(adaptor, unet)
        self.unet = unet
        self.unet.requires_grad_(False)
        self.adaptor = adaptor
        self.dr_encoder = dr_encoder
        if dr_encoder is not None:
            dr_encoder.requires_grad_(False)
        self.control_scale = float(control_scale)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(cls, unet, layout=None, *, sft_hidden_channels: int = 128, cross_attn_head_dim: int = 64,
                  copy_weights: bool = True, dr_encoder=None, control_scale: float = 1.0) -> "SUPIRModel":
        """New adaptor for ``unet``; kept trunk blocks start from the UNet's weights.

        ``layout``: a ``TrunkLayoutConfig``, a dict with ``transformer_depth``/``mid_transformer_depth``, or None
        (full copy = released layout).
        """
        depth, mid = _layout_depths(layout)
        param = next(unet.parameters())
        with torch.device(param.device):
            adaptor = SUPIRAdaptor(unet_config=_plain(dict(unet.config)), transformer_depth=depth,
                                   mid_transformer_depth=mid, sft_hidden_channels=sft_hidden_channels,
                                   cross_attn_head_dim=cross_attn_head_dim)
        if adaptor.dtype != param.dtype:
            adaptor.to(dtype=param.dtype)
        if copy_weights and param.device.type != "meta":
            adaptor.trunk.copy_from_unet(unet)
        return cls(unet, adaptor, dr_encoder=dr_encoder, control_scale=control_scale)

    @classmethod
    def from_adaptor(cls, unet, adaptor_dir, *, control_scale: float = 1.0, load_dr_encoder: bool = True):
        model = cls(unet, move_to(load_adaptor(adaptor_dir), unet.device, unet.dtype), control_scale=control_scale)
        if load_dr_encoder:
            model.dr_encoder = load_dr_encoder_if_present(adaptor_dir)
            if model.dr_encoder is not None:
                model.dr_encoder.requires_grad_(False)
        return model

    def save_adaptor(self, directory) -> Path:
        """Write the adaptor (and the DR encoder, if any) as diffusers-style folders."""
        directory = Path(directory)
        self.adaptor.save_pretrained(directory, safe_serialization=True)
        if self.dr_encoder is not None:
            self.dr_encoder.save_pretrained(directory / DR_ENCODER_SUBFOLDER, safe_serialization=True)
        return directory

    def load_adaptor(self, directory) -> None:
        """Replace this model's adaptor (and DR encoder, when the folder has one) by the saved one."""
        adaptor = load_adaptor(directory)
        check_compatible(adaptor, self.unet)
        param = next(self.unet.parameters())
        self.adaptor = move_to(adaptor, param.device, param.dtype)
        dr = load_dr_encoder_if_present(directory)
        if dr is not None:
            self.dr_encoder = dr.to(device=param.device).requires_grad_(False)

    # ------------------------------------------------------------------ training helpers
    def trainable_parameters(self):
        return [p for p in self.adaptor.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the trunk, the frozen middle block / decoder and the connectors (official default)."""
        self.adaptor.enable_gradient_checkpointing()
        self.unet.enable_gradient_checkpointing()
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.adaptor.disable_gradient_checkpointing()
        self.unet.disable_gradient_checkpointing()
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ forward
    def control_features(self, sample, timestep, lq_latent, encoder_hidden_states, added_cond_kwargs):
        return self.adaptor.trunk(sample, timestep, lq_latent, encoder_hidden_states, added_cond_kwargs)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, lq_latent,
                control_scale: float | torch.Tensor | None = None, control=None) -> torch.Tensor:
        """Epsilon prediction. ``sample`` is the UNet input (noisy latent already scaled by c_in);
        ``lq_latent`` the LQ latent (scaled by the VAE factor, not by c_in)."""
        if control is None:
            control = self.control_features(sample, timestep, lq_latent, encoder_hidden_states, added_cond_kwargs)
        scale = self.control_scale if control_scale is None else control_scale
        return self.controlled_unet(sample, timestep, encoder_hidden_states, added_cond_kwargs, control, scale)

    def _maybe_checkpoint(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def controlled_unet(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, control, control_scale):
        unet = self.unet
        modules = self.adaptor.project_modules
        dtype = control[0].dtype
        sample = sample.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)

        up_factor = 2 ** len([b for b in unet.up_blocks if b.upsamplers is not None])
        forward_upsample_size = any(d % up_factor != 0 for d in sample.shape[-2:])

        with torch.no_grad():  # frozen encoder: nothing below needs its activations
            emb = sdxl_embedding(unet, sample, timestep, added_cond_kwargs)
            h = unet.conv_in(sample)
            h, skips = sdxl_down_path(unet, h, emb, encoder_hidden_states)

        h = unet.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        joins = iter(self.adaptor.joins)
        mid = next(joins)
        h = self._maybe_checkpoint(modules[mid.module], control[mid.control], h, None, control_scale)

        for block in unet.up_blocks:
            attentions = getattr(block, "attentions", None)
            for layer, resnet in enumerate(block.resnets):
                join = next(joins)
                skip = skips.pop()
                h = self._maybe_checkpoint(modules[join.module], control[join.control], skip, h, control_scale)
                h = self._maybe_checkpoint(resnet, h, emb)
                if attentions is not None:
                    h = attentions[layer](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            if block.upsamplers is not None:
                join = next(joins)
                assert join.kind == "xattn"
                h = self._maybe_checkpoint(modules[join.module], control[join.control], h, control_scale)
                upsample_size = skips[-1].shape[2:] if forward_upsample_size else None
                for upsampler in block.upsamplers:
                    h = upsampler(h, upsample_size)

        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)


# ---------------------------------------------------------------------------------------------- helpers
def _layout_depths(layout):
    if layout is None:
        return None, None
    if isinstance(layout, dict):
        return layout.get("transformer_depth"), layout.get("mid_transformer_depth")
    if isinstance(layout, str):
        from supirkit.model.config import TrunkConfig

        layout = TrunkConfig().layouts[layout]
    return layout.transformer_depth, layout.mid_transformer_depth


def move_to(module, device, dtype=None):
    """``module.to`` that passes the dtype only when it changes (diffusers warns on every dtype cast)."""
    current = next(module.parameters()).dtype
    if dtype is None or current == dtype:
        return module.to(device=device)
    return module.to(device=device, dtype=dtype)


def check_compatible(adaptor: SUPIRAdaptor, unet) -> None:
    want = adaptor.config.unet_config
    got = _plain(dict(unet.config))
    bad = [k for k in _ARCH_KEYS if _plain(want.get(k)) != got.get(k)]
    if bad:
        k = bad[0]
        raise ValueError(f"adaptor was built for a different UNet: {k}={want.get(k)!r}, this UNet has {got.get(k)!r}")
    resolve_depths(got, adaptor.config.transformer_depth, adaptor.config.mid_transformer_depth)


def load_adaptor(directory) -> SUPIRAdaptor:
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not an adaptor folder (no config.json)")
    return SUPIRAdaptor.from_pretrained(directory)


def load_dr_encoder_if_present(directory):
    sub = Path(directory) / DR_ENCODER_SUBFOLDER
    if not (sub / "config.json").is_file():
        return None
    return DegradationRobustEncoder.from_pretrained(sub)


def load_dr_encoder(path: str | Path):
    """A DR encoder from an adaptor folder (``dr_encoder/`` inside) or from its own folder, frozen."""
    p = Path(path)
    dr = load_dr_encoder_if_present(p)
    if dr is None:
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no DR encoder (neither {p}/dr_encoder/ nor a config.json)")
        dr = DegradationRobustEncoder.from_pretrained(p)
    return dr.requires_grad_(False)
