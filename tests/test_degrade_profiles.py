"""degrade: the seed systems' profiles (seesr, resshift, resshift_test) against the settings they cite, and
the classical model y = (x * k)↓s + n against BasicSR's functions and its closed forms."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from degrade_fixtures import photo
from scipy import stats
from test_degrade import basicsr_module, dense_correlate

from supirkit.degrade import PROFILES, Degrader
from supirkit.degrade import classical as C
from supirkit.degrade.jpeg import to_uint8
from supirkit.degrade.sharpen import unsharp_mask

cv2.setNumThreads(1)
P_MIN = 1e-4
X4PLUS_KERNELS = {"iso": 0.45, "aniso": 0.25, "generalized_iso": 0.12, "generalized_aniso": 0.03,
                  "plateau_iso": 0.12, "plateau_aniso": 0.03}

# The values each profile cites, copied from its source file (see the YAML headers):
# seesr: SeeSR utils_data/make_paired_data.py (args_degradation + kernel settings, kernel_range 7..21)
# resshift: ResShift configs/realsr_swinunet_realesrgan256.yaml; resshift_test: degradation_testing_realesrgan.yaml
RECIPES = {
    "seesr": dict(hq=512, lq=128, usm=(True, True), sizes1=range(7, 22, 2), sizes2=range(7, 22, 2),
                  final_sizes=range(7, 22, 2), sigma1=(0.2, 3), sigma2=(0.2, 1.5), kernels=X4PLUS_KERNELS,
                  sinc=(0.1, 0.1, 0.8), resize1=((0.2, 0.7, 0.1), (0.15, 1.5)), resize2=((0.3, 0.4, 0.3), (0.3, 1.2)),
                  noise1=((1, 30), (0.05, 3)), noise2=((1, 25), (0.05, 2.5)), jpeg=((30, 95), (30, 95)),
                  second=(1.0, 0.8)),
    "resshift": dict(hq=256, lq=64, usm=(False, False), sizes1=range(3, 21, 2), sizes2=range(3, 15, 2),
                     final_sizes=range(3, 15, 2), sigma1=(0.2, 3), sigma2=(0.2, 1.5), kernels=X4PLUS_KERNELS,
                     sinc=(0.1, 0.1, 0.8), resize1=((0.2, 0.7, 0.1), (0.15, 1.5)),
                     resize2=((0.3, 0.4, 0.3), (0.3, 1.2)), noise1=((1, 30), (0.05, 3)),
                     noise2=((1, 25), (0.05, 2.5)), jpeg=((30, 95), (30, 95)), second=(0.5, 0.8)),
    "resshift_test": dict(hq=256, lq=64, usm=(False, False), sizes1=range(3, 13, 2), sizes2=range(3, 7, 2),
                          final_sizes=range(3, 7, 2), sigma1=(0.2, 0.8), sigma2=(0.2, 0.5),
                          kernels={"iso": 0.6, "aniso": 0.4, "generalized_iso": 0, "generalized_aniso": 0,
                                   "plateau_iso": 0, "plateau_aniso": 0},
                          sinc=(0.1, 0.0, 0.2), resize1=((0.2, 0.7, 0.1), (0.5, 1.5)),
                          resize2=((0.3, 0.4, 0.3), (0.8, 1.2)), noise1=((1, 15), (0.05, 0.3)),
                          noise2=((1, 10), (0.05, 0.2)), jpeg=((70, 95), (80, 100)), second=(0.0, 0.2)),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_profiles_hold_the_values_of_their_source(name):
    r = RECIPES[name]
    cfg = Degrader.from_profile(name).config
    e = cfg.realesrgan
    assert cfg.hq_size == r["hq"]
    assert Degrader.from_profile(name).output_size(r["hq"], r["hq"]) == (r["lq"], r["lq"])
    assert (cfg.sharpen.lq_from_sharpened, cfg.sharpen.target_sharpened) == r["usm"]
    assert e.scale == 4
    assert e.first.blur.kernel_sizes == list(r["sizes1"]) and e.second.blur.kernel_sizes == list(r["sizes2"])
    assert e.final.sinc_kernel_sizes == list(r["final_sizes"])
    assert tuple(e.first.blur.sigma) == r["sigma1"] and tuple(e.second.blur.sigma) == r["sigma2"]
    assert dict(zip(X4PLUS_KERNELS, e.first.blur.families.weights())) == r["kernels"]
    assert dict(zip(X4PLUS_KERNELS, e.second.blur.families.weights())) == r["kernels"]
    assert (e.first.blur.sinc_prob, e.second.blur.sinc_prob, e.final.sinc_prob) == r["sinc"]
    for stage, (probs, rng) in ((e.first, r["resize1"]), (e.second, r["resize2"])):
        assert (stage.resize.probs.up, stage.resize.probs.down, stage.resize.probs.keep) == probs
        assert tuple(stage.resize.range) == rng and stage.resize.modes == ["area", "bilinear", "bicubic"]
    for stage, (sigma, scale) in ((e.first, r["noise1"]), (e.second, r["noise2"])):
        assert tuple(stage.noise.gaussian_sigma) == sigma and tuple(stage.noise.poisson_scale) == scale
        assert stage.noise.gaussian_prob == 0.5 and stage.noise.gray_prob == 0.4
    assert (tuple(e.first.jpeg.quality), tuple(e.final.jpeg.quality)) == r["jpeg"]
    assert (e.second_order_prob, e.second.blur_prob) == r["second"]
    assert e.first.blur.sinc_cutoff_small == pytest.approx((math.pi / 3, math.pi))
    assert e.first.blur.sinc_cutoff_large == pytest.approx((math.pi / 5, math.pi))
    assert e.first.blur.sinc_large_from == 13


@pytest.fixture(scope="module")
def resshift_draws():
    d = Degrader.from_profile("resshift")
    return [d.sample_params(seed=0, epoch=0, key=i) for i in range(3000)]


def _chi2_uniform(values, support) -> float:
    counts = np.array([sum(v == s for v in values) for s in support], float)
    assert counts.sum() == len(values), "values outside the support"
    return stats.chisquare(counts).pvalue


def test_resshift_draws_follow_its_recipe(resshift_draws):
    ps = resshift_draws
    n = len(ps)
    ran = [p for p in ps if p["second"] is not None]
    assert stats.binomtest(len(ran), n, 0.5).pvalue > P_MIN  # second_order_prob 0.5
    assert _chi2_uniform([p["first"]["blur"]["size"] for p in ps], range(3, 21, 2)) > P_MIN
    assert _chi2_uniform([p["second"]["blur"]["size"] for p in ran if p["second"]["blur"]], range(3, 15, 2)) > P_MIN
    assert _chi2_uniform([p["final"]["sinc"]["size"] for p in ps if p["final"]["sinc"]], range(3, 15, 2)) > P_MIN
    # the sinc cutoff rule depends on the size: sizes below 13 draw from [pi/3, pi]
    small = [p["first"]["blur"]["cutoff"] for p in ps if p["first"]["blur"]["family"] == "sinc"
             and p["first"]["blur"]["size"] < 13]
    assert stats.kstest(small, stats.uniform(math.pi / 3, 2 * math.pi / 3).cdf).pvalue > P_MIN
    # a wrong rule would fail: the sizes are not the x4plus 7..21
    with pytest.raises(AssertionError):
        _chi2_uniform([p["first"]["blur"]["size"] for p in ps], range(7, 22, 2))


def test_skipped_second_order_leaves_the_second_stage_out_of_the_pixels():
    d = Degrader.from_profile("resshift", ["hq_size=64"])
    hq = photo(1, 64, 64)
    seen = set()
    for key in range(12):
        target, lq, params = d(hq, seed=2, key=key)
        assert lq.shape == (16, 16, 3) and target is hq
        seen.add(params["second"] is None)
        assert ("second" in params["sizes"]) == (params["second"] is not None)
    assert seen == {True, False}
    never = Degrader.from_profile("resshift_test")
    assert all(never.sample_params(seed=0, key=k)["second"] is None for k in range(200))


def test_seesr_degrades_and_returns_the_sharpened_crop():
    d = Degrader.from_profile("seesr", ["hq_size=96"])
    hq = photo(2, 96, 96)
    target, lq, _ = d(hq, seed=0, key="x")
    np.testing.assert_array_equal(target, to_uint8(unsharp_mask(hq)))
    assert lq.shape == (24, 24, 3)


# ------------------------------------------------------------------------------------------- classical model
def _f32(seed, h, w):
    return photo(seed, h, w).astype(np.float32) / 255.0


@pytest.mark.parametrize("h,w", [(64, 64), (72, 96)])
def test_bicubic_downsampler_is_matlab_imresize(h, w):
    """Against BasicSR's port of MATLAB imresize (antialiased, symmetric border), every pixel."""
    M = basicsr_module("utils/matlab_functions.py")
    img = _f32(3, h, w)
    np.testing.assert_allclose(C.bicubic(img, 4), M.imresize(img, 0.25, antialiasing=True), atol=2e-6)
    np.testing.assert_allclose(C.bicubic(img, 2), M.imresize(img, 0.5, antialiasing=True), atol=2e-6)


def test_other_downsamplers_match_their_definitions():
    img = _f32(4, 48, 60)
    s = 4
    blocks = img.reshape(12, s, 15, s, 3)
    np.testing.assert_allclose(C.area(img, s), blocks.mean(axis=(1, 3)), atol=1e-6)
    np.testing.assert_array_equal(C.direct(img, s), img[0::s, 0::s])
    np.testing.assert_array_equal(C.nearest(img, s), img[2::s, 2::s])
    # bilinear: MATLAB imresize(..., 'bilinear') written out: output i is centred on input (i + 0.5) s - 0.5,
    # weights tri((j - u) / s) normalised, indices outside mirrored (symmetric), one axis then the other
    def matlab_bilinear_axis(a, axis):
        n = a.shape[axis]
        out = []
        for i in range(n // s):
            u = (i + 0.5) * s - 0.5
            j = np.arange(math.floor(u - s), math.ceil(u + s) + 1)
            w = np.clip(1 - np.abs(j - u) / s, 0, None)
            j = np.where(j < 0, -j - 1, np.where(j >= n, 2 * n - j - 1, j))
            out.append(np.tensordot(w / w.sum(), np.take(a, j, axis=axis), axes=([0], [axis])))
        return np.stack(out, axis=axis)

    expected = matlab_bilinear_axis(matlab_bilinear_axis(img.astype(np.float64), 0), 1)
    np.testing.assert_allclose(C.bilinear(img, s), expected, atol=2e-6)


def test_classical_pipeline_matches_basicsr_composition():
    """Fixed parameters (anisotropic Gaussian, MATLAB bicubic, no noise): BasicSR's filter2D then its imresize."""
    import torch

    U = basicsr_module("utils/img_process_util.py")
    M = basicsr_module("utils/matlab_functions.py")
    d = Degrader.from_profile("classical_x4", ["hq_size=64", "classical.noise.families={none: 1}",
                                                "classical.downsamplers={bicubic: 1}", "classical.blur_prob=1.0"])
    hq = photo(5, 64, 64)
    _, lq, p = d(hq, seed=0, key="k")
    assert p["downsampler"] == "bicubic" and p["noise"] == {"kind": "none"} and p["blur"]["family"] in ("iso", "aniso")
    from supirkit.degrade.kernels import kernel_from_params

    k = torch.from_numpy(kernel_from_params(p["blur"])).float()
    x = torch.from_numpy(hq.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    blurred = U.filter2D(x, k[None])[0].permute(1, 2, 0).numpy()
    ref = M.imresize(blurred, 0.25, antialiasing=True)
    assert lq.shape == (16, 16, 3)
    assert np.abs(lq.astype(int) - to_uint8(ref).astype(int)).max() <= 1
    # and the blur alone is the dense reflect-101 correlation
    np.testing.assert_allclose(dense_correlate(hq.astype(np.float32) / 255.0, kernel_from_params(p["blur"])),
                               blurred, atol=3e-6)


def test_classical_draws_follow_the_weights_and_noise_is_added():
    d = Degrader.from_profile("classical_x4")
    ps = [d.sample_params(seed=1, key=i) for i in range(3000)]
    downs = [p["downsampler"] for p in ps]
    assert _chi2_uniform(downs, list(C.DOWNSAMPLERS)) > P_MIN
    kinds = np.array([sum(p["noise"]["kind"] == k for p in ps) for k in C.NOISES], float)
    assert stats.chisquare(kinds, np.array([1, 2, 1]) / 4 * len(ps)).pvalue > P_MIN
    assert stats.binomtest(sum(p["blur"] is not None for p in ps), len(ps), 0.9).pvalue > P_MIN
    noisy = Degrader.from_profile("classical_x4", ["hq_size=64", "classical.noise.families={gaussian: 1}",
                                                    "classical.noise.gaussian_sigma=[20, 20]"])
    clean = Degrader.from_profile("classical_x4", ["hq_size=64", "classical.noise.families={none: 1}"])
    hq = photo(6, 64, 64)
    a, b = noisy(hq, seed=0, key="z")[1].astype(float), clean(hq, seed=0, key="z")[1].astype(float)
    assert 15 < np.std(a - b) < 25


def test_classical_refuses_sides_that_are_not_multiples_and_unknown_families():
    from supirkit.datapipe.config import ConfigError

    d = Degrader.from_profile("classical_x4", ["hq_size=null"])
    with pytest.raises(ValueError, match="multiples of the scale 4"):
        d(photo(0, 66, 64), seed=0, key="a")
    with pytest.raises(ConfigError, match="unknown downsampler 'lanczos'"):
        Degrader.from_profile("classical_x4", ["classical.downsamplers={lanczos: 1}"])
    with pytest.raises(ConfigError, match="unknown noise family"):
        Degrader.from_profile("classical_x4", ["classical.noise.families={speckle: 1}"])


def test_every_shipped_profile_is_registered():
    from supirkit.datapipe.config import CONFIG_ROOT

    shipped = sorted(p.stem for p in (CONFIG_ROOT / "degrade").glob("*.yaml"))
    assert shipped == sorted(PROFILES)
