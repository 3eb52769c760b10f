"""SDXL text conditioning: both CLIP encoders' penultimate hidden states and the pooled projection.

Same result as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` (clip_skip None): each tokenizer pads
and truncates to its 77 tokens, ``hidden_states[-2]`` of both encoders are concatenated (768 + 1280 = 2048 at
SDXL size), and the pooled embedding is the second encoder's ``text_embeds``. Micro-conditioning ids are the
six SDXL size numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SDXLTextEncoders:
    tokenizer: object
    tokenizer_2: object
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module

    @classmethod
    def from_pretrained(cls, sdxl, dtype=None, device=None) -> "SDXLTextEncoders":
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        kw = {"dtype": dtype} if dtype is not None else {}
        enc = cls(CLIPTokenizer.from_pretrained(sdxl, subfolder="tokenizer"),
                  CLIPTokenizer.from_pretrained(sdxl, subfolder="tokenizer_2"),
                  CLIPTextModel.from_pretrained(sdxl, subfolder="text_encoder", **kw),
                  CLIPTextModelWithProjection.from_pretrained(sdxl, subfolder="text_encoder_2", **kw))
        for m in (enc.text_encoder, enc.text_encoder_2):
            m.requires_grad_(False).eval()
            if device is not None:
                m.to(device)
        return enc

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, 77, D1 + D2), pooled (B, P))."""
        embeds, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(enc.device)
            out = enc(ids, output_hidden_states=True)
            embeds.append(out.hidden_states[-2])
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds come first
                pooled = out[0]
        return torch.cat(embeds, dim=-1), pooled


def time_ids(values, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 6) micro-conditioning: original size (h, w), crop top-left, target size (h, w)."""
    return torch.tensor([list(values)] * batch, device=device, dtype=dtype)
