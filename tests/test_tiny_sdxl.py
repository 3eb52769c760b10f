"""The tiny SDXL folder loads through diffusers' own from_pretrained and keeps SDXL's topology."""
from __future__ import annotations

import json

import numpy as np
import pytest
from model_fixtures import tiny_sdxl_dir  # noqa: F401  (session fixture)
from supir_fixtures import single_torch_thread  # noqa: F401  (one torch thread: tiny models, shared cores)

torch = pytest.importorskip("torch")


def test_folder_layout_matches_released_sdxl(tiny_sdxl_dir):
    index = json.loads((tiny_sdxl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    for part in ("unet", "vae"):
        assert (tiny_sdxl_dir / part / "diffusion_pytorch_model.safetensors").is_file()
    for part in ("text_encoder", "text_encoder_2"):
        assert (tiny_sdxl_dir / part / "model.safetensors").is_file()
    for part in ("tokenizer", "tokenizer_2"):
        assert (tiny_sdxl_dir / part / "vocab.json").is_file()
        assert (tiny_sdxl_dir / part / "merges.txt").is_file()
    assert not list(tiny_sdxl_dir.rglob("*.bin"))


def test_txt2img_generates_and_is_seeded(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert [type(b).__name__ for b in unet.up_blocks] == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert [len(b.attentions[0].transformer_blocks) for b in unet.down_blocks[1:]] == [2, 3]
    assert len(unet.mid_block.attentions[0].transformer_blocks) == 3
    assert [b.upsamplers is not None for b in unet.up_blocks] == [True, True, False]
    assert unet.config.addition_embed_type == "text_time"
    assert (
        unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )

    def make(seed):
        out = pipe("a photo of a cat", num_inference_steps=3, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(seed))
        return out.images[0]

    a, b, c = make(0), make(0), make(1)
    assert a.shape == (64, 64, 3)
    assert np.isfinite(a).all() and a.std() > 0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_img2img_loads_the_same_folder(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64)
    out = pipe("a dog", image=image, strength=0.6, num_inference_steps=4, output_type="np",
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()


def test_tokenizers_are_clip_bpe_with_77_tokens(tiny_sdxl_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sdxl_dir / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(tiny_sdxl_dir / "tokenizer_2")
    ids = tok("A photo of the cat!", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    assert tok.decode(tok("a photo of the cat").input_ids, skip_special_tokens=True) == "a photo of the cat"
    assert tok.convert_ids_to_tokens(tok("photo").input_ids[1:-1]) == ["photo</w>"]  # merges are used
    assert tok2.pad_token == "!" and tok.pad_token == "<|endoftext|>"
