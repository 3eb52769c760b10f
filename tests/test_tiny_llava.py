"""The tiny LLaVA folder loads through transformers' own from_pretrained and keeps LLaVA-1.5's structure."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

PROMPT = "Describe this image and its style in a very detailed manner."


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    from supirkit.tiny.llava import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    return model, processor


def _images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 90), (64, 64), (120, 30))
    ]


def test_folder_layout_matches_llava_hf(tiny_llava_dir):
    config = json.loads((tiny_llava_dir / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["model_type"] == "llava"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert config["text_config"]["model_type"] == "llama"
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    assert (tiny_llava_dir / "model.safetensors").is_file()
    assert not list(tiny_llava_dir.rglob("*.bin")) and not list(tiny_llava_dir.rglob("*.py"))
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "generation_config.json"):
        assert (tiny_llava_dir / name).is_file(), name
    assert json.loads((tiny_llava_dir / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_processor_chat_template_and_tokenizer(loaded):
    model, processor = loaded
    assert type(processor).__name__ == "LlavaProcessor"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessor"
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == f"USER: <image>\n{PROMPT} ASSISTANT:"
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + messages
    assert processor.apply_chat_template(system, add_generation_prompt=True).startswith("Be brief. USER: <image>\n")
    # Llama id layout, <image>/<pad> appended after the base vocabulary, in llava-hf's order
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    image_id, pad_id = tok.convert_tokens_to_ids(["<image>", "<pad>"])
    assert (image_id, pad_id) == (len(tok) - 2, len(tok) - 1)
    assert model.config.image_token_id == image_id and model.config.pad_token_id == pad_id
    assert model.config.text_config.vocab_size == len(tok)
    assert tok.padding_side == "left"
    assert (
        tok.decode(tok("The cat, 3 dogs & a tree!").input_ids, skip_special_tokens=True) == "The cat, 3 dogs & a tree!"
    )
    assert tok.decode(tok("naïve café").input_ids, skip_special_tokens=True) == "naïve café"  # byte fallback
    assert tok.convert_ids_to_tokens(tok("detailed", add_special_tokens=False).input_ids) == ["▁detailed"]


def test_batched_generation_left_padded_mixed_sizes_seeded(loaded):
    model, processor = loaded
    prompts = [
        f"USER: <image>\n{PROMPT} ASSISTANT:",
        "USER: <image>\nHi ASSISTANT:",
        f"USER: <image>\n{PROMPT} ASSISTANT:",
    ]
    inputs = processor(images=_images(), text=prompts, return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (3, 3, 56, 56)
    image_id = model.config.image_token_id
    n_image_tokens = (inputs["input_ids"] == image_id).sum(dim=1)
    assert n_image_tokens.tolist() == [16, 16, 16]  # (56/14)^2 patches, CLS dropped
    assert inputs["attention_mask"][1, 0] == 0 and inputs["attention_mask"][0, 0] == 1  # shorter prompt left-padded

    def generate(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return model.generate(**inputs, do_sample=True, temperature=0.2, top_p=0.7, max_new_tokens=12,
                                  min_new_tokens=12)

    a, b, c = generate(0), generate(0), generate(1)
    assert a.shape == (3, inputs["input_ids"].shape[1] + 12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    texts = processor.batch_decode(a[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_same_seed_same_weights(tmp_path, tiny_llava_dir):
    from safetensors.torch import load_file

    from supirkit.tiny.llava import build_tiny_llava

    again = load_file(str(build_tiny_llava(tmp_path / "again", seed=0) / "model.safetensors"))
    first = load_file(str(tiny_llava_dir / "model.safetensors"))
    assert again.keys() == first.keys()
    assert any("multi_modal_projector.linear_2" in k for k in first)
    assert all(torch.equal(again[k], first[k]) for k in first)
