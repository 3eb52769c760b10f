"""degrade: kernels, filters, resizing, noise, JPEG and the unsharp mask against their closed forms and the
reference formulas (and against BasicSR's own functions where ``basicsr`` is installed)."""
from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
from degrade_fixtures import photo

from supirkit.degrade import kernels as K
from supirkit.degrade.filters import plan_filter
from supirkit.degrade.jpeg import jpeg_roundtrip, quality_to_int, to_uint8
from supirkit.degrade.noise import (
    PoissonTable,
    add_gaussian_noise,
    add_poisson_noise,
    gray_image,
    level_count_vals,
    to_levels,
)
from supirkit.degrade.resize import resize
from supirkit.degrade.sharpen import unsharp_mask

cv2.setNumThreads(1)




def basicsr_module(relpath: str):
    """One BasicSR source file (``data/degradations.py``, ``utils/img_process_util.py``) loaded on its own,
    when basicsr is installed (benchmark extra; CI skips). Loading the file, not the package, avoids
    ``basicsr/__init__`` importing every architecture (tens of seconds); its torchvision import is shimmed."""
    import importlib.util

    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("basicsr is not installed")
    import torchvision.transforms._functional_tensor as ft

    sys.modules.setdefault("torchvision.transforms.functional_tensor", ft)
    path = f"{list(spec.submodule_search_locations)[0]}/{relpath}"
    mod_spec = importlib.util.spec_from_file_location(f"_basicsr_{relpath.replace('/', '_')[:-3]}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def basicsr_degradations():
    return basicsr_module("data/degradations.py")


def dense_correlate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct 2-D correlation with reflect-101 padding, float64: the reference ``filter2D`` written out."""
    kh, kw = kernel.shape
    pad = np.pad(img.astype(np.float64), ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(pad, (kh, kw), axis=(0, 1))  # H, W, C, kh, kw
    return np.einsum("hwcij,ij->hwc", win, kernel.astype(np.float64))


# ------------------------------------------------------------------------------------------------ kernels
def closed_form(family: str, size: int, sx: float, sy: float, theta: float, beta: float = 1.0) -> np.ndarray:
    """Each family written out point by point from its formula (independent of degrade.kernels)."""
    c, s = math.cos(theta), math.sin(theta)
    cov = np.array([[c, -s], [s, c]]) @ np.diag([sx * sx, sy * sy]) @ np.array([[c, s], [-s, c]])
    inv = np.linalg.inv(cov)
    r = size // 2
    k = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            v = np.array([col - r, row - r], dtype=float)  # x = column offset, y = row offset
            q = float(v @ inv @ v)
            if family in ("iso", "aniso"):
                k[row, col] = math.exp(-0.5 * q)
            elif family.startswith("generalized"):
                k[row, col] = math.exp(-0.5 * q ** beta)
            else:
                k[row, col] = 1.0 / (1.0 + q ** beta)
    return k / k.sum()


@pytest.mark.parametrize("family,sx,sy,theta,beta", [
    ("iso", 1.7, 1.7, 0.0, 1.0),
    ("aniso", 2.5, 0.7, 0.6, 1.0),
    ("generalized_iso", 1.3, 1.3, 0.0, 0.6),
    ("generalized_aniso", 2.0, 0.9, -2.1, 3.2),
    ("plateau_iso", 1.1, 1.1, 0.0, 1.0),
    ("plateau_aniso", 2.8, 1.2, 1.2, 1.7),
])
def test_kernel_families_match_closed_form(family, sx, sy, theta, beta):
    p = {"family": family, "size": 15, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if family.startswith(("generalized", "plateau")):
        p["beta"] = beta
    k = K.kernel_from_params(p)
    assert k.shape == (15, 15)
    np.testing.assert_allclose(k, closed_form(family, 15, sx, sy, theta, beta), rtol=1e-12, atol=1e-15)
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    assert (k >= 0).all() and k[7, 7] == k.max()  # non-negative, peaked at the centre
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # point-symmetric: q(x) = q(-x)
    if family.endswith("iso") and "aniso" not in family:
        np.testing.assert_allclose(k, k.T, atol=1e-15)  # isotropic: symmetric under transposition
        np.testing.assert_allclose(k, np.rot90(k), atol=1e-15)  # and under 90-degree rotation


@pytest.mark.parametrize("family,sx,sy,theta", [("iso", 2.0, 2.0, 0.0), ("aniso", 3.0, 1.2, 0.7),
                                                ("aniso", 1.0, 2.6, -2.0)])
def test_gaussian_kernel_covariance(family, sx, sy, theta):
    # On a grid wide enough that truncation is negligible, the kernel's second moments are Sigma.
    k = K.gaussian_kernel(41, sx, sy, theta)
    xx, yy = K.mesh_grid(41)
    m = np.array([[np.sum(k * xx * xx), np.sum(k * xx * yy)], [np.sum(k * xx * yy), np.sum(k * yy * yy)]])
    np.testing.assert_allclose(m, K.sigma_matrix(sx, sy, theta), rtol=1e-6, atol=1e-6)
    assert np.sum(k * xx) == pytest.approx(0.0, abs=1e-12)


def test_iso_gaussian_is_the_outer_product_of_its_factor():
    g = K.gaussian_1d(21, 1.9)
    np.testing.assert_allclose(np.outer(g, g), K.gaussian_kernel(21, 1.9, 1.9, 0.0), atol=1e-16)


def test_sinc_kernel_closed_form_and_padding():
    from scipy.special import j1

    wc, size = 1.3, 13
    k = K.sinc_kernel(wc, size)
    r = size // 2
    raw = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            d = math.hypot(i - r, j - r)
            raw[i, j] = wc ** 2 / (4 * math.pi) if d == 0 else wc * j1(wc * d) / (2 * math.pi * d)
    np.testing.assert_allclose(k, raw / raw.sum(), rtol=1e-12, atol=1e-15)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    padded = K.sinc_kernel(wc, size, pad_to=21)
    assert padded.shape == (21, 21) and padded[:4].sum() == 0 and padded[:, -4:].sum() == 0
    np.testing.assert_array_equal(padded[4:17, 4:17], k)


def test_kernels_match_basicsr_functions():
    D = basicsr_degradations()
    np.testing.assert_allclose(K.gaussian_kernel(21, 2.2, 0.8, 0.4),
                               D.bivariate_Gaussian(21, 2.2, 0.8, 0.4, isotropic=False), atol=1e-14)
    np.testing.assert_allclose(
        K.gaussian_kernel(13, 1.5, 1.5, 0.0), D.bivariate_Gaussian(13, 1.5, 1.5, 0, isotropic=True), atol=1e-14
    )
    np.testing.assert_allclose(K.generalized_gaussian_kernel(17, 2.0, 1.0, -1.1, 0.7),
                               D.bivariate_generalized_Gaussian(17, 2.0, 1.0, -1.1, 0.7, isotropic=False), atol=1e-14)
    np.testing.assert_allclose(K.plateau_kernel(19, 1.4, 2.4, 2.2, 1.6),
                               D.bivariate_plateau(19, 1.4, 2.4, 2.2, 1.6, isotropic=False), atol=1e-14)
    np.testing.assert_allclose(K.sinc_kernel(0.9, 15, pad_to=21), D.circular_lowpass_kernel(0.9, 15, pad_to=21),
                               atol=1e-14)


# ------------------------------------------------------------------------------------------------ filters
@pytest.mark.parametrize("method", ["auto", "direct", "bands", "lowrank", "dft"])
@pytest.mark.parametrize("p", [
    {"family": "aniso", "size": 21, "sigma_x": 3.0, "sigma_y": 0.6, "theta": 0.5},
    {"family": "plateau_iso", "size": 15, "sigma_x": 1.8, "sigma_y": 1.8, "theta": 0.0, "beta": 1.2},
    {"family": "sinc", "size": 17, "cutoff": 1.1},
    {"family": "iso", "size": 9, "sigma_x": 0.8, "sigma_y": 0.8, "theta": 0.0},
])
def test_filter_plans_equal_dense_reflect101_correlation(p, method):
    img = photo(1, 37, 45).astype(np.float32) / 255.0
    k = K.kernel_from_params(p)
    plan = plan_filter(k, K.separable_factor(p), method=None if method == "auto" else method)
    out = plan.apply(img)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, dense_correlate(img, k), atol=3e-6)


def test_filter_trims_negligible_rings_and_uses_separable_for_iso():
    p = {"family": "iso", "size": 21, "sigma_x": 0.5, "sigma_y": 0.5, "theta": 0.0}
    plan = plan_filter(K.kernel_from_params(p), K.separable_factor(p))
    assert plan.method == "separable" and plan.kernel.shape[0] < 11
    tiny = {"family": "aniso", "size": 21, "sigma_x": 0.2, "sigma_y": 0.3, "theta": 0.3}
    assert plan_filter(K.kernel_from_params(tiny)).kernel.shape[0] <= 5  # weights beyond 2 px are < 1e-9


def test_filter_matches_basicsr_filter2d():
    filter2D = basicsr_module("utils/img_process_util.py").filter2D
    import torch

    img = photo(2, 40, 52).astype(np.float32) / 255.0
    k = K.plateau_kernel(21, 2.0, 0.7, 1.0, 1.4)
    ref = filter2D(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(k.astype(np.float32))[None])
    np.testing.assert_allclose(plan_filter(k).apply(img), ref[0].permute(1, 2, 0).numpy(), atol=3e-6)


# ------------------------------------------------------------------------------------------------ unsharp mask
def test_unsharp_mask_matches_dense_51x51_reference():
    hq = photo(3, 48, 56)
    img = hq.astype(np.float64) / 255.0
    g = cv2.getGaussianKernel(51, 0)
    x = np.arange(-25, 26)
    np.testing.assert_allclose(g.ravel() / g[25, 0], np.exp(-x * x / (2 * 8.0 ** 2)), rtol=1e-9)  # sigma 8.0
    dense = g @ g.T  # the reference's 51x51 kernel
    blur = dense_correlate(img, dense)
    residual = img - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float64)
    soft = dense_correlate(mask, dense)
    sharp = np.clip(img + 0.5 * residual, 0, 1)
    expected = soft * sharp + (1 - soft) * img
    out = unsharp_mask(hq, 51, 0.0, 0.5, 10.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - img).max() > 0.01  # it does sharpen
    np.testing.assert_allclose(unsharp_mask(hq, 50, 0.0, 0.5, 10.0), out, atol=0)  # radius 50 -> 51


def test_unsharp_mask_matches_basicsr_usmsharp():
    USMSharp = basicsr_module("utils/img_process_util.py").USMSharp
    import torch

    hq = photo(4, 64, 60)
    ref = USMSharp()(torch.from_numpy(hq.astype(np.float32) / 255.0).permute(2, 0, 1)[None])
    np.testing.assert_allclose(unsharp_mask(hq), ref[0].permute(1, 2, 0).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(9, 7), (23, 31), (40, 48), (61, 75), (80, 96)])
def test_resize_matches_torch_interpolate_with_size(mode, size):
    torch = pytest.importorskip("torch")
    img = photo(5, 40, 48).astype(np.float32) / 255.0
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size, mode=mode)
    out = resize(img, size, mode)
    assert out.shape == (*size, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref[0].permute(1, 2, 0).numpy(), atol=3e-6)


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
@pytest.mark.parametrize("scale", [0.23, 0.71, 1.37])
def test_resize_scale_factor_quirk_matches_torch(mode, scale):
    torch = pytest.importorskip("torch")
    img = photo(6, 40, 48).astype(np.float32) / 255.0
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], scale_factor=scale, mode=mode)
    ref = ref[0].permute(1, 2, 0).numpy()
    size = (int(40 * scale), int(48 * scale))  # torch: floor(in * scale_factor)
    assert ref.shape[:2] == size
    np.testing.assert_allclose(resize(img, size, mode, src_scale=scale), ref, atol=1e-5)
    if mode != "area":  # the aligned default maps with in/out: not the same pixels
        assert np.abs(resize(img, size, mode) - ref).max() > 1e-3


# ------------------------------------------------------------------------------------------------ noise
def test_gaussian_noise_formula():
    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 0.5, np.float32)
    out = add_gaussian_noise(img, 10.0, False, rng)
    noise = out - img
    assert noise.std() == pytest.approx(10 / 255, rel=0.03) and abs(noise.mean()) < 1e-3
    corr = np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1]
    assert abs(corr) < 0.05  # colour noise: independent channels
    gray = add_gaussian_noise(img, 10.0, True, rng) - img
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # gray noise: one draw for R, G, B
    assert gray.std() == pytest.approx(10 / 255, rel=0.05)
    clipped = add_gaussian_noise(np.ones((8, 8, 3), np.float32), 30.0, False, rng)
    assert clipped.max() <= 1.0 and clipped.min() < 1.0


def test_poisson_table_matches_poisson_pmf():
    from scipy import stats

    rng = np.random.default_rng(1)
    table = PoissonTable(256)
    for level in (1, 7, 60, 200, 255):
        k = table.sample(np.full(40000, level, np.uint8), rng).astype(np.int64)
        lam = level / 255 * 256
        support = np.arange(int(lam + 8 * math.sqrt(lam) + 10))
        expected = stats.poisson.pmf(support, lam) * k.size
        keep = expected >= 5
        observed = np.bincount(k, minlength=support.size)[: support.size]
        obs = np.append(observed[keep], k.size - observed[keep].sum())
        exp = np.append(expected[keep], k.size - expected[keep].sum())
        assert stats.chisquare(obs, exp).pvalue > 1e-4, level
    np.testing.assert_array_equal(table.sample(np.zeros(100, np.uint8), rng), 0)


def test_poisson_noise_formula_and_level_count_quirk():
    rng = np.random.default_rng(2)
    level = 100
    img = np.full((96, 96, 3), level / 255, np.float32)
    noise = add_poisson_noise(img, 2.0, False, rng, "fixed") - img
    # noise = scale * (k / vals - l / 255), k ~ Poisson(l / 255 * vals): mean 0, var scale^2 l / (255 vals)
    assert abs(noise.mean()) < 2e-3
    assert noise.var() == pytest.approx(4.0 * level / (255 * 256), rel=0.05)
    # The reference's vals = 2**ceil(log2(#levels)): a flat crop has 1 level, so vals = 1 and the noise is
    # sqrt(256) times stronger.
    assert level_count_vals(to_levels(img)) == 1
    strong = add_poisson_noise(img, 0.1, False, rng, "count") - img
    assert strong.var() > 20 * (0.1 ** 2 * level / (255 * 256))
    gray = add_poisson_noise(img, 1.0, True, rng, "fixed") - img
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


def test_noise_matches_basicsr_statistics():
    # Different generators, so the check is on the distribution: both implementations' noise must have mean 0
    # and the variance of the formula, (sigma / 255)^2 for Gaussian, scale^2 * mean(Y) / vals for Poisson
    # (Y the 8-bit level / 255 of the channel or of the gray image). The image stays in [0.2, 0.8], so
    # clipping is negligible. Crops: one with > 128 levels (vals = 256 in both modes) and a posterised one
    # (vals = 32 in "count" mode, as the reference).
    D = basicsr_degradations()
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fine = np.round(photo(9, 256, 256).astype(np.float32) * 0.6 + 51.0) / np.float32(255.0)
    coarse = np.round(np.round(fine * 39) / 39 * 255) / np.float32(255.0)
    assert level_count_vals(to_levels(fine)) == 256 and level_count_vals(to_levels(coarse)) == 32

    def ref_noise(fn, img, **kw):
        out = fn(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), **kw)
        return out[0].permute(1, 2, 0).numpy()

    def check(noise, var):
        assert abs(noise.mean()) < 2e-3
        assert noise.var() == pytest.approx(var, rel=0.04)

    for img, mode in ((fine, "fixed"), (fine, "count"), (coarse, "count")):
        for gray in (False, True):
            y = to_levels(gray_image(img) if gray else img)
            ref_vals = level_count_vals(y)
            ours_vals = 256 if mode == "fixed" else ref_vals
            ref = ref_noise(D.generate_poisson_noise_pt, img, scale=0.5, gray_noise=float(gray))
            check(ref, 0.25 * (y.mean() / 255) / ref_vals)
            # "fixed" departs from the reference exactly where its level count is below 256 (here: the gray
            # version of the fine crop has <= 128 levels, so the reference's noise is sqrt(2) stronger).
            check(add_poisson_noise(img, 0.5, gray, rng, mode) - img, 0.25 * (y.mean() / 255) / ours_vals)
            if gray:
                np.testing.assert_array_equal(ref[..., 0], ref[..., 2])
    for gray in (0.0, 1.0):
        ref = ref_noise(D.generate_gaussian_noise_pt, fine, sigma=torch.tensor([12.0]), gray_noise=torch.tensor([gray]))
        check(ref, (12 / 255) ** 2)
        check(add_gaussian_noise(fine, 12.0, bool(gray), rng) - fine, (12 / 255) ** 2)
    # The reference's batch quirk (degrade/README.md): every gray-noise sample of a batch gets one pattern.
    batch = torch.from_numpy(np.stack([fine, fine[::-1].copy()])).permute(0, 3, 1, 2).contiguous()
    ref = D.generate_gaussian_noise_pt(batch, sigma=torch.tensor([5.0, 20.0]), gray_noise=torch.tensor([1.0, 1.0]))
    assert np.corrcoef(ref[0, 0].ravel().numpy(), ref[1, 0].ravel().numpy())[0, 1] > 0.999


def test_level_count_vals_and_gray_weights():
    assert level_count_vals(np.arange(256, dtype=np.uint8)) == 256
    assert level_count_vals(np.array([0, 1, 2], np.uint8)) == 4
    assert level_count_vals(np.arange(129, dtype=np.uint8)) == 256
    assert level_count_vals(np.arange(128, dtype=np.uint8)) == 128
    px = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    np.testing.assert_allclose(gray_image(px), [[0.2989, 0.587, 0.114]], rtol=1e-6)


# ------------------------------------------------------------------------------------------------ JPEG
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / mse)


def test_jpeg_psnr_rises_with_quality():
    img = photo(7, 96, 96).astype(np.float32) / 255.0
    scores = [psnr(img, jpeg_roundtrip(img, q)) for q in (10, 30, 50, 70, 90, 98)]
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] - scores[0] > 3


def test_jpeg_is_libjpeg_with_rgb_order_and_integer_quality():
    img = photo(8, 48, 64)
    out = jpeg_roundtrip(img.astype(np.float32) / 255.0, 75)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 75])
    expected = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(to_uint8(out), expected)
    assert quality_to_int(30.4, "round") == 30 and quality_to_int(30.6, "round") == 31
    assert quality_to_int(99.9, "floor") == 99 and quality_to_int(0.2, "floor") == 1


def test_to_uint8_clamps_and_rounds_half_to_even():
    x = np.array([-0.1, 0.5 / 255, 1.5 / 255, 2.4 / 255, 1.2], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 2, 2, 255])
