"""Restoration-guided EDM sampler: schedule, guidance weight and its last-step skip, CFG and control-scale
schedules, plain-EDM equivalence with guidance off, tiling with Gaussian blending, colour fix."""
from __future__ import annotations

import math

import pytest
from supir_fixtures import single_torch_thread, tiny_sdxl_dir, trained_like_model  # noqa: F401

torch = pytest.importorskip("torch")


def schedule():
    from supirkit.model.sampler import SigmaSchedule

    return SigmaSchedule()


def make_sampler(**kw):
    from supirkit.model.sampler import RestoreEDMSampler, SamplerSettings

    return RestoreEDMSampler(schedule(), SamplerSettings(**kw))


def cond_pair(shape=(1, 4, 8, 8), seed=0):
    from supirkit.model.sampler import Conditioning

    g = torch.Generator().manual_seed(seed)
    control = torch.randn(shape, generator=g)
    b = shape[0]

    def one(v):
        return Conditioning(torch.full((b, 3, 2), float(v)), torch.full((b, 2), float(v)), torch.zeros(b, 6), control)

    return one(1.0), one(-1.0), control


def pointwise_eps(x_in, t, cond, cs):
    """A position-independent stand-in for the network: depends on the input, the timestep, the prompt (first
    embedding value), the control latent and the control scale, pixel by pixel."""
    p = cond.prompt_embeds[:, :1, :1, None]
    tt = t.float().view(-1, 1, 1, 1) / 1000
    return 0.3 * torch.tanh(x_in) + 0.1 * p + 0.05 * cs * cond.control + 0.02 * tt * x_in


# ----------------------------------------------------------------------------------------------- schedule
def test_sdxl_sigma_grid():
    s = schedule()
    assert s.sigma_max == pytest.approx(14.614641, abs=1e-5)
    assert float(s.sigmas[0]) == pytest.approx(0.029167, abs=1e-5)
    assert s.timesteps(50) == list(range(999, 0, -20))  # 999, 979, ..., 19
    assert s.timesteps(100) == list(range(999, 0, -10))  # 999, 989, ..., 9
    grid = s.grid(50)
    assert len(grid) == 51 and float(grid[-1]) == 0.0
    assert float(grid[0]) == pytest.approx(14.6146, abs=1e-4) and float(grid[-2]) == pytest.approx(0.134, abs=1e-3)
    assert bool((grid[:-1] > grid[1:]).all())


def test_guidance_weight_schedule_and_last_step_skip():
    """k_t = (sigma / sigma_max) ** tau_r: 1.00, 0.62, 0.39 at the first steps with tau_r 4 (spec 4.2);
    never applied on the last step."""
    sampler = make_sampler(num_steps=50, tau_r=4.0, s_churn=0.0)
    seen = []
    cond, uncond, control = cond_pair()
    x = sampler.initial_latent(control.shape, torch.Generator().manual_seed(0))
    sampler.sample(pointwise_eps, x, cond, uncond, x_center=control, generator=torch.Generator().manual_seed(0),
                   on_step=seen.append)
    w = [r.guidance_weight for r in seen]
    assert [round(v, 2) for v in w[:3]] == [1.00, 0.62, 0.39]
    sig = [r.sigma for r in seen]
    for r in seen[:-1]:
        assert r.guidance_weight == pytest.approx((r.sigma / sampler.sigma_max) ** 4.0)
    assert w[-1] == 0.0 and sig[-1] > 0  # skipped at the last step (next sigma 0 <= 0.05)


def test_tau_zero_pins_every_x0_to_the_lq_latent_before_the_last_step():
    sampler = make_sampler(num_steps=6, tau_r=0.0)
    cond, uncond, control = cond_pair()
    seen = []
    x = sampler.initial_latent(control.shape, torch.Generator().manual_seed(0))
    sampler.sample(pointwise_eps, x, cond, uncond, x_center=control, generator=torch.Generator().manual_seed(1),
                   on_step=seen.append)
    assert len(seen) == 6
    for r in seen[:-1]:
        assert torch.equal(r.x0, control)
    assert not torch.allclose(seen[-1].x0, control)


def reference_edm(eps_fn, x, cond, uncond, sigmas, generator, *, s_churn, s_noise, cfg_start, cfg_end,
                  sigma_max, control_scale):
    """Plain EDM stochastic Euler on a discrete eps denoiser with linear CFG, written from the spec's pseudocode
    (section 4.2) without restoration guidance, for comparison."""
    train_sigmas = schedule().sigmas
    n = len(sigmas) - 1
    for i in range(n):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, 2 ** 0.5 - 1)
        sigma_hat = sigma * (1 + gamma)
        noise = torch.randn(x.shape, generator=generator)
        if gamma > 0:
            x = x + s_noise * noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        idx = int((train_sigmas - sigma_hat).abs().argmin())
        sq = float(train_sigmas[idx])
        t = torch.full((x.shape[0],), idx)
        x_in = x / (sq ** 2 + 1) ** 0.5
        x0_u = x - sq * eps_fn(x_in, t, uncond, control_scale)
        x0_c = x - sq * eps_fn(x_in, t, cond, control_scale)
        scale = (cfg_start - cfg_end) * sigma_hat / sigma_max + cfg_end
        x0 = x0_u + scale * (x0_c - x0_u)
        x = x + (nxt - sigma_hat) * (x - x0) / sigma_hat
    return x


@pytest.mark.parametrize("restore_cfg", [-1.0, 0.0])
def test_guidance_off_equals_plain_edm_sampling(restore_cfg):
    from supirkit.model.config import SamplerConfig
    from supirkit.model.sampler import RestoreEDMSampler, SamplerSettings

    settings = SamplerSettings.from_config(SamplerConfig(num_steps=8, restore_cfg=restore_cfg, cfg_scale=6.0,
                                                         cfg_scale_start=2.0))
    assert settings.tau_r is None
    sampler = RestoreEDMSampler(schedule(), settings)
    cond, uncond, control = cond_pair()
    x = sampler.initial_latent(control.shape, torch.Generator().manual_seed(0))
    out = sampler.sample(pointwise_eps, x, cond, uncond, x_center=control * 0 + 5,
                         generator=torch.Generator().manual_seed(3))
    ref = reference_edm(pointwise_eps, x, cond, uncond, sampler.sigmas(), torch.Generator().manual_seed(3),
                        s_churn=5.0, s_noise=1.01, cfg_start=2.0, cfg_end=6.0, sigma_max=sampler.sigma_max,
                        control_scale=1.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and guidance on does change the result
    guided = make_sampler(num_steps=8, tau_r=4.0, cfg_scale=6.0, cfg_scale_start=2.0)
    out_g = guided.sample(pointwise_eps, x, cond, uncond, x_center=control * 0 + 5,
                          generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(out, out_g, atol=1e-3)


def test_initial_latent_std_is_sqrt_one_plus_sigma_max_squared():
    sampler = make_sampler(num_steps=10)
    x = sampler.initial_latent((4, 4, 64, 64), torch.Generator().manual_seed(0))
    assert float(x.std()) == pytest.approx(math.sqrt(1 + sampler.sigma_max ** 2), rel=0.02)


def test_cfg_schedule_and_negative_prompt_as_unconditional_branch():
    sampler = make_sampler(num_steps=5, cfg_scale=7.5, cfg_scale_start=4.0)
    smax = sampler.sigma_max
    assert sampler.cfg_scale(smax) == pytest.approx(4.0)
    assert sampler.cfg_scale(0.0) == pytest.approx(7.5)
    assert sampler.cfg_scale(smax / 2) == pytest.approx(5.75)
    assert make_sampler(cfg_scale=7.5, cfg_scale_start=4.0, linear_cfg=False).cfg_scale(smax) == 7.5

    cond, uncond, control = cond_pair()
    calls = []

    def spy(x_in, t, c, cs):
        calls.append(c.prompt_embeds[:, 0, 0].tolist())
        return pointwise_eps(x_in, t, c, cs)

    x = torch.randn(control.shape, generator=torch.Generator().manual_seed(0)) * 3
    x0 = sampler.denoise(spy, x, 5.0, cond, uncond, 1.0)
    assert calls == [[-1.0, 1.0]]  # one batch: unconditional (negative prompt) first, then conditional
    x0_u = sampler.denoise(pointwise_eps, x, 5.0, uncond, None, 1.0)
    x0_c = sampler.denoise(pointwise_eps, x, 5.0, cond, None, 1.0)
    torch.testing.assert_close(x0, x0_u + sampler.cfg_scale(5.0) * (x0_c - x0_u))


def test_control_scale_schedule_reaches_the_network():
    sampler = make_sampler(num_steps=4, control_scale=0.9, control_scale_start=0.2, linear_control_scale=True,
                           s_churn=0.0)
    assert sampler.control_scale(sampler.sigma_max) == pytest.approx(0.2)
    assert sampler.control_scale(0.0) == pytest.approx(0.9)
    got = []

    def spy(x_in, t, c, cs):
        got.append(cs)
        return pointwise_eps(x_in, t, c, cs)

    cond, _, control = cond_pair()
    sampler.sample(spy, torch.zeros_like(control), cond, None, generator=torch.Generator().manual_seed(0))
    sig = sampler.sigmas()[:-1]
    assert got == pytest.approx([sampler.control_scale(float(s)) for s in sig])
    assert make_sampler(control_scale=0.7).control_scale(3.0) == 0.7


def test_guidance_without_x_center_is_refused():
    cond, _, control = cond_pair()
    with pytest.raises(ValueError, match="x_center"):
        make_sampler(tau_r=4.0).sample(pointwise_eps, control, cond, None)


# ----------------------------------------------------------------------------------------------- tiling
def test_sliding_windows_cover_the_latent_and_end_flush():
    from supirkit.model.tiling import sliding_windows

    wins = sliding_windows(20, 13, 8, 5)
    cover = torch.zeros(20, 13)
    for h0, h1, w0, w1 in wins:
        assert h1 - h0 == 8 and w1 - w0 == 8
        cover[h0:h1, w0:w1] += 1
    assert bool((cover > 0).all())
    assert max(w[1] for w in wins) == 20 and max(w[3] for w in wins) == 13
    assert sliding_windows(6, 7, 8, 4) == [(0, 6, 0, 7)]  # smaller than a tile: one window, the whole latent
    assert sliding_windows(128, 128, 128, 64) == [(0, 128, 0, 128)]


def test_gaussian_weights_are_symmetric_and_peak_in_the_middle():
    """``centred``: symmetric about (n - 1) / 2 on both axes. The official map (the default; compared with the
    official formula in tests/test_official_parity.py) is symmetric across the columns and peaks on row n / 2."""
    from supirkit.model.tiling import gaussian_weights

    w = gaussian_weights(16, 16, centre="centred")[0, 0]
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1)) and torch.allclose(w, w.T)
    assert float(w[7:9, 7:9].min()) == float(w.max()) and float(w[0, 0]) < 1e-3 * float(w.max())
    official = gaussian_weights(16, 16)[0, 0]
    assert torch.allclose(official, official.flip(1)) and not torch.allclose(official, official.flip(0))
    assert int(official[:, 7].argmax()) == 8 and float(official[8, 7]) == float(official.max())


@pytest.mark.parametrize("tau_r", [None, 2.0])
def test_tiled_equals_untiled_for_a_pixelwise_network(tau_r):
    """With overlapping tiles and a network that sees each pixel alone, every tile computes the same values as
    the whole latent, so the Gaussian-weighted blend must give the untiled result back (weights normalised)."""
    sampler = make_sampler(num_steps=5, tau_r=tau_r)
    cond, uncond, control = cond_pair(shape=(1, 4, 20, 14))
    center = control * 0.5
    x = sampler.initial_latent(control.shape, torch.Generator().manual_seed(0))
    whole = sampler.sample(pointwise_eps, x, cond, uncond, center, torch.Generator().manual_seed(4))
    tiled = sampler.sample_tiled(pointwise_eps, x, cond, uncond, center, torch.Generator().manual_seed(4),
                                 tile_size=8, tile_stride=5)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tiled_sampling_of_the_real_model(tiny_sdxl_dir):
    """One tile: exactly the untiled sample. Several tiles: a different but finite, seeded result."""
    from supirkit.model.sampler import Conditioning, supir_eps_fn

    model = trained_like_model(tiny_sdxl_dir, with_dr=False)
    c = model.unet.config
    g = torch.Generator().manual_seed(0)
    lq = torch.randn(1, 4, 12, 12, generator=g)
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])
    cond = Conditioning(
        torch.randn(1, 77, c.cross_attention_dim, generator=g), torch.randn(1, pooled, generator=g), ids, lq
    )
    uncond = Conditioning(
        torch.randn(1, 77, c.cross_attention_dim, generator=g), torch.randn(1, pooled, generator=g), ids, lq
    )
    sampler = make_sampler(num_steps=3, tau_r=4.0)
    eps = supir_eps_fn(model)
    x = sampler.initial_latent(lq.shape, torch.Generator().manual_seed(1))

    def run(tiled, tile):
        gen = torch.Generator().manual_seed(2)
        if tiled:
            return sampler.sample_tiled(eps, x, cond, uncond, lq, gen, tile_size=tile, tile_stride=tile // 2)
        return sampler.sample(eps, x, cond, uncond, lq, gen)

    whole = run(False, 0)
    assert torch.equal(run(True, 16), whole)
    multi = run(True, 8)
    assert torch.isfinite(multi).all() and not torch.equal(multi, whole)
    assert torch.equal(run(True, 8), multi)


# ----------------------------------------------------------------------------------------------- colour fix
def smooth_and_detail(seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([0.6 * xx - 0.3, 0.5 * yy - 0.2, 0.3 * (xx + yy) - 0.3])[None]
    detail = 0.2 * torch.randn(1, 3, 64, 64, generator=g)
    return smooth, detail


def test_wavelet_color_fix_takes_low_frequencies_from_the_reference():
    from supirkit.model.colorfix import color_fix, wavelet_decomposition

    smooth, detail = smooth_and_detail()
    image = smooth + detail
    high, low = wavelet_decomposition(image)
    torch.testing.assert_close(high + low, image)  # the decomposition is complete
    torch.testing.assert_close(color_fix(image, image, "wavelet"), image)
    # a colour cast (constant per channel) is low frequency: the fix removes it, the detail survives
    cast = image + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    fixed = color_fix(cast, image, "wavelet")
    torch.testing.assert_close(fixed, image, rtol=0, atol=1e-5)
    # the reference's own fine detail does not leak into the result
    other = smooth + smooth_and_detail(seed=1)[1]
    fixed = color_fix(image, other, "wavelet")
    assert float((fixed - image).abs().mean()) < 0.5 * float((other - image).abs().mean())


def test_adain_color_fix_matches_channel_statistics():
    from supirkit.model.colorfix import color_fix

    smooth, detail = smooth_and_detail()
    result = 2.0 * (smooth + detail) + 0.5
    reference = smooth + detail
    fixed = color_fix(result, reference, "adain")
    torch.testing.assert_close(fixed.mean((2, 3)), reference.mean((2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(fixed.std((2, 3)), reference.std((2, 3)), rtol=1e-3, atol=1e-4)
    assert torch.equal(color_fix(result, reference, "none"), result)
    with pytest.raises(ValueError, match="unknown colour fix"):
        color_fix(result, reference, "sepia")
