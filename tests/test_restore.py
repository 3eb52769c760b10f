"""`supirkit restore` end to end on CPU with the tiny SDXL, an adaptor folder and (optionally) the tiny LLaVA;
the prompt rule shared with training."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from supir_fixtures import adaptor_dir, single_torch_thread, tiny_sdxl_dir, trained_like_model  # noqa: F401

torch = pytest.importorskip("torch")

# 32 x 48 px input, upscale 2 -> 64 x 96 (latent 8 x 12), 3 steps: a few seconds per image on one core.
FAST = ["sampler.num_steps=3", "image.min_size=64", "image.size_multiple=32", "sampler.restore_cfg=4.0"]


@pytest.fixture(scope="module")
def lq_image(tmp_path_factory):
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:32]
    base = np.stack([xx * 6, yy * 4, (xx + yy) * 3], -1) + rng.normal(0, 12, (48, 32, 3))
    path = tmp_path_factory.mktemp("lq") / "photo.png"
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
    return path


def restore_cli(*args):
    from supirkit.cli import main

    return main(["restore", *map(str, args)])


def read(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def restore_config(*overrides):
    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig

    return load_config(RestoreConfig, None, [*FAST, *overrides], default="restore/default.yaml")


# ----------------------------------------------------------------------------------------------- CLI
def test_restore_cli_end_to_end_and_deterministic(tiny_sdxl_dir, adaptor_dir, lq_image, tmp_path, capsys):
    sets = [x for o in FAST for x in ("--set", o)]
    common = [lq_image, "--sdxl", tiny_sdxl_dir, "--adaptor", adaptor_dir, "--upscale", 2, *sets]
    assert restore_cli(*common, "--out", tmp_path / "a", "--prompt", "a photo of a cat", "--seed", 7) == 0
    assert restore_cli(*common, "--out", tmp_path / "b", "--prompt", "a photo of a cat", "--seed", 7) == 0
    assert restore_cli(*common, "--out", tmp_path / "c", "--prompt", "a photo of a cat", "--seed", 8) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert str(tmp_path / "a" / "photo.png") in out
    assert "[restore] 1/1 images, photo.png in" in captured.err  # progress per image (no terminal: log lines)
    a, b, c = (read(tmp_path / d / "photo.png") for d in "abc")
    assert a.shape == (96, 64, 3) and a.std() > 0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    meta = json.loads((tmp_path / "a" / "photo.json").read_text())
    assert meta["caption"] == "a photo of a cat"
    assert meta["prompt"].startswith("a photo of a cat, Cinematic, High Contrast")
    assert meta["working_size"] == [64, 96] and meta["output_size"] == [64, 96] and meta["tiled"] is False
    assert meta["config"]["runtime"]["seed"] == 7 and meta["config"]["image"]["upscale"] == 2.0


def test_restore_cli_with_llava_captioner(tiny_sdxl_dir, adaptor_dir, lq_image, tmp_path):
    from supirkit.tiny.llava import build_tiny_llava

    llava = build_tiny_llava(tmp_path / "llava")
    sets = [x for o in [*FAST, "captioner.max_new_tokens=6", "captioner.image_short_side=56"] for x in ("--set", o)]
    assert restore_cli(lq_image, "--out", tmp_path / "o", "--sdxl", tiny_sdxl_dir, "--adaptor", adaptor_dir,
                       "--captioner", llava, *sets) == 0
    meta = json.loads((tmp_path / "o" / "photo.json").read_text())
    assert meta["caption"] and meta["prompt"].startswith(meta["caption"])
    # sampled at 64 x 96 (short side raised to min_size), written at the input size (no --upscale)
    assert meta["working_size"] == [64, 96]
    assert read(tmp_path / "o" / "photo.png").shape == (48, 32, 3)


@pytest.mark.parametrize("case, args, message", [
    ("missing image", ["nope.png"], "no such image file"),
    ("not an adaptor", ["{img}", "--adaptor", "{tmp}"], "not an adaptor folder"),
    ("prompt and captioner", ["{img}", "--prompt", "x", "--captioner", "y"], "not both"),
    ("bad config", ["{img}", "--set", "image.color_fix=sepia"], "color_fix"),
])
def test_restore_cli_errors_are_one_line(case, args, message, tiny_sdxl_dir, adaptor_dir, lq_image, tmp_path, capsys):
    args = [a.format(img=lq_image, tmp=tmp_path) for a in args]
    if "--adaptor" not in args:
        args += ["--adaptor", str(adaptor_dir)]
    rc = restore_cli(*args, "--out", tmp_path / "o", "--sdxl", tiny_sdxl_dir)
    err = capsys.readouterr().err.strip()
    assert rc == 2, case
    assert message in err and len(err.splitlines()) == 1, err


def test_restore_with_an_adaptor_for_another_unet_fails_cleanly(tiny_sdxl_dir, lq_image, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from supirkit.model.supir import SUPIRModel
    from supirkit.tiny.sdxl import TINY_UNET_CONFIG

    other = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, block_out_channels=(32, 64, 64)))
    folder = SUPIRModel.from_unet(other).save_adaptor(tmp_path / "other")
    rc = restore_cli(lq_image, "--out", tmp_path / "o", "--sdxl", tiny_sdxl_dir, "--adaptor", folder)
    err = capsys.readouterr().err
    assert rc == 2 and "adaptor was built for a different UNet: block_out_channels" in err


# ----------------------------------------------------------------------------------------------- library
@pytest.fixture(scope="module")
def restorer(tiny_sdxl_dir, adaptor_dir):
    from supirkit.model.restore import SUPIRRestorer

    return SUPIRRestorer.load(str(tiny_sdxl_dir), adaptor_dir, restore_config())


def test_saved_adaptor_restores_exactly_like_the_in_memory_one(tiny_sdxl_dir, restorer, lq_image, tmp_path):
    from PIL import Image
    from supir_fixtures import load_unet

    from supirkit.model.restore import SUPIRRestorer
    from supirkit.model.supir import SUPIRModel

    in_memory = trained_like_model(tiny_sdxl_dir, seed=5)
    folder = in_memory.save_adaptor(tmp_path / "adaptor")
    reloaded = SUPIRModel.from_adaptor(load_unet(tiny_sdxl_dir), folder).eval()

    def run(model):
        r = SUPIRRestorer(restorer.vae, restorer.text, model, restorer.schedule, restorer.config)
        with Image.open(lq_image) as im:
            return np.asarray(r.restore(im.copy(), prompt="a cat").image)

    a, b = run(in_memory), run(reloaded)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(restorer.model))  # a different adaptor does give a different image


def test_tiled_restore_runs_and_one_tile_equals_untiled(restorer, lq_image):
    from PIL import Image

    from supirkit.model.restore import SUPIRRestorer

    def run(*overrides):
        cfg = restore_config("image.upscale=2", *overrides)
        r = SUPIRRestorer(restorer.vae, restorer.text, restorer.model, restorer.schedule, cfg)
        with Image.open(lq_image) as im:
            return r.restore(im.copy(), prompt="a dog")

    untiled = run()
    one_tile = run("tiling.mode=always", "tiling.tile_size=12", "tiling.tile_stride=6")  # latent 8 x 12: one tile
    tiled = run("tiling.mode=always", "tiling.tile_size=8", "tiling.tile_stride=4")
    assert not untiled.tiled and not one_tile.tiled and tiled.tiled
    # the default (auto) samples a latent larger than a tile in one piece, as the official CLI
    assert not run("tiling.tile_size=8", "tiling.tile_stride=4").tiled
    np.testing.assert_array_equal(np.asarray(untiled.image), np.asarray(one_tile.image))
    assert tiled.image.size == untiled.image.size == (64, 96)
    assert not np.array_equal(np.asarray(tiled.image), np.asarray(untiled.image))


def test_restore_uses_the_shared_prompt_rule_and_the_negative_prompt(restorer, lq_image, monkeypatch):
    from PIL import Image

    from supirkit.train.data import PromptRule

    seen = []
    encode = restorer.text.encode
    monkeypatch.setattr(restorer.text, "encode", lambda prompts: seen.append(list(prompts)) or encode(prompts))
    with Image.open(lq_image) as im:
        result = restorer.restore(im.copy(), prompt="a red wall")
    cfg = restorer.config
    rule = PromptRule.from_restore_config(cfg)  # what training builds its prompts with
    assert seen == [[rule("a red wall", "assemble"), cfg.prompt.negative]]
    assert result.prompt == "a red wall, " + cfg.prompt.positive


def test_working_size_follows_the_official_rule():
    from supirkit.model.restore import working_size

    assert working_size(32, 48, 2.0, 64, 32) == ((64, 96), (64, 96))
    assert working_size(300, 200, 1.0, 1024, 64) == ((300, 200), (1536, 1024))  # short side raised to 1024
    assert working_size(1000, 1500, 2.0, 1024, 64) == ((2000, 3000), (1984, 3008))


# ----------------------------------------------------------------------------------------------- prompt rule
def test_prompt_rule_joins_and_reports_truncation(tiny_sdxl_dir, caplog):
    from transformers import CLIPTokenizer

    from supirkit.model.config import PromptRuleConfig
    from supirkit.model.prompts import PromptAssembler, join_prompt

    assert join_prompt("a cat", "sharp", ", ") == "a cat, sharp"
    assert join_prompt("", "sharp") == "sharp" and join_prompt("a cat ", "") == "a cat"
    tok = CLIPTokenizer.from_pretrained(tiny_sdxl_dir / "tokenizer")
    asm = PromptAssembler.from_config(PromptRuleConfig(positive="high quality photo"), tok)
    short = asm("a cat")
    assert short.text == "a cat, high quality photo" and not short.truncated and short.positive_kept == 1.0
    caplog.set_level(logging.INFO, logger="supirkit.model.prompts")
    long = asm(" ".join(["the dog"] * 40))  # 80 caption tokens: the positive prompt is cut entirely
    assert long.truncated and long.n_tokens > 77 and long.kept_tokens == 77 and long.positive_kept == 0.0
    assert "the text encoders keep 77" in caplog.text
    mid = asm(" ".join(["the dog"] * 36))  # 72 caption tokens + ", " leaves room for part of the positive
    assert mid.truncated and 0.0 < mid.positive_kept < 1.0
