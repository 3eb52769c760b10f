"""SUPIR's connectors between the control trunk and the frozen SDXL decoder: ZeroSFT and ZeroCrossAttn.

Formulas and parameter names follow the official ``SUPIR/modules/SUPIR_v0.py`` (ZeroSFT L62-113,
ZeroCrossAttn L116-152), so that released checkpoints load by a plain prefix rename (``convert.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int) -> nn.GroupNorm:
    """sgm's ``normalization``: GroupNorm, 32 groups, eps 1e-5, affine (it is *not* parameter-free)."""
    return nn.GroupNorm(32, channels, eps=1e-5, affine=True)


class ZeroSFT(nn.Module):
    """Zero-initialised spatial feature transform that replaces one skip concatenation.

    ``c`` control feature (label_nc ch), ``h`` encoder skip (norm_nc ch), ``h_ori`` decoder hidden
    (concat_channels ch, or None for the connector after the middle block), ``s`` control scale::

        h_raw = cat([h_ori, h])                      # exactly what SDXL's decoder would have received
        h1    = cat([h_ori, h + zero_conv(c)])
        a     = mlp_shared(c);  gamma, beta = zero_mul(a), zero_add(a)
        out   = s * (GN(h1) * (1 + gamma) + beta) + (1 - s) * h_raw

    With ``s = 0`` the output is ``h_raw`` exactly; with fresh zero convs and ``s = 1`` it is ``GN(h_raw)``.
    """

    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0, hidden: int = 128):
        super().__init__()
        self.param_free_norm = group_norm(norm_nc + concat_channels)  # official name, affine nonetheless
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.SiLU())
        self.zero_mul = _zero(nn.Conv2d(hidden, norm_nc + concat_channels, 3, padding=1))
        self.zero_add = _zero(nn.Conv2d(hidden, norm_nc + concat_channels, 3, padding=1))
        self.zero_conv = _zero(nn.Conv2d(label_nc, norm_nc, 1))
        self.pre_concat = concat_channels != 0

    def forward(self, c: torch.Tensor, h: torch.Tensor, h_ori: torch.Tensor | None = None,
                control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        concat = h_ori is not None and self.pre_concat
        h_raw = torch.cat([h_ori, h], dim=1) if concat else h
        h = h + self.zero_conv(c)
        if concat:
            h = torch.cat([h_ori, h], dim=1)
        actv = self.mlp_shared(c)
        gamma = self.zero_mul(actv)
        beta = self.zero_add(actv)
        h = self.param_free_norm(h) * (gamma + 1) + beta
        return h * control_scale + h_raw * (1 - control_scale)


class CrossAttention(nn.Module):
    """sgm's CrossAttention layout (to_q/to_k/to_v without bias, to_out = Linear + Dropout) on SDPA."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]

        def split(t):
            return t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the decoder hidden state (queries) to the control feature (keys/values).

    ``out = x + s * attn(GN(x), GN(c))``. ``to_out`` is *not* zero-initialised in the official code (the
    zeroing is commented out), so the module is the identity only at ``s = 0``.
    """

    def __init__(self, context_dim: int, query_dim: int, head_dim: int = 64):
        super().__init__()
        heads = query_dim // head_dim
        if heads < 1:
            raise ValueError(f"ZeroCrossAttn: query width {query_dim} is narrower than one head ({head_dim})")
        self.attn = CrossAttention(query_dim, context_dim, heads=heads, dim_head=head_dim)
        self.norm1 = group_norm(query_dim)
        self.norm2 = group_norm(context_dim)

    def forward(self, context: torch.Tensor, x: torch.Tensor,
                control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        x_in = x
        b, ch, hh, ww = x.shape
        q = self.norm1(x).flatten(2).transpose(1, 2)
        kv = self.norm2(context).flatten(2).transpose(1, 2)
        out = self.attn(q, kv).transpose(1, 2).reshape(b, ch, hh, ww)
        return x_in + out * control_scale


@dataclass(frozen=True)
class Join:
    """One connector call in the decoder, in execution order.

    kind "sft_mid": after the middle block; "sft": replaces the skip concat of up_blocks[up].resnets[layer];
    "xattn": after the last attention of up_blocks[up], before its upsampler. ``module`` indexes
    ``project_modules`` (official order); ``control`` indexes the trunk's features.
    """

    kind: str
    module: int
    control: int
    up: int = -1
    layer: int = -1


def plan_connectors(block_out_channels, layers_per_block: int, sft_hidden: int = 128, head_dim: int = 64):
    """Build SUPIR's connectors for a three-level (or any-level) SDXL-style UNet.

    Returns ``(modules, joins)``: ``modules`` in the official ``project_modules`` order (for SDXL:
    [SFT0, SFT1, SFT2, XAttn(ctrl 3), SFT3, SFT4, SFT5, XAttn(ctrl 6), SFT6, SFT7, SFT8, SFT_mid]) and
    ``joins`` in execution order (middle first, then the decoder from the deepest level up).
    """
    levels = len(block_out_channels)
    # Channels of the trunk features / encoder skips, in order: conv_in, then per level the resnet(+attn)
    # outputs and the downsampler output (no downsampler at the last level), then the middle block.
    ctrl_ch = [block_out_channels[0]]
    for i, ch in enumerate(block_out_channels):
        ctrl_ch += [ch] * layers_per_block
        if i < levels - 1:
            ctrl_ch.append(ch)
    ctrl_ch.append(block_out_channels[-1])
    n_skips = len(ctrl_ch) - 1

    forward_modules: list[nn.Module] = [ZeroSFT(ctrl_ch[-1], ctrl_ch[-1], 0, sft_hidden)]
    forward_kinds = [("sft_mid", n_skips, -1, -1)]
    reversed_ch = list(reversed(block_out_channels))
    prev = reversed_ch[0]
    k = 0  # decoder layer counter (sgm output_blocks index)
    for up in range(levels):
        out_ch = reversed_ch[up]
        for layer in range(layers_per_block + 1):
            c = n_skips - 1 - k
            hidden_ch = prev if layer == 0 else out_ch  # decoder hidden entering this join
            forward_modules.append(ZeroSFT(ctrl_ch[c], ctrl_ch[c], hidden_ch, sft_hidden))
            forward_kinds.append(("sft", c, up, layer))
            if layer == layers_per_block and up < levels - 1:  # before this level's upsampler
                forward_modules.append(ZeroCrossAttn(ctrl_ch[c], out_ch, head_dim))
                forward_kinds.append(("xattn", c, up, layer))
            k += 1
        prev = out_ch
    n = len(forward_modules)
    modules = nn.ModuleList(reversed(forward_modules))
    joins = [Join(kind, n - 1 - i, c, up, layer) for i, (kind, c, up, layer) in enumerate(forward_kinds)]
    return modules, joins, ctrl_ch
