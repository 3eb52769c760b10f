"""Where restore and training follow the official SUPIR code by default (and where an option keeps the other
behaviour): each compared with a re-statement of the official formula, written here from the official source
(``sgm/modules/diffusionmodules/sampling.py``, ``SUPIR/util.py``, ``test.py``, ``sgm/modules/ema.py``)."""
from __future__ import annotations

from math import exp, pi, sqrt

import numpy as np
import pytest
from supir_fixtures import adaptor_dir, single_torch_thread, tiny_sdxl_dir  # noqa: F401

torch = pytest.importorskip("torch")

FAST = ["sampler.num_steps=2", "image.min_size=64", "image.size_multiple=64", "sampler.restore_cfg=4.0",
        "image.upscale=2"]


# ------------------------------------------------------------------------------------ official re-statements

def official_gaussian_weights(tile_width: int, tile_height: int) -> np.ndarray:
    """``sampling.py::gaussian_weights`` (one batch, one channel)."""
    var = 0.01
    midpoint = (tile_width - 1) / 2  # -1 because index goes from 0 to latent_width - 1
    x_probs = [exp(-(x - midpoint) * (x - midpoint) / (tile_width * tile_width) / (2 * var)) / sqrt(2 * pi * var)
               for x in range(tile_width)]
    midpoint = tile_height / 2
    y_probs = [exp(-(y - midpoint) * (y - midpoint) / (tile_height * tile_height) / (2 * var)) / sqrt(2 * pi * var)
               for y in range(tile_height)]
    return np.outer(y_probs, x_probs)


def official_pil2tensor(img, upsacle=1, min_size=1024, fix_resize=None):
    """``SUPIR/util.py::PIL2Tensor``."""
    from PIL import Image

    w, h = img.size
    w *= upsacle
    h *= upsacle
    w0, h0 = round(w), round(h)
    if min(w, h) < min_size:
        _upsacle = min_size / min(w, h)
        w *= _upsacle
        h *= _upsacle
    if fix_resize is not None:
        _upsacle = fix_resize / min(w, h)
        w *= _upsacle
        h *= _upsacle
        w0, h0 = round(w), round(h)
    w = int(np.round(w / 64.0)) * 64
    h = int(np.round(h / 64.0)) * 64
    x = img.resize((w, h), Image.BICUBIC)
    x = np.array(x).round().clip(0, 255).astype(np.uint8)
    x = x / 255 * 2 - 1
    x = torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)
    return x, h0, w0


def official_tensor2pil(x, h0, w0):
    """``SUPIR/util.py::Tensor2PIL``."""
    from torch.nn.functional import interpolate

    x = x.unsqueeze(0)
    x = interpolate(x, size=(h0, w0), mode="bicubic")
    x = (x.squeeze(0).permute(1, 2, 0) * 127.5 + 127.5).cpu().numpy().clip(0, 255).astype(np.uint8)
    return x


class OfficialLitEma:
    """``sgm/modules/ema.py::LitEma.forward`` on a list of tensors."""

    def __init__(self, params, decay=0.9999):
        self.decay = torch.tensor(decay, dtype=torch.float32)
        self.num_updates = torch.tensor(0, dtype=torch.int)
        self.shadow = [p.clone().detach() for p in params]

    def forward(self, params):
        decay = self.decay
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        one_minus_decay = 1.0 - decay
        with torch.no_grad():
            for s, p in zip(self.shadow, params):
                s.sub_(one_minus_decay * (s - p))


# ------------------------------------------------------------------------------------ tile weights

@pytest.mark.parametrize("n", [8, 64, 128])
def test_tile_weights_are_the_official_gaussian(n):
    from supirkit.model.tiling import gaussian_weights

    ours = gaussian_weights(n, n)[0, 0].double().numpy()
    np.testing.assert_allclose(ours, official_gaussian_weights(n, n), rtol=1e-6)
    centred = gaussian_weights(n, n, centre="centred")[0, 0]
    assert torch.equal(centred, centred.flip(0)) and torch.equal(centred, centred.flip(1))


def test_rectangular_tiles_follow_the_official_rule_per_axis():
    from supirkit.model.tiling import gaussian_weights

    rows = official_gaussian_weights(6, 6)[:, 0] / official_gaussian_weights(6, 6)[0, 0]  # the y profile, h = 6
    cols = official_gaussian_weights(10, 10)[0] / official_gaussian_weights(10, 10)[0, 0]  # the x profile, w = 10
    ours = gaussian_weights(6, 10)[0, 0].double().numpy()
    np.testing.assert_allclose(ours / ours[0, 0], np.outer(rows / rows[0], cols / cols[0]), rtol=1e-6)


# ------------------------------------------------------------------------------------ restore

def _restorer(tiny_sdxl_dir, adaptor_dir, *overrides, captioner=None):
    from supirkit.datapipe.config import load_config
    from supirkit.model.config import RestoreConfig
    from supirkit.model.restore import SUPIRRestorer

    cfg = load_config(RestoreConfig, None, [*FAST, *overrides], default="restore/default.yaml")
    r = SUPIRRestorer.load(str(tiny_sdxl_dir), adaptor_dir, cfg)
    r.captioner = captioner
    return r


def _lq():
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:32]
    base = np.stack([xx * 6, yy * 4, (xx + yy) * 3], -1) + rng.normal(0, 12, (48, 32, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def test_restore_is_untiled_by_default_and_tiles_only_when_memory_runs_out(tiny_sdxl_dir, adaptor_dir,
                                                                            monkeypatch):
    """The official CLI samples the whole latent (a 64 x 128 image is an 8 x 16 latent, two tiles of 8);
    ``auto`` retries in tiles on an out-of-memory error, from the same generator state, so the result is the
    ``always`` one exactly; ``never`` lets the error through."""
    from supirkit.model.sampler import RestoreEDMSampler

    tiles = ["tiling.tile_size=8", "tiling.tile_stride=4"]
    default = _restorer(tiny_sdxl_dir, adaptor_dir, *tiles).restore(_lq(), prompt="a dog")
    always = _restorer(tiny_sdxl_dir, adaptor_dir, *tiles, "tiling.mode=always").restore(_lq(), prompt="a dog")
    assert not default.tiled and always.tiled

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(RestoreEDMSampler, "sample", out_of_memory)
    fallback = _restorer(tiny_sdxl_dir, adaptor_dir, *tiles).restore(_lq(), prompt="a dog")
    assert fallback.tiled
    np.testing.assert_array_equal(np.asarray(fallback.image), np.asarray(always.image))
    with pytest.raises(torch.OutOfMemoryError):
        _restorer(tiny_sdxl_dir, adaptor_dir, *tiles, "tiling.mode=never").restore(_lq(), prompt="a dog")


def test_caption_input_is_prepared_as_the_official_code(tiny_sdxl_dir, adaptor_dir):
    """test.py: ``PIL2Tensor(LQ, upscale, min_size, fix_resize=512)``, ``batchify_denoise`` (DR encoder mode,
    decoder), ``Tensor2PIL(clean, h1, w1)``; here with a 64-px short side to keep the tiny models fast."""
    seen = []
    r = _restorer(tiny_sdxl_dir, adaptor_dir, "captioner.image_short_side=64",
                  captioner=lambda image: seen.append(image) or "a caption")
    lq = _lq()
    result = r.restore(lq.copy())
    assert result.caption == "a caption" and len(seen) == 1
    x, h1, w1 = official_pil2tensor(lq.convert("RGB"), upsacle=2, min_size=64, fix_resize=64)
    with torch.no_grad():
        clean = r._decode(r._encode_lq(x[None]))
    want = official_tensor2pil(clean[0], h1, w1)
    got = np.asarray(seen[0])
    assert got.shape == want.shape == (96, 64, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # x / 255 * 2 - 1 against x / 127.5 - 1 in float32
    # the stage-1 input (the former default) is another image: the stage-1 image at working size (64 x 128,
    # its sides rounded to 64) resized, with the working size's aspect instead of the input's
    r.config = r.config.model_copy(update={"captioner": r.config.captioner.model_copy(update={"input": "stage1"})})
    seen.clear()
    r.restore(lq.copy())
    assert np.asarray(seen[0]).shape == (128, 64, 3)


# ------------------------------------------------------------------------------------ EMA

def test_ema_warms_up_as_litema():
    from supirkit.train.ema import EMAModel

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]
    ours = EMAModel(params, 0.9999)
    official = OfficialLitEma(params)
    for step in range(1, 41):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        ours.step(step)
        official.forward(params)
        for a, b in zip(ours.shadow, official.shadow):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours.current_decay() == pytest.approx(41 / 50)  # update 40: min(0.9999, 41 / 50)
    fixed = EMAModel(params, 0.5, warmup="none")
    fixed.step(1)
    assert fixed.current_decay() == 0.5


# ------------------------------------------------------------------------------------ converter

def test_the_converter_takes_the_layout(tiny_sdxl_dir, tmp_path, capsys):
    """A trimmed checkpoint (fewer transformer blocks) converts with ``--layout`` naming its layout or read
    from its keys (``auto``); the released layout refuses it in one line."""
    import json

    from safetensors.torch import save_file
    from supir_fixtures import load_unet
    from test_model import official_state_dict

    from supirkit.model.convert import main as convert_main
    from supirkit.model.supir import SUPIRModel

    unet_cfg = json.loads((tiny_sdxl_dir / "unet" / "config.json").read_text())
    vae_cfg = json.loads((tiny_sdxl_dir / "vae" / "config.json").read_text())
    g = torch.Generator().manual_seed(5)
    sd = official_state_dict(unet_cfg, vae_cfg, lambda shape: torch.randn(shape, generator=g),
                             control_depth=[1, 1, 2], mid_depth=2)
    ckpt = tmp_path / "supir_trimmed.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    model_cfg = tmp_path / "model.yaml"
    model_cfg.write_text(f"sdxl:\n  unet_config: {tiny_sdxl_dir / 'unet' / 'config.json'}\n"
                         f"  vae_config: {tiny_sdxl_dir / 'vae' / 'config.json'}\n"
                         "trunk:\n  layout: released\n  layouts:\n    released: {}\n"
                         "    small: {transformer_depth: [1, 1, 2], mid_transformer_depth: 2}\n")
    base = [str(ckpt), "--config", str(model_cfg)]
    assert convert_main([base[0], str(tmp_path / "named"), *base[1:], "--layout", "small"]) == 0
    assert convert_main([base[0], str(tmp_path / "auto"), *base[1:]]) == 0
    capsys.readouterr()
    assert convert_main([base[0], str(tmp_path / "wrong"), *base[1:], "--layout", "released"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convert: error:"), err
    assert convert_main([base[0], str(tmp_path / "x"), *base[1:], "--layout", "nope"]) == 2
    assert "--layout nope: not a layout of the model config (released, small)" in capsys.readouterr().err
    for folder in ("named", "auto"):
        model = SUPIRModel.from_adaptor(load_unet(tiny_sdxl_dir), tmp_path / folder)
        assert len(model.adaptor.trunk.down_blocks[2].attentions[0].transformer_blocks) == 2
        assert torch.equal(model.adaptor.trunk.hint_conv.weight, sd["model.control_model.input_hint_block.0.weight"])
