"""model/runtime.py: the attention kernel, torch.compile, channels-last and VAE slicing/tiling options, as restore
and training apply them (on CPU with the tiny SDXL: what each switches, and that the result stays the same)."""
from __future__ import annotations

import numpy as np
import pytest
from supir_fixtures import adaptor_dir, single_torch_thread, tiny_sdxl_dir  # noqa: F401

torch = pytest.importorskip("torch")

FAST = ["sampler.num_steps=3", "image.min_size=64", "image.size_multiple=32", "sampler.restore_cfg=4.0"]


def restorer(sdxl, adaptor, *overrides):
    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig
    from supirkit.model.restore import SUPIRRestorer

    cfg = load_config(RestoreConfig, None, [*FAST, *overrides], default="restore/default.yaml")
    return SUPIRRestorer.load(str(sdxl), adaptor, cfg)


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:96]
    base = np.stack([xx * 2, yy * 3, (xx + yy) * 2], -1) + rng.normal(0, 10, (64, 96, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def reference(tiny_sdxl_dir, adaptor_dir, image):
    return np.asarray(restorer(tiny_sdxl_dir, adaptor_dir).restore(image, prompt="a photo").image, np.int16)


def _attention_modules(model):
    from diffusers.models.attention_processor import Attention

    return [m for part in (model.unet, model.adaptor) for m in part.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("kernel", ["math", "flash"])
def test_pinned_attention_kernel_reaches_unet_and_trunk_only(tiny_sdxl_dir, adaptor_dir, image, reference, kernel):
    from supirkit.model.runtime import sdpa_backends

    r = restorer(tiny_sdxl_dir, adaptor_dir, f"runtime.attention={kernel}")
    attn = _attention_modules(r.model)
    assert attn and all(getattr(m.processor, "backends", None) == sdpa_backends(kernel) for m in attn)
    vae_attn = [m for m in r.vae.modules() if hasattr(m, "processor")]
    assert vae_attn and not any(hasattr(m.processor, "backends") for m in vae_attn)  # the VAE keeps torch's choice
    out = np.asarray(r.restore(image, prompt="a photo").image, np.int16)
    assert np.abs(out - reference).max() <= 2  # another kernel, the same attention up to rounding


def test_channels_last_and_vae_slicing_keep_the_result(tiny_sdxl_dir, adaptor_dir, image, reference):
    r = restorer(tiny_sdxl_dir, adaptor_dir, "runtime.channels_last=true", "runtime.vae_slicing=true")
    conv = r.model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert r.vae.use_slicing
    out = np.asarray(r.restore(image, prompt="a photo").image, np.int16)
    assert np.abs(out - reference).max() <= 2


def test_compile_unet_compiles_the_transformer_blocks_of_unet_and_trunk(tiny_sdxl_dir, adaptor_dir, image, reference):
    """Regional compilation, with the eager backend here (tracing without code generation: fast on CPU)."""
    from diffusers.models.attention import BasicTransformerBlock

    r = restorer(tiny_sdxl_dir, adaptor_dir, "runtime.compile_unet=true", "runtime.compile_backend=eager")
    for part in (r.model.unet, r.model.adaptor):
        blocks = [m for m in part.modules() if isinstance(m, BasicTransformerBlock)]
        assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    out = np.asarray(r.restore(image, prompt="a photo").image, np.int16)
    assert np.abs(out - reference).max() <= 2


def test_vae_tiling_tiles_images_above_the_vae_tile(tiny_sdxl_dir, adaptor_dir, image, monkeypatch):
    r = restorer(tiny_sdxl_dir, adaptor_dir, "runtime.vae_tiling=true")
    assert r.vae.use_tiling and r.vae.tile_sample_min_size < max(image.size)
    calls = []
    original = type(r.vae).tiled_decode

    def spy(self, *args, **kwargs):
        calls.append(args[0].shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(r.vae), "tiled_decode", spy)
    result = r.restore(image, prompt="a photo")
    assert calls and result.image.size == image.size


def test_gpu_only_attention_kernel_is_refused_in_one_line_before_loading(tiny_sdxl_dir, adaptor_dir, image, tmp_path,
                                                                          capsys, monkeypatch):
    from supirkit.cli import main
    from supirkit.model import restore

    monkeypatch.setattr(restore.SUPIRRestorer, "__init__", lambda *a, **k: pytest.fail("models were built"))
    path = tmp_path / "in.png"
    image.save(path)
    rc = main(["restore", str(path), "--sdxl", str(tiny_sdxl_dir), "--adaptor", str(adaptor_dir), "--out",
               str(tmp_path / "out"), "--set", "runtime.attention=efficient", "--set", "runtime.device=cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "runtime.attention=efficient needs a CUDA device" in err


def test_training_applies_the_runtime_section(tiny_sdxl_dir, tmp_path):
    """The trainer applies cfg.runtime to the model it built (a GPU-only kernel on CPU stops there, before any
    data is read); the section is left out of the resume hash (it does not change what is trained)."""
    from supirkit.datapipe.config import ConfigError
    from supirkit.train.checkpoint import training_hash
    from supirkit.train.config import load_train_config
    from supirkit.train.trainer import train

    overrides = [f"model.pretrained={tiny_sdxl_dir}", f"output_dir={tmp_path / 'run'}", "logging.backend=none",
                 "model.lq_encoder=vae", "data.mixture=[{name: hq, shards: /nowhere, weight: 1}]"]
    cfg = load_train_config("train/demo.yaml", overrides)
    assert cfg.runtime.attention == "sdpa" and not cfg.runtime.compile_unet
    other = load_train_config("train/demo.yaml", [*overrides, "runtime.channels_last=true", "runtime.vae_slicing=true"])
    assert training_hash(cfg) == training_hash(other)
    with pytest.raises(ConfigError, match="runtime.attention=cudnn needs a CUDA device"):
        train(load_train_config("train/demo.yaml", [*overrides, "runtime.attention=cudnn"]))


def test_runtime_sections_of_the_shipped_configs_are_the_defaults():
    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig
    from supirkit.model.runtime import RuntimeOptions
    from supirkit.train.config import load_train_config

    defaults = RuntimeOptions().model_dump()
    restore = load_config(RestoreConfig, None, [], default="restore/default.yaml").runtime.model_dump()
    assert {k: restore[k] for k in defaults} == defaults
    train = load_train_config("train/supir.yaml")
    assert train.runtime.model_dump() == defaults
