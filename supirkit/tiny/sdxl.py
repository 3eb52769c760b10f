"""A tiny SDXL pipeline folder with seeded random weights, built without any download.

The folder has the layout of ``stabilityai/stable-diffusion-xl-base-1.0`` (model_index.json, unet/, vae/,
text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/), so diffusers' own
``StableDiffusionXLPipeline.from_pretrained`` and ``StableDiffusionXLImg2ImgPipeline.from_pretrained`` load
it, and so does any code that loads the components one by one (``UNet2DConditionModel.from_pretrained(dir,
subfolder="unet")``).

What is kept from SDXL, because SUPIR's adaptor depends on it:
* UNet topology: three levels DownBlock2D / CrossAttnDownBlock2D / CrossAttnDownBlock2D and the mirrored
  CrossAttnUpBlock2D / CrossAttnUpBlock2D / UpBlock2D, ``layers_per_block`` 2 (9 skip connections, i.e. the
  9 ZeroSFT joins), two upsamplers (the two ZeroCrossAttn positions), attention only at levels two and three
  with per-level transformer depths (``TINY_TRANSFORMER_DEPTHS``; more than one block at level three so a
  trimmed trunk differs from a full copy), a cross-attention middle block, linear projections in the
  transformers, ``addition_embed_type="text_time"`` with six micro-conditioning ids.
* Two CLIP text encoders (the second with a projection: pooled text embedding), two CLIP BPE tokenizers
  (77 tokens), an 8x-downsampling AutoencoderKL with 4 latent channels and SDXL's scaling factor, and
  EulerDiscreteScheduler with SDXL's scheduler config.
What is changed: every width and depth, so the whole pipeline makes a 64 px image in a fraction of a second.
"""
from __future__ import annotations

import json
from pathlib import Path

from supirkit.tiny.bpe import add_word_merges

#: Per-level transformer depths of the tiny UNet (SDXL: [1, 2, 10]; the first entry is unused because
#: level one has no attention). The middle block takes the last entry, as in SDXL.
TINY_TRANSFORMER_DEPTHS = (1, 2, 3)

TINY_UNET_CONFIG = dict(
    sample_size=8,  # 64 px images through the 8x VAE
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=2,
    transformer_layers_per_block=list(TINY_TRANSFORMER_DEPTHS),
    attention_head_dim=(1, 2, 4),  # diffusers reads this as head counts for SDXL: 32-channel heads here
    cross_attention_dim=96,  # 32 (text encoder 1) + 64 (text encoder 2), as 768 + 1280 in SDXL
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,  # six micro-conditioning ids + pooled text (32)
    norm_num_groups=32,
    upcast_attention=False,
)

#: SDXL base 1.0 scheduler config (scheduler/scheduler_config.json of the released pipeline).
SDXL_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    clip_sample=False,
    interpolation_type="linear",
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)

_SPECIAL_BOS = "<|startoftext|>"
_SPECIAL_EOS = "<|endoftext|>"
# A handful of merges so that common words become single tokens; the rest stays byte-level.
_WORDS = ("the", "a", "photo", "of", "cat", "dog", "high", "quality", "low", "detailed", "image", "and",
          "painting", "blur", "sharp", "in", "with", "is", "on", "this")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (transformers 5 no longer exports it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary layout: bytes, bytes + '</w>', merge results, then the two special tokens."""
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    add_word_merges((list(word[:-1]) + [word[-1] + "</w>"] for word in _WORDS), vocab_list, merges)
    vocab_list += [_SPECIAL_BOS, _SPECIAL_EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, [f"{a} {b}" for a, b in merges]  # merges.txt lines


def _write_tokenizer(folder: Path, pad_token: str):
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=77)
    return tokenizer, len(vocab)


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL pipeline (seeded random weights, safetensors) to ``out_dir`` and return it."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # SDXL pads tokenizer 1 with <|endoftext|> and tokenizer 2 (OpenCLIP bigG) with "!".
    tokenizer, vocab_size = _write_tokenizer(out / "tokenizer", pad_token=_SPECIAL_EOS)
    tokenizer_2, _ = _write_tokenizer(out / "tokenizer_2", pad_token="!")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def text_config(hidden: int, projection: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                              projection_dim=projection, hidden_act=act, bos_token_id=bos, eos_token_id=eos,
                              pad_token_id=1)

    torch.manual_seed(seed)
    # CLIP-L uses quick_gelu, OpenCLIP bigG plain gelu.
    text_encoder = CLIPTextModel(text_config(32, 32, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(64, 32, "gelu"))
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32), layers_per_block=2, norm_num_groups=8,
        sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )
    # from_config, as the released folder is read: keys the class does not take (clip_sample, ...) are ignored.
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
