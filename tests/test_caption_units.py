"""Caption clean-up, token counting, image fitting, prompt rendering and the config schema."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_clean_caption_strips_openings_and_whitespace():
    from supirkit.captioning.clean import clean_caption

    assert clean_caption("The image shows a red barn\n\nunder a  grey sky.</s>") == "A red barn under a grey sky."
    assert clean_caption("In this image, two dogs play.") == "Two dogs play."
    assert clean_caption("This photo depicts: a lake") == "A lake"
    assert clean_caption("  the picture features\tan old car ") == "An old car"
    assert clean_caption("This is an image of a cat.") == "A cat."
    # only a leading opening is removed, and only once; other text is untouched
    assert clean_caption("A cat. The image shows a cat.") == "A cat. The image shows a cat."
    assert clean_caption("Imagery of mountains") == "Imagery of mountains"
    assert clean_caption("The image shows a cat", strip_openings=False) == "The image shows a cat"
    assert clean_caption("The image shows a cat", capitalize=False) == "a cat"
    assert clean_caption("The image shows") == "The image shows"  # nothing left: keep what there was


def test_token_counter_uses_the_sdxl_tokenizer_or_a_labelled_estimate(tmp_path):
    from transformers import CLIPTokenizer

    from supirkit.captioning.clean import TokenCounter
    from supirkit.tiny.sdxl import _write_tokenizer

    _write_tokenizer(tmp_path / "sdxl" / "tokenizer", pad_token="<|endoftext|>")  # an SDXL folder's tokenizer/
    text = "a detailed photo of a cat, sharp and high quality " * 3
    counter = TokenCounter(str(tmp_path / "sdxl"), limit=77)
    expected = len(CLIPTokenizer.from_pretrained(tmp_path / "sdxl" / "tokenizer")(text).input_ids) - 2
    got = counter.count(text)
    assert (got.method, got.tokens, got.fits) == ("clip", expected, expected + 2 <= 77)
    long = counter.count("cat " * 80)
    assert long.tokens == 80 and not long.fits

    missing = TokenCounter(str(tmp_path / "nothing-here"), limit=77)  # not loadable: estimate, labelled
    est = missing.count("A red barn, under a grey sky.")
    assert est.method == "estimate" and est.tokens == 9 and est.fits
    assert TokenCounter(None).method == "estimate"
    with pytest.raises(FileNotFoundError):
        TokenCounter(str(tmp_path / "nothing-here"), on_missing="error")


def test_fit_image_pads_crops_or_keeps():
    from supirkit.captioning.images import fit_image, limit_side

    rgb = np.full((20, 40, 3), 200, np.uint8)
    padded = fit_image(rgb, "pad", (10, 20, 30))
    assert padded.shape == (40, 40, 3)
    assert (padded[:10] == (10, 20, 30)).all() and (padded[30:] == (10, 20, 30)).all()
    assert (padded[10:30] == 200).all()
    tall = np.arange(40 * 20 * 3, dtype=np.uint32).reshape(40, 20, 3).astype(np.uint8)
    cropped = fit_image(tall, "crop")
    assert cropped.shape == (20, 20, 3) and np.array_equal(cropped, tall[10:30])
    assert fit_image(rgb, "none") is rgb
    assert limit_side(rgb, 20).shape == (10, 20, 3) and limit_side(rgb, 64) is rgb


def test_config_defaults_follow_supir_and_are_validated():
    from supirkit.captioning.config import SUPIR_INSTRUCTION, CaptionConfig
    from supirkit.datapipe.config import ConfigError, load_config

    cfg = load_config(CaptionConfig, None, [], default="caption/default.yaml")
    assert cfg.model.name == "llava-hf/llava-1.5-13b-hf"
    assert cfg.prompt.instruction == SUPIR_INSTRUCTION == "Describe this image and its style in a very detailed manner."
    g = cfg.generation
    assert (g.do_sample, g.temperature, g.top_p, g.num_beams, g.max_new_tokens) == (True, 0.2, 0.7, 1, 512)
    assert (cfg.image.use, cfg.image.fit) == ("curated", "pad")
    demo = load_config(CaptionConfig, "caption/demo.yaml", [])
    assert demo.runner.num_gpus_per_actor == 0
    with pytest.raises(ConfigError, match="top_p"):
        load_config(CaptionConfig, None, ["generation.top_p=1.5"], default="caption/default.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(CaptionConfig, None, ["generation.temprature=0.3"], default="caption/default.yaml")
    with pytest.raises(ConfigError, match="fit"):
        load_config(CaptionConfig, None, ["image.fit=stretch"], default="caption/default.yaml")
    with pytest.raises(ConfigError, match="min_new_tokens"):
        load_config(CaptionConfig, None, ["generation.min_new_tokens=600"], default="caption/default.yaml")


def test_prompt_is_supirs_through_the_checkpoints_chat_template(tiny_models):
    from supirkit.captioning.backends import TransformersCaptioner
    from supirkit.captioning.config import CaptionConfig, CaptionPromptConfig

    cfg = CaptionConfig.model_validate({"model": {"name": str(tiny_models["llava"]), "device": "cpu"}})
    backend = TransformersCaptioner(cfg.model, cfg.prompt, cfg.generation)
    assert backend.prompt_text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\n"
        "Describe this image and its style in a very detailed manner. ASSISTANT:")
    assert backend.processor.tokenizer.padding_side == "left"
    assert backend.pad_colour == (122, 116, 104)  # CLIP mean * 255, LLaVA's expand2square colour
    plain = TransformersCaptioner(cfg.model, CaptionPromptConfig(system=None), cfg.generation,
                                  model=backend.model, processor=backend.processor)
    assert plain.prompt_text == "USER: <image>\nDescribe this image and its style in a very detailed manner. ASSISTANT:"
    custom = TransformersCaptioner(cfg.model, CaptionPromptConfig(template="{image} {instruction} ->", system=None),
                                   cfg.generation, model=backend.model, processor=backend.processor)
    assert custom.prompt_text == "<image> Describe this image and its style in a very detailed manner. ->"


def test_token_report_warns_when_most_captions_exceed_the_clip_context(tmp_path):
    import json

    from supirkit.captioning.job import token_report
    from supirkit.datapipe.shard_format import ShardSetLayout

    layout = ShardSetLayout(tmp_path)
    layout.stats_dir.mkdir(parents=True)

    def shard(i, captions, over, mean):
        layout.stats("shard", i).write_text(json.dumps({"caption": {
            "captions": captions, "clip_tokens_over_limit": over, "clip_tokens_mean": mean, "new_tokens": 10 * captions,
            "unfinished": 0, "clip_tokens_method": "clip"}}))

    shard(0, 4, 3, 90.0)
    shard(1, 6, 3, 70.0)  # shard 2 is not done: not counted
    markers = [layout.stats("shard", i) for i in range(3)]
    report = token_report(markers, warn_share=0.5, limit=77)
    assert (report["captions"], report["clip_tokens_over_limit"], report["over_limit_share"]) == (10, 6, 0.6)
    assert report["clip_tokens_mean"] == 78.0 and report["new_tokens"] == 100
    assert len(report["warnings"]) == 1 and "60% of captions exceed SDXL's 77-token" in report["warnings"][0]
    quiet = token_report(markers, warn_share=0.7, limit=77)
    assert quiet["warnings"] == []
