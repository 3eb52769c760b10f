"""A tiny LLaVA-1.5 checkpoint folder with seeded random weights, built without any download.

The folder has the layout of ``llava-hf/llava-1.5-13b-hf`` (config.json with ``LlavaForConditionalGeneration``,
model.safetensors, generation_config.json, tokenizer.json + tokenizer_config.json, preprocessor_config.json,
processor_config.json, chat_template.jinja), so transformers' own
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` load it.

What is kept from LLaVA-1.5, because the captioner depends on it:
* A CLIP vision tower with 14 px patches whose second-to-last layer is read (``vision_feature_layer=-2``)
  without its CLS token (``vision_feature_select_strategy="default"``), a two-layer GELU MLP projector, and a
  Llama decoder; ``<image>`` is one added token expanded by the processor to one placeholder per patch.
* A Llama-style tokenizer (SentencePiece-like BPE over "▁"-prefixed words, byte fallback, ``<s>``/``</s>``/
  ``<unk>`` at 1/2/0) with ``<image>`` and ``<pad>`` added after the base vocabulary, left padding.
* A chat template that renders ``USER: <image>\\n{prompt} ASSISTANT:`` like llava-hf's (a system message, if
  given, is written first without a role name, as in the original vicuna_v1 conversation).
* A ``CLIPImageProcessor`` with CLIP's mean/std, bicubic resize of the short side and a centre crop.
What is changed: every width and depth, the image size (56 px: 16 image tokens instead of 576) and the vocabulary.
"""
from __future__ import annotations

from pathlib import Path

from supirkit.tiny.bpe import add_word_merges

#: Image side and patch of the tiny vision tower (LLaVA-1.5: 336 and 14).
TINY_IMAGE_SIZE = 56
TINY_PATCH_SIZE = 14

#: OpenAI CLIP normalisation, which LLaVA-1.5's image processor uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Equivalent of llava-hf/llava-1.5-*-hf's chat template: "USER: <image>\n{text} ASSISTANT:".
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_UNK, _BOS, _EOS = "<unk>", "<s>", "</s>"
_IMAGE, _PAD = "<image>", "<pad>"
# Whole-word tokens, so that the prompt and typical captions tokenize into a few ids; everything else falls back
# to single characters and then to bytes, as SentencePiece's byte fallback does.
_WORDS = ("describe", "this", "image", "and", "its", "style", "in", "a", "very", "detailed", "manner", "the",
          "shows", "photo", "of", "with", "is", "on", "USER", "ASSISTANT", "chat", "between", "user", "assistant",
          "cat", "dog", "tree", "sky", "blue", "green", "red", "wall", "texture", "sharp", "background")


def _llama_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama's layout: <unk>, <s>, </s>, the 256 byte-fallback tokens, then pieces and merge results."""
    vocab_list = [_UNK, _BOS, _EOS] + [f"<0x{b:02X}>" for b in range(256)]
    chars = [chr(c) for c in range(33, 127)]
    vocab_list += ["▁"] + chars + ["▁" + c for c in chars]
    merges: list[tuple[str, str]] = [("▁", c) for c in chars]
    pieces = (piece for word in _WORDS for piece in (word, word.capitalize()))
    add_word_merges((["▁" + piece[0]] + list(piece[1:]) for piece in pieces), vocab_list, merges)
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_tiny_tokenizer():
    """Llama BPE tokenizer built in code (no tokenizer.model download), with <image> and <pad> added."""
    from transformers import AddedToken, LlamaTokenizerFast

    vocab, merges = _llama_vocab_and_merges()
    tokenizer = LlamaTokenizerFast(vocab=vocab, merges=merges, unk_token=_UNK, bos_token=_BOS, eos_token=_EOS,
                                   add_prefix_space=True, padding_side="left", model_max_length=4096)
    # llava-hf appends <image> (32000) and <pad> (32001) after Llama's 32000 base tokens; same order here.
    tokenizer.add_tokens([AddedToken(_IMAGE, special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": AddedToken(_PAD, special=True, normalized=False)})
    return tokenizer


def _tiny_towers(tokenizer, **text_options):
    """The tiny CLIP vision tower and Llama decoder configs both LLaVA generations share."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, projection_dim=32, hidden_act="quick_gelu",
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **text_options,
    )
    return vision_config, text_config


def _save_tiny(out: Path, seed: int, model_class, config, processor_class, image_processor, tokenizer) -> Path:
    """Seed, build and save the model, then its processor (the tiny tokenizer, the LLaVA-1.5 chat template)."""
    import torch
    from transformers import GenerationConfig

    pad_token_id = tokenizer.pad_token_id
    config.pad_token_id = pad_token_id
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_token_id)
    model.save_pretrained(str(out), safe_serialization=True)
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=_IMAGE,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(out))
    return out


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny LLaVA-1.5 checkpoint (seeded random weights, safetensors) to ``out_dir`` and return it."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    vision_config, text_config = _tiny_towers(tokenizer, rms_norm_eps=1e-5, tie_word_embeddings=False)
    n_patches = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids(_IMAGE),
        image_seq_length=n_patches, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": TINY_IMAGE_SIZE}, resample=3, do_center_crop=True,
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )
    return _save_tiny(out, seed, LlavaForConditionalGeneration, config, LlavaProcessor, image_processor, tokenizer)


#: LLaVA-NeXT's "anyres" grid at the tiny tile size (llava-v1.6: 336-px tiles up to 672x672, 1008x336, 336x1008).
TINY_NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]


def build_tiny_llava_next(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny LLaVA-NeXT (llava-v1.6) checkpoint: ``LlavaNextForConditionalGeneration`` with anyres tiling
    (``LlavaNextImageProcessor`` with image_grid_pinpoints), the same tiny tokenizer and chat template."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    vision_config, text_config = _tiny_towers(tokenizer)
    config = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids(_IMAGE),
        image_grid_pinpoints=TINY_NEXT_PINPOINTS, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_grid_pinpoints=TINY_NEXT_PINPOINTS, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3,
    )
    return _save_tiny(out, seed, LlavaNextForConditionalGeneration, config, LlavaNextProcessor, image_processor,
                      tokenizer)
