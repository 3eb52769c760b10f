"""metrics: PSNR/SSIM under each convention against scikit-image and pyiqa, the learned metrics with random
weights built from their configs, and the weights preflight (which never downloads)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from degrade_fixtures import photo

from supirkit.metrics import FidelityConvention, MissingWeights, build_metrics, missing_weights, preset, psnr, ssim


def _pair(seed: int, h: int = 72, w: int = 96, noise: float = 6.0):
    """A reference photo and a plausible restoration of it: blurred, noisy, a little brighter."""
    ref = photo(seed, h, w)
    rng = np.random.default_rng(seed + 100)
    out = cv2.GaussianBlur(ref, (5, 5), 1.1).astype(np.float64) + rng.normal(2.0, noise, ref.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), ref


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255.0


# ------------------------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rgb_psnr_ssim_match_scikit_image(seed):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, ref = _pair(seed)
    rgb = FidelityConvention(channel="rgb")
    assert psnr(pred, ref, rgb) == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=255), abs=1e-4)
    expected = structural_similarity(ref.astype(np.float64), pred.astype(np.float64), data_range=255,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)
    assert ssim(pred, ref, rgb) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("border", [0, 4])
def test_y_channel_and_border_match_scikit_image(border):
    """Y (BT.601 studio range) from scikit-image's own rgb2ycbcr, border cropped by hand."""
    from skimage.color import rgb2ycbcr
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, ref = _pair(3)
    conv = FidelityConvention(channel="y", crop_border=border)
    sl = slice(border, -border) if border else slice(None)
    y_pred, y_ref = rgb2ycbcr(pred)[sl, sl, 0], rgb2ycbcr(ref)[sl, sl, 0]
    assert psnr(pred, ref, conv) == pytest.approx(peak_signal_noise_ratio(y_ref, y_pred, data_range=255), abs=1e-4)
    expected = structural_similarity(y_ref, y_pred, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(pred, ref, conv) == pytest.approx(expected, abs=1e-4)
    # the convention changes the number: that is why it is written next to it
    assert abs(psnr(pred, ref, FidelityConvention(channel="rgb")) - psnr(pred, ref, conv)) > 0.05


@pytest.mark.parametrize("color_space,channel", [("ycbcr", "y"), ("yiq", "luma")])
@pytest.mark.parametrize("border", [0, 3])
def test_y_channel_conventions_match_pyiqa(color_space, channel, border):
    """pyiqa's psnr does not round the Y channel; its ssim rounds it and clamps the cs term at 0."""
    import pyiqa

    pred, ref = _pair(4, noise=20.0)
    p_psnr = pyiqa.create_metric("psnr", test_y_channel=True, color_space=color_space, crop_border=border, eps=0,
                                 device="cpu")
    p_ssim = pyiqa.create_metric("ssim", test_y_channel=True, color_space=color_space, crop_border=border,
                                 device="cpu")
    conv = FidelityConvention(channel=channel, crop_border=border)
    assert psnr(pred, ref, conv) == pytest.approx(float(p_psnr(_t(pred), _t(ref))), abs=1e-4)
    ssim_conv = conv.model_copy(update={"round": True, "nonnegative_cs": True})
    assert ssim(pred, ref, ssim_conv) == pytest.approx(float(p_ssim(_t(pred), _t(ref))), abs=1e-4)


def test_rgb_ssim_matches_pyiqa_ssimc():
    import pyiqa

    pred, ref = _pair(5)
    expected = float(pyiqa.create_metric("ssimc", device="cpu")(_t(pred), _t(ref)))
    assert ssim(pred, ref, FidelityConvention(channel="rgb", nonnegative_cs=True)) == pytest.approx(expected, abs=1e-4)


def test_rounding_and_clamping_are_real_choices():
    """Heavy noise makes the cs term negative in places: clamping it raises SSIM; rounding Y moves PSNR."""
    pred, ref = _pair(6, noise=60.0)
    y = FidelityConvention(channel="y")
    assert ssim(pred, ref, y.model_copy(update={"nonnegative_cs": True})) > ssim(pred, ref, y) + 1e-4
    assert psnr(pred, ref, y.model_copy(update={"round": True})) != pytest.approx(psnr(pred, ref, y), abs=1e-6)


def test_identical_images_and_bad_pairs():
    _, ref = _pair(7)
    conv = FidelityConvention()
    assert psnr(ref, ref, conv) == math.inf and ssim(ref, ref, conv) == pytest.approx(1.0)
    from supirkit.metrics import FidelityError

    with pytest.raises(FidelityError, match="differ in size"):
        psnr(ref[:-1], ref, conv)
    with pytest.raises(FidelityError, match="at least 11x11"):
        ssim(ref[:8, :8], ref[:8, :8], conv)


def test_conventions_are_named_in_words():
    c = preset("pyiqa_ycbcr", crop_border=4)
    assert c["psnr"].describe("psnr") == "Y of BT.601 YCbCr (16-235, MATLAB rgb2ycbcr), border 4, not rounded"
    assert "cs clamped at 0" in c["ssim"].describe("ssim") and "rounded" in c["ssim"].describe("ssim")
    with pytest.raises(ValueError, match="unknown convention preset"):
        preset("matlab_2004")


# ------------------------------------------------------------------------------------------- suite
def test_suite_scores_each_image_and_keeps_errors_with_their_image():
    pred, ref = _pair(8)
    suite = build_metrics(["psnr", "ssim"], device="cpu", conventions=preset("rgb"))
    values, errors = suite.score("psnr", [pred, pred[:-2]], [ref, ref])
    assert values[0] == pytest.approx(psnr(pred, ref, FidelityConvention(channel="rgb")))
    assert math.isnan(values[1]) and "differ in size" in errors[1] and errors[0] == ""
    assert suite.describe("psnr").startswith("RGB") and suite.info("psnr").arrow == "↑"
    assert set(suite.score_pair(pred, ref)) == {"psnr", "ssim"} and suite.score_pair(pred, None) == {}
    with pytest.raises(ValueError, match="unknown metric"):
        build_metrics(["psnr", "no_such_metric"])


# ------------------------------------------------------------------------------------------- learned metrics
@pytest.mark.parametrize("name,options", [("lpips", None), ("dists", None), ("musiq", None), ("clipiqa", None),
                                          ("maniqa", {"test_sample": 1})])
def test_learned_metrics_run_with_random_weights(name, options):
    """Each metric's real architecture, built from its config with random weights (no file on disk)."""
    pred, ref = _pair(9, 224, 224)
    suite = build_metrics([name], device="cpu", pretrained=False, options={name: options} if options else None)
    info = suite.info(name)
    values, errors = suite.score(name, [pred], [ref] if info.mode == "FR" else None)
    assert errors == [""] and np.isfinite(values[0])
    if info.mode == "FR":
        with pytest.raises(ValueError, match="reference"):
            suite.score(name, [pred])


def test_random_builds_leave_the_libraries_as_they_were():
    import pyiqa.archs.clip_model as clip_model
    import timm
    import torchvision.models as tvm

    before = (tvm.vgg16, tvm.alexnet, timm.create_model, clip_model.load)
    build_metrics(["clipiqa", "lpips"], device="cpu", pretrained=False)
    import pyiqa.archs.clipiqa_arch as clipiqa_arch

    assert (tvm.vgg16, tvm.alexnet, timm.create_model, clip_model.load) == before
    assert clipiqa_arch.load is clip_model.load


@pytest.mark.parametrize("pretrained", [True, False])
def test_niqe_reads_a_local_parameter_file(tmp_path, pretrained):
    """A NIQE parameter file of the published format (a mean and an SPD covariance of 36 features) given
    as ``pretrained_model_path``: the real loading path, no download."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    path = tmp_path / "niqe_params.mat"
    savemat(path, {"mu_prisparam": rng.normal(size=(1, 36)), "cov_prisparam": a @ a.T + 36 * np.eye(36)})
    suite = build_metrics(["niqe"], device="cpu", pretrained=pretrained,  # NIQE has no weights to randomize
                          options={"niqe": {"pretrained_model_path": str(path)}})
    values, errors = suite.score("niqe", [photo(1, 192, 192)])
    assert errors == [""] and np.isfinite(values[0])


# ------------------------------------------------------------------------------------------- preflight
def test_missing_weights_names_one_file_per_metric_and_downloads_nothing(tmp_path, monkeypatch):
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub reads it on each call
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = sorted(p for p in Path(DEFAULT_CACHE_DIR).rglob("*")) if Path(DEFAULT_CACHE_DIR).exists() else []
    lines = missing_weights(["psnr", "ssim", "lpips", "musiq", "clipiqa", "niqe"])
    assert [line.split(":")[0] for line in lines] == ["lpips", "musiq", "clipiqa", "niqe"]
    by_name = dict(line.split(": ", 1) for line in lines)
    assert "alexnet-owt-7be5be79.pth" in by_name["lpips"] and str(tmp_path / "torch") in by_name["lpips"]
    assert "musiq_koniq_ckpt-e95806b9.pth" in by_name["musiq"] and "https://" in by_name["musiq"]
    assert "RN50.pt" in by_name["clipiqa"] and "niqe_modelparameters.mat" in by_name["niqe"]
    assert all("\n" not in line for line in lines)
    assert not (tmp_path / "torch").exists() or not any((tmp_path / "torch").rglob("*.pth"))
    after = sorted(p for p in Path(DEFAULT_CACHE_DIR).rglob("*")) if Path(DEFAULT_CACHE_DIR).exists() else []
    assert after == before  # nothing was downloaded
    assert missing_weights(["psnr", "ssim"]) == []
    with pytest.raises(MissingWeights) as info:
        build_metrics(["psnr", "musiq", "niqe"], device="cpu")
    text = str(info.value)
    assert text.splitlines()[0].startswith("weights missing for 2 metric(s)") and len(text.splitlines()) == 3
