"""Degradation-robust (DR) VAE encoder: a trainable copy of the SDXL VAE encoder.

Official use (``SUPIR_model.py:L48-62,L117``): ``z_LQ = scaling * mode(quant_conv(E_dr(x_LQ)))``, reusing the
frozen VAE's ``quant_conv`` (so it is not part of this module: 106 tensors, 34,163,592 parameters at SDXL size).

Training loss. The paper writes ``L_E = ||D(E_dr(x_LQ)) - D(E_dr(x_GT))||^2`` with the decoder D fixed.
Taken literally both branches go through the trainable encoder, which can collapse (mapping everything to
one latent satisfies it). [I] Our default target is the clean reconstruction by the *frozen original*
encoder, ``D(E(x_GT))`` (the spec's option a): the DR encoder learns to map a degraded image to the latent
the SDXL encoder gives the clean one, and the decoder's output space stays the one SDXL was trained on.
``target="pixels"`` (option b, ``x_GT`` itself) and ``target="literal_stopgrad"`` (option c, the paper's
formula with a stop-gradient on the GT branch) are available for ablations. Latents: posterior mode, as at
inference [I: the paper does not say].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config


class DegradationRobustEncoder(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 4,
                 down_block_types: tuple = ("DownEncoderBlock2D",) * 4,
                 block_out_channels: tuple = (128, 256, 512, 512), layers_per_block: int = 2,
                 norm_num_groups: int = 32, act_fn: str = "silu", mid_block_add_attention: bool = True):
        super().__init__()
        from diffusers.models.autoencoders.vae import Encoder

        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=tuple(down_block_types), block_out_channels=tuple(block_out_channels),
                               layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
                               double_z=True, mid_block_add_attention=mid_block_add_attention)

    @classmethod
    def config_from_vae(cls, vae_config) -> dict:
        c = dict(vae_config)
        return dict(in_channels=c.get("in_channels", 3), latent_channels=c.get("latent_channels", 4),
                    down_block_types=tuple(c["down_block_types"]), block_out_channels=tuple(c["block_out_channels"]),
                    layers_per_block=c.get("layers_per_block", 2), norm_num_groups=c.get("norm_num_groups", 32),
                    act_fn=c.get("act_fn", "silu"), mid_block_add_attention=c.get("mid_block_add_attention", True))

    @classmethod
    def from_vae(cls, vae) -> "DegradationRobustEncoder":
        """A copy of ``vae.encoder`` (the paper initialises E_dr from the SDXL encoder)."""
        param = next(vae.parameters())
        with torch.device(param.device):
            dr = cls(**cls.config_from_vae(vae.config))
        if param.device.type != "meta":
            dr.encoder.load_state_dict(vae.encoder.state_dict())
        # Cast only when needed: diffusers warns on every dtype cast of a ModelMixin.
        return dr if dr.dtype == param.dtype else dr.to(dtype=param.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder moments before ``quant_conv`` (images in [-1, 1])."""
        return self.encoder(images)

    def latent(self, images: torch.Tensor, vae) -> torch.Tensor:
        """``scaling * mode(quant_conv(E_dr(x)))``: the LQ latent fed to the trunk."""
        return moments_to_mode(self(images.to(self.dtype)), vae) * vae.config.scaling_factor


def moments_to_mode(moments: torch.Tensor, vae) -> torch.Tensor:
    if getattr(vae, "quant_conv", None) is not None:
        moments = vae.quant_conv(moments.to(vae.dtype))
    mean, _ = torch.chunk(moments, 2, dim=1)
    return mean


def dr_encoder_loss(dr: DegradationRobustEncoder, vae, lq: torch.Tensor, gt: torch.Tensor,
                    target: str = "clean_reconstruction") -> torch.Tensor:
    """Mean squared error in pixel space through the frozen decoder (see module docstring for targets)."""

    def decode(latent):  # latent in VAE units (not scaled)
        if getattr(vae, "post_quant_conv", None) is not None:
            latent = vae.post_quant_conv(latent)
        return vae.decoder(latent)

    pred = decode(moments_to_mode(dr(lq.to(dr.dtype)), vae))
    with torch.no_grad():
        if target == "clean_reconstruction":
            ref = decode(moments_to_mode(vae.encoder(gt.to(vae.dtype)), vae))
        elif target == "pixels":
            ref = gt
        elif target == "literal_stopgrad":
            ref = decode(moments_to_mode(dr(gt.to(dr.dtype)), vae))
        else:
            raise ValueError(f"unknown DR-encoder loss target {target!r}")
    return F.mse_loss(pred.float(), ref.float())
