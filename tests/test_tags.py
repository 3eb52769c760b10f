"""Tag prompts: the two taggers (zero-shot open_clip over a vocabulary, a transformers classifier) with tiny
random-weight models loaded through their real loaders, tags written next to captions, and the prompt rule
(caption | tags | both) shared by training and restore."""
from __future__ import annotations

import json

import numpy as np
import pytest
from caption_fixtures import make_shards
from degrade_fixtures import photo
from supir_fixtures import adaptor_dir, single_torch_thread, tiny_sdxl_dir  # noqa: F401  (fixtures)

VOCAB = ["dog", "cat", "tree", "car", "building", "sky", "grass", "person"]


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "tags.txt"
    path.write_text("# a vocabulary\n" + "\n".join(VOCAB + ["dog"]) + "\n\n")
    return path


@pytest.fixture(scope="module")
def tag_clip(tmp_path_factory):
    """A tiny open_clip model with the real BPE vocabulary size (its tokenizer is open_clip's own)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tagclip")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "supirkit-test-tagclip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / "supirkit-test-tagclip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("supirkit-test-tagclip", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def tag_classifier(tmp_path_factory):
    """A tiny multi-label ViT image classifier whose labels are the vocabulary (save_pretrained format)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("tagvit")
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=len(VOCAB), id2label=dict(enumerate(VOCAB)),
                       label2id={t: i for i, t in enumerate(VOCAB)}, problem_type="multi_label_classification")
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images(n=3):
    from PIL import Image

    return [Image.fromarray(photo(i, 48 + 8 * i, 64)) for i in range(n)]


# ------------------------------------------------------------------------------------------- taggers
def test_selection_keeps_the_most_likely_tags_above_the_threshold():
    from supirkit.captioning.tags import _select

    probs = np.array([[0.1, 0.5, 0.3, 0.1], [0.7, 0.05, 0.05, 0.2]])
    assert _select(probs, list("abcd"), 2, 0.0) == [["b", "c"], ["a", "d"]]
    assert _select(probs, list("abcd"), 3, 0.25) == [["b", "c"], ["a"]]


def test_clip_tagger_zero_shot_over_the_vocabulary(tag_clip, vocabulary):
    from supirkit.captioning.config import TaggerConfig
    from supirkit.captioning.tags import load_tagger, read_vocabulary

    assert read_vocabulary(str(vocabulary)) == VOCAB  # comments, blanks and repeats dropped
    cfg = TaggerConfig(model=str(tag_clip), vocabulary=str(vocabulary), top_k=3, device="cpu")
    tagger = load_tagger(cfg)
    probs = tagger.probabilities(_images())
    assert probs.shape == (3, len(VOCAB)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    tags = tagger(_images())
    assert all(len(t) == 3 and set(t) <= set(VOCAB) for t in tags)
    for row, t in zip(probs, tags):  # most likely first
        assert [VOCAB.index(x) for x in t] == list(np.argsort(-row, kind="stable")[:3])
    assert tagger(_images()) == tags  # deterministic
    assert load_tagger(cfg.model_copy(update={"threshold": 1.0}))(_images()) == [[], [], []]
    assert load_tagger(TaggerConfig()) is None  # no model: no tagger


def test_classifier_tagger_uses_the_checkpoint_labels(tag_classifier, tmp_path):
    from supirkit.captioning.config import TaggerConfig
    from supirkit.captioning.tags import TaggerError, load_tagger

    tagger = load_tagger(TaggerConfig(model=str(tag_classifier), backend="classifier", top_k=4, device="cpu"))
    assert tagger.multi_label
    probs = tagger.probabilities(_images(2))
    assert probs.shape == (2, len(VOCAB)) and ((probs > 0) & (probs < 1)).all()  # sigmoid, not softmax
    assert all(len(t) == 4 and set(t) <= set(VOCAB) for t in tagger(_images(2)))
    subset = tmp_path / "subset.txt"
    subset.write_text("tree\nsky\nunicorn\n")
    only = load_tagger(TaggerConfig(model=str(tag_classifier), backend="classifier", vocabulary=str(subset),
                                    device="cpu"))
    assert all(set(t) <= {"tree", "sky"} for t in only(_images(2)))
    none = tmp_path / "none.txt"
    none.write_text("unicorn\n")
    with pytest.raises(TaggerError, match="none of the vocabulary"):
        load_tagger(TaggerConfig(model=str(tag_classifier), backend="classifier", vocabulary=str(none), device="cpu"))


# ------------------------------------------------------------------------------------------- prompt rule
def test_prompt_source_caption_tags_or_both():
    from supirkit.model.prompts import prompt_text

    assert prompt_text("a dog on grass", ["dog", "grass"], "caption") == "a dog on grass"
    assert prompt_text("a dog on grass", ["dog", " grass ", ""], "tags") == "dog, grass"
    assert prompt_text("a dog on grass", ["dog", "grass"], "both", "; ") == "a dog on grass; dog, grass"
    assert prompt_text("", ["dog"], "both") == "dog" and prompt_text("x", [], "both") == "x"


def test_training_prompt_rule_reads_tags_and_keeps_them_through_pickling():
    import pickle

    from supirkit.train.data import PromptRule, _tags

    rule = PromptRule("sharp", ", ", 77, source="both")
    assert rule("a dog", "assemble", ["dog", "grass"]) == "a dog, dog, grass, sharp"
    assert rule("a dog", "caption", ["dog"]) == "a dog"  # negatives: their caption alone, as before
    assert pickle.loads(pickle.dumps(rule))("a dog", "assemble", ["dog"]) == "a dog, dog, sharp"
    assert PromptRule("sharp", source="tags")("a dog", "assemble", _tags({"tags": ["cat"]})) == "cat, sharp"
    assert _tags({}) == [] and _tags({"tags": "not a list"}) == []


# ------------------------------------------------------------------------------------------- caption job
def test_caption_job_writes_tags_next_to_captions(tmp_path, tiny_models, tag_clip, vocabulary):
    from supirkit.cli import main
    from supirkit.datapipe.tario import list_shards, read_shard

    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=3)
    argv = ["caption", str(shards), "--out", str(tmp_path / "out"), "--model", str(tiny_models["llava"]),
            "--config", "caption/demo.yaml", "--set", "runner.executor=local", "--set", "generation.max_new_tokens=4",
            "--set", f"tags.model={tag_clip}", "--set", f"tags.vocabulary={vocabulary}", "--set", "tags.top_k=2",
            "--set", "tags.device=cpu", "--set", "output.write=shards"]
    if "sdxl" in tiny_models:
        argv += ["--set", f"tokens.tokenizer={tiny_models['sdxl']}"]
    assert main(argv) == 0
    samples = [s for url in list_shards(str(tmp_path / "out")) for s in read_shard(url)]
    assert len(samples) == 3
    for s in samples:
        meta = json.loads(s["json"])
        assert len(meta["tags"]) == 2 and set(meta["tags"]) <= set(VOCAB)
        assert s["tags.txt"].decode() == ", ".join(meta["tags"]) and s["txt"]  # next to the caption
        assert meta["caption"]["tagger"]["backend"] == "clip" and meta["caption"]["tagger"]["vocabulary"] == 8
    bad = argv[:]
    bad[bad.index(f"tags.vocabulary={vocabulary}")] = "tags.vocabulary=/nowhere/tags.txt"
    bad[bad.index(str(tmp_path / "out"))] = str(tmp_path / "out2")
    assert main(bad) == 2 and not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------------------- restore
def test_restore_with_tag_prompts(tiny_sdxl_dir, adaptor_dir, tmp_path, tag_clip, vocabulary, capsys):
    from PIL import Image

    from supirkit.cli import main

    lq = tmp_path / "lq.png"
    Image.fromarray(photo(3, 32, 32)).save(lq)
    fast = ["sampler.num_steps=2", "image.min_size=64", "image.size_multiple=32", "sampler.restore_cfg=4.0"]
    sets = [x for o in fast for x in ("--set", o)]
    common = [str(lq), "--sdxl", str(tiny_sdxl_dir), "--adaptor", str(adaptor_dir), *sets]
    assert main(["restore", *common, "--out", str(tmp_path / "a"), "--prompt-source", "tags",
                 "--tags", "dog, grass"]) == 0
    meta = json.loads((tmp_path / "a" / "lq.json").read_text())
    assert meta["tags"] == ["dog", "grass"] and meta["prompt"].startswith("dog, grass, Cinematic")
    assert main(["restore", *common, "--out", str(tmp_path / "b"), "--prompt-source", "both", "--prompt", "a photo",
                 "--tagger", str(tag_clip), "--set", f"tagger.vocabulary={vocabulary}", "--set", "tagger.top_k=2"]) == 0
    meta = json.loads((tmp_path / "b" / "lq.json").read_text())
    assert len(meta["tags"]) == 2 and meta["prompt"].startswith(f"a photo, {meta['tags'][0]}, {meta['tags'][1]}, ")
    assert main(["restore", *common, "--out", str(tmp_path / "c"), "--prompt-source", "tags"]) == 2
    assert "give --tags or --tagger" in capsys.readouterr().err

