"""SUPIR's control trunk (official ``GLVControl``) built from diffusers blocks.

A trainable copy of the SDXL UNet's encoder and middle block with its own time and text-time embeddings.
The LQ latent enters through one zero-initialised 3x3 convolution whose output is added right after
``conv_in`` (official ``input_hint_block``); the noisy latent goes through the copied ``conv_in``. The trunk
returns the raw feature maps (no output convolutions): the ``conv_in`` output, every down-block resnet /
attention output and downsampler output (the same order as diffusers' ``down_block_res_samples``), then the
middle-block output. For SDXL that is 10 maps: 320@1 x3, 320@1/2, 640@1/2 x2, 640@1/4, 1280@1/4 x3.

Transformer depths can be smaller than the UNet's (the paper's trimmed trunk); kept transformer blocks are
``transformer_blocks[:k]`` of the UNet's [I: the paper does not say which half is kept].
"""
from __future__ import annotations

import torch
from torch import nn

# SDXL-family options the trunk reproduces; anything else in a UNet config is refused, not silently ignored.
_REQUIRED = {
    "addition_embed_type": "text_time",
    "time_embedding_type": "positional",
    "class_embed_type": None,
    "encoder_hid_dim_type": None,
    "time_embedding_act_fn": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_class_embeds": None,
    "time_cond_proj_dim": None,
}


def _as_list(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def check_sdxl_like(config: dict) -> None:
    for key, want in _REQUIRED.items():
        got = config.get(key, want)
        if got != want:
            raise ValueError(f"SUPIR needs an SDXL-style UNet: config {key}={got!r}, expected {want!r}")


def resolve_depths(unet_config: dict, transformer_depth=None, mid_transformer_depth=None) -> tuple[list[int], int]:
    """Per-level and middle transformer depths of the trunk; ``None`` copies the UNet's."""
    levels = len(unet_config["block_out_channels"])
    unet_depth = _as_list(unet_config.get("transformer_layers_per_block", 1), levels)
    depth = list(unet_depth if transformer_depth is None else transformer_depth)
    if len(depth) != levels:
        raise ValueError(f"transformer_depth has {len(depth)} entries, the UNet has {levels} levels")
    mid = unet_depth[-1] if mid_transformer_depth is None else int(mid_transformer_depth)
    types = unet_config["down_block_types"]
    for i, (d, u) in enumerate(zip(depth, unet_depth)):
        if "CrossAttn" in types[i] and d > u:
            raise ValueError(f"trunk transformer depth {d} at level {i} exceeds the UNet's {u}")
    if mid > unet_depth[-1]:
        raise ValueError(f"trunk middle depth {mid} exceeds the UNet's {unet_depth[-1]}")
    return depth, mid


class ControlTrunk(nn.Module):
    """Trainable encoder + middle block copy producing the control features."""

    def __init__(self, unet_config: dict, transformer_depth=None, mid_transformer_depth=None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block

        cfg = dict(unet_config)
        check_sdxl_like(cfg)
        depth, mid_depth = resolve_depths(cfg, transformer_depth, mid_transformer_depth)
        self.transformer_depth, self.mid_transformer_depth = depth, mid_depth
        boc = list(cfg["block_out_channels"])
        levels = len(boc)
        # diffusers reads SDXL's attention_head_dim as the head count (diffusers issue #2011).
        heads = _as_list(cfg.get("num_attention_heads") or cfg["attention_head_dim"], levels)
        head_dim_arg = _as_list(cfg["attention_head_dim"], levels)
        cross = _as_list(cfg["cross_attention_dim"], levels)
        layers = _as_list(cfg["layers_per_block"], levels)
        only_cross = _as_list(cfg.get("only_cross_attention", False), levels)
        act = cfg.get("act_fn", "silu")
        eps = cfg.get("norm_eps", 1e-5)
        groups = cfg.get("norm_num_groups", 32)
        time_embed_dim = boc[0] * 4

        self.time_proj = Timesteps(boc[0], cfg.get("flip_sin_to_cos", True), cfg.get("freq_shift", 0))
        self.time_embedding = TimestepEmbedding(boc[0], time_embed_dim, act_fn=act,
                                                post_act_fn=cfg.get("timestep_post_act"))
        self.add_time_proj = Timesteps(cfg["addition_time_embed_dim"], cfg.get("flip_sin_to_cos", True),
                                       cfg.get("freq_shift", 0))
        self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], time_embed_dim)
        k = cfg.get("conv_in_kernel", 3)
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], k, padding=(k - 1) // 2)
        # The LQ latent's only way in: zero at init, so the trunk starts as an exact copy of the encoder.
        self.hint_conv = nn.Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        nn.init.zeros_(self.hint_conv.weight)
        nn.init.zeros_(self.hint_conv.bias)

        self.down_blocks = nn.ModuleList()
        out_ch = boc[0]
        for i, block_type in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, boc[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=depth[i], in_channels=in_ch,
                out_channels=out_ch, temb_channels=time_embed_dim, add_downsample=i < levels - 1,
                resnet_eps=eps, resnet_act_fn=act, resnet_groups=groups, cross_attention_dim=cross[i],
                num_attention_heads=heads[i], downsample_padding=cfg.get("downsample_padding", 1),
                dual_cross_attention=cfg.get("dual_cross_attention", False),
                use_linear_projection=cfg.get("use_linear_projection", False), only_cross_attention=only_cross[i],
                upcast_attention=cfg.get("upcast_attention") or False,
                resnet_time_scale_shift=cfg.get("resnet_time_scale_shift", "default"),
                attention_type=cfg.get("attention_type", "default"),
                resnet_skip_time_act=cfg.get("resnet_skip_time_act", False),
                resnet_out_scale_factor=cfg.get("resnet_out_scale_factor", 1.0),
                cross_attention_norm=cfg.get("cross_attention_norm"),
                attention_head_dim=head_dim_arg[i] if head_dim_arg[i] is not None else out_ch,
                dropout=cfg.get("dropout", 0.0),
            ))
        self.mid_block = get_mid_block(
            cfg["mid_block_type"], temb_channels=time_embed_dim, in_channels=boc[-1], resnet_eps=eps,
            resnet_act_fn=act, resnet_groups=groups, output_scale_factor=cfg.get("mid_block_scale_factor", 1),
            transformer_layers_per_block=mid_depth, num_attention_heads=heads[-1], cross_attention_dim=cross[-1],
            dual_cross_attention=cfg.get("dual_cross_attention", False),
            use_linear_projection=cfg.get("use_linear_projection", False),
            mid_block_only_cross_attention=cfg.get("mid_block_only_cross_attention") or False,
            upcast_attention=cfg.get("upcast_attention") or False,
            resnet_time_scale_shift=cfg.get("resnet_time_scale_shift", "default"),
            attention_type=cfg.get("attention_type", "default"),
            resnet_skip_time_act=cfg.get("resnet_skip_time_act", False),
            cross_attention_norm=cfg.get("cross_attention_norm"), attention_head_dim=head_dim_arg[-1],
            dropout=cfg.get("dropout", 0.0),
        )

    # ------------------------------------------------------------------ initialisation from the UNet
    @torch.no_grad()
    def copy_from_unet(self, unet) -> None:
        """Start every kept block from the UNet's weights (the ControlNet "trainable copy")."""
        own = self.state_dict()
        source = unet.state_dict()
        missing = []
        for name, tensor in own.items():
            if name.startswith("hint_conv."):
                continue  # stays zero
            if name not in source:
                missing.append(name)
                continue
            tensor.copy_(source[name])
        if missing:
            raise ValueError(f"UNet lacks {len(missing)} trunk weights, e.g. {missing[:3]}")

    # ------------------------------------------------------------------ forward
    def embed(self, sample: torch.Tensor, timestep, added_cond_kwargs: dict) -> torch.Tensor:
        """Time + text-time embedding, as ``UNet2DConditionModel`` computes it for SDXL."""
        return sdxl_embedding(self, sample, timestep, added_cond_kwargs)

    def forward(self, sample, timestep, lq_latent, encoder_hidden_states, added_cond_kwargs) -> list[torch.Tensor]:
        emb = self.embed(sample, timestep, added_cond_kwargs)
        h = self.conv_in(sample) + self.hint_conv(lq_latent.to(sample.dtype))
        h, features = sdxl_down_path(self, h, emb, encoder_hidden_states)
        features.append(self.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states))
        return features


def sdxl_down_path(module, h: torch.Tensor, emb: torch.Tensor, encoder_hidden_states):
    """Run ``module.down_blocks`` from ``h`` (after ``conv_in``); returns the last hidden state and the skip
    connections, ``h`` first. Works on the frozen UNet and on the trunk alike (same attribute names)."""
    skips = [h]
    for block in module.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    return h, skips


def sdxl_embedding(module, sample: torch.Tensor, timestep, added_cond_kwargs: dict) -> torch.Tensor:
    """``time_embedding(time_proj(t)) + add_embedding([text_embeds, add_time_proj(time_ids)])``.

    Works on the frozen UNet and on the trunk alike (same attribute names), mirroring
    ``UNet2DConditionModel.get_time_embed`` / ``get_aug_embed`` for ``addition_embed_type="text_time"``.
    """
    t = timestep
    if not torch.is_tensor(t):
        t = torch.tensor([t], dtype=torch.int64, device=sample.device)
    elif t.ndim == 0:
        t = t[None].to(sample.device)
    t = t.expand(sample.shape[0])
    t_emb = module.time_proj(t).to(dtype=sample.dtype)
    emb = module.time_embedding(t_emb)
    text_embeds = added_cond_kwargs["text_embeds"]
    time_ids = added_cond_kwargs["time_ids"]
    time_embeds = module.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
    add = torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
    return emb + module.add_embedding(add)
